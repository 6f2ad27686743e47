"""Where `gemma chat` reads its messages from.

prompt_toolkit on a terminal (persistent history, `\"\"\"` blocks, bracketed
paste, Alt-Enter for a newline); plain lines otherwise, so
`printf 'hi\\n/bye\\n' | gemma chat` works too.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO, Callable, Protocol, TextIO

PROMPT = ">>> "
CONTINUATION = "... "
BLOCK = '"""'


class Reader(Protocol):
    def read(self) -> str | None:
        """The next message (possibly several lines), or None at end of input."""
        ...


def block_open(text: str) -> bool:
    """Is `text` an unfinished \"\"\" block (Enter should add a line, not send)?"""
    s = text.strip()
    if not s.startswith(BLOCK):
        return False
    return len(s) < 2 * len(BLOCK) or not s.endswith(BLOCK)


def unwrap_block(text: str) -> str:
    """The message inside a \"\"\" block; other text unchanged."""
    s = text.strip()
    if s.startswith(BLOCK) and s.endswith(BLOCK) and len(s) >= 2 * len(BLOCK):
        return s[len(BLOCK) : -len(BLOCK)].strip("\n")
    return text


class PlainReader:
    """Lines from a pipe or file; \"\"\" blocks span lines. No prompt is printed."""

    def __init__(self, stream: TextIO | BinaryIO) -> None:
        self.stream = stream
        self._taken = 0

    def _line(self) -> str:
        """One line as text; a binary stream's invalid UTF-8 becomes U+FFFD (said once on stderr)."""
        from gemma_cli.cli.text_input import clean_text, decode_bytes, too_long_input
        from gemma_cli.limits import MAX_STDIN_BYTES

        line = self.stream.readline(MAX_STDIN_BYTES + 1)  # bounded: `gemma chat < /dev/zero` has no newline
        self._taken += len(line)
        if self._taken > MAX_STDIN_BYTES:  # one line, or a """ block that never closes
            raise too_long_input()
        return decode_bytes(line) if isinstance(line, bytes) else clean_text(line)

    def read(self) -> str | None:
        self._taken = 0  # bytes of this message so far
        line = self._line()
        if not line:
            return None
        text = line.rstrip("\n")
        while block_open(text):
            more = self._line()
            if not more:
                break
            text += "\n" + more.rstrip("\n")
        return text


MAX_HISTORY_BYTES = 64 << 20  # years of typing; a larger "history" is not one


class _NoHistory(Exception):
    """GEMMA_HISTORY is /dev/null: history is off, as asked."""


class TerminalReader:
    """prompt_toolkit prompt with a persistent history file."""

    def __init__(self, history_path: Path, warn: Callable[[str], None]) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, History, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings
        from prompt_toolkit.keys import Keys

        history: History
        try:
            if os.path.realpath(history_path) == os.devnull:  # the usual way to turn history off: say nothing
                raise _NoHistory
            # prompt_toolkit reads the whole file: /dev/zero as GEMMA_HISTORY grew to gigabytes and froze the chat,
            # and opening a FIFO would wait for a reader for ever; so look before opening
            if history_path.exists() and not stat.S_ISREG(history_path.stat().st_mode):
                raise OSError(0, "not a regular file")
            history_path.parent.mkdir(parents=True, exist_ok=True)
            with open(history_path, "a", encoding="utf-8") as f:
                st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):  # replaced between the look and the open
                raise OSError(0, "not a regular file")
            if st.st_size > MAX_HISTORY_BYTES:
                raise OSError(0, f"{st.st_size >> 20} MiB, more than the {MAX_HISTORY_BYTES >> 20} MiB a history is read up to; "
                                 "move it aside to start a new one")
            history = FileHistory(str(history_path))
        except _NoHistory:
            history = InMemoryHistory()
        except OSError as exc:
            warn(f"history is not saved: cannot use {history_path} ({exc.strerror or exc})")
            history = InMemoryHistory()

        kb = KeyBindings()

        @kb.add("enter")
        def _enter(event) -> None:  # send, unless inside a """ block
            buf = event.current_buffer
            if block_open(buf.text):
                buf.insert_text("\n")
            else:
                buf.validate_and_handle()

        @kb.add("escape", "enter")
        def _newline(event) -> None:  # Alt-Enter: a new line without sending
            event.current_buffer.insert_text("\n")

        @kb.add(Keys.Vt100MouseEvent)
        def _typed_escape(event) -> None:
            # Mouse reporting is never turned on, so what parses as a mouse event (ESC [ 3 1 m, typed or pasted)
            # is text: prompt_toolkit's own handler would print a traceback and drop the rest of the line.
            event.current_buffer.insert_text(event.data)

        self.session = PromptSession(
            history=history,
            key_bindings=kb,
            prompt_continuation=CONTINUATION,
            placeholder="Send a message (/? for help)",
        )

    def read(self) -> str | None:
        while True:
            try:
                return self.session.prompt(PROMPT)
            except KeyboardInterrupt:  # Ctrl-C at the prompt: drop the line, keep going
                continue
            except EOFError:
                return None


def make_reader(history_path: Path, warn: Callable[[str], None]) -> Reader:
    """prompt_toolkit on a terminal, plain line reading from a pipe or file."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        return TerminalReader(history_path, warn)
    return PlainReader(getattr(sys.stdin, "buffer", sys.stdin))  # bytes: invalid UTF-8 cannot raise
