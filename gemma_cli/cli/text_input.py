"""Text from outside (arguments, stdin) that may not be valid UTF-8.

Python hands undecodable argv bytes over as lone surrogates, and a strict
stdin raises on them; the tokenizer then fails deep inside. Here every such
byte becomes U+FFFD (the replacement character) and stderr says so once per
process, so `head -c 100000 /dev/urandom | gemma run "Summarize:"` runs.
"""

from __future__ import annotations

import sys

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


def read_stdin() -> str:
    """All of stdin as text (binary read, so no byte sequence can raise)."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:
        return clean_text(sys.stdin.read())
    return decode_bytes(buffer.read())
