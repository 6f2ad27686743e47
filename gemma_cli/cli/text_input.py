"""Text from outside (arguments, stdin) that may not be valid UTF-8.

Python hands undecodable argv bytes over as lone surrogates, and a strict
stdin raises on them; the tokenizer then fails deep inside. Here every such
byte becomes U+FFFD (the replacement character) and stderr says so once per
process, so `head -c 100000 /dev/urandom | gemma run "Summarize:"` runs.
"""

from __future__ import annotations

import sys

from gemma_cli.errors import UsageError
from gemma_cli.limits import MAX_STDIN_BYTES, format_bytes

NOTE = "note: the input was not valid UTF-8; invalid bytes were replaced with U+FFFD (\ufffd)"
_warned = False


def _note() -> None:
    global _warned
    if not _warned:
        _warned = True
        sys.stderr.write(NOTE + "\n")
        sys.stderr.flush()


def decode_bytes(raw: bytes) -> str:
    """UTF-8 text, invalid bytes replaced (with the one-time note)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        _note()
        return raw.decode("utf-8", "replace")


def clean_text(text: str) -> str:
    """A str that may hold surrogates (undecodable argv bytes) -> valid text."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that were not escaped bytes
        raw = text.encode("utf-8", "surrogatepass")
    return decode_bytes(raw)


def too_long_input() -> UsageError:
    return UsageError(f"the piped input is over {format_bytes(MAX_STDIN_BYTES)}: no model's context holds a prompt that long")


def read_stdin() -> str:
    """All of stdin as text (binary read, so no byte sequence can raise), at most MAX_STDIN_BYTES."""
    buffer = getattr(sys.stdin, "buffer", None)
    data = buffer.read(MAX_STDIN_BYTES + 1) if buffer is not None else sys.stdin.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise too_long_input()
    return decode_bytes(data) if isinstance(data, bytes) else clean_text(data)
