"""Domain errors and the process exit codes. Errors carry a one-line message meant
for the user and never print.

Only `gemma_cli.cli.app` turns them into stderr lines and exit codes, so library
callers (tests, benchmarks) get ordinary exceptions.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Every exit status gemma can end with (documented in the man page)."""

    OK = 0
    ERROR = 1  # a runtime error, one line on stderr
    USAGE = 2  # the command line is wrong
    INTERRUPT = 130  # Ctrl-C (128 + SIGINT), as shells report it


class GemmaError(Exception):
    """Base class: `str(err)` is a complete, one-line message for the user."""

    exit_code: int = ExitCode.ERROR
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def line(self) -> str:
        """The message and its hint as one line: the house rule is one stderr line per error,
        and a hint on a line of its own is lost to scripts that read the first line."""
        return f"{self}; {self.hint}" if self.hint else str(self)


class UsageError(GemmaError):
    """The command line itself is wrong (exit status 2)."""

    exit_code = ExitCode.USAGE


class ModelFileError(GemmaError):
    """A model file is missing, not a GGUF, truncated or otherwise unusable."""


class IncompatibleModelsError(GemmaError):
    """A target/drafter pair cannot work together (vocabulary, architecture, widths)."""


class EngineError(GemmaError):
    """llama.cpp refused an operation (context creation, decode)."""


class InsufficientMemoryError(GemmaError):
    """The pair's weights and KV cache would not fit in the RAM available (checked before loading)."""


class ContextFullError(EngineError):
    """The prompt alone does not fit into the context window."""


class ModelNotFoundError(GemmaError):
    """A model name is not in the local store or the catalog."""


class InvalidModelNameError(UsageError):
    """A model name contains illegal characters or path traversal."""


class DownloadError(GemmaError):
    """A download failed; what was fetched so far is kept for resume."""


class IntegrityError(GemmaError):
    """A blob's content does not match its recorded sha256."""
