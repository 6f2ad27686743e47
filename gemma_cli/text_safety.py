"""Make strings from untrusted files safe to print on a terminal.

Model metadata (general.name, general.license, architecture, chat templates,
token texts, messages a template raises) is attacker-controlled. Printed raw,
an ESC sequence recolours or clears the terminal, `\\r` overwrites the line so
a forged one appears, BEL rings, and a 10 MB license floods the screen. Every
string that comes from a file goes through `clean_display` before it is shown.
"""

from __future__ import annotations

import re

ELLIPSIS = "…"
DEFAULT_LIMIT = 200

# ESC-introduced sequences first (so their parameters go too), then any single
# remaining control character: C0 (incl. ESC, DEL) and C1, and the Unicode
# bidi overrides / isolates that reorder what the terminal shows.
_ESC_SEQ = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI ... final byte
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC ... BEL or ST (titles, hyperlinks)
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"  # DCS / SOS / PM / APC ... ST
    r"|\x1b[ -/]*[0-~]?"  # two-character escapes (ESC c resets the terminal)
)
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean_display(text: object, limit: int | None = DEFAULT_LIMIT, *, multiline: bool = False) -> str:
    """`text` without escape sequences or control characters, at most `limit` characters.

    Newlines and tabs survive only with `multiline` (templates, for instance);
    otherwise they become spaces, so one value stays on one line. A truncated
    result ends in an ellipsis and says how much was cut.
    """
    s = text if isinstance(text, str) else str(text)
    if limit is not None and len(s) > 4 * limit + 64:
        s = s[: 4 * limit + 64]  # bound the regex work; the tail would be cut anyway
        cut = True
    else:
        cut = False
    s = _ESC_SEQ.sub("", s)
    if multiline:
        s = s.replace("\r\n", "\n")
        s = _CONTROLS.sub(lambda m: m.group() if m.group() in "\n\t" else "", s)
    else:
        s = _CONTROLS.sub(lambda m: " " if m.group() in "\n\t\r" else "", s)
    original = len(text) if isinstance(text, str) else len(s)
    if limit is not None and (len(s) > limit or cut):
        keep = max(limit - 1, 0)
        s = s[:keep] + ELLIPSIS
        if limit >= 40:
            s += f" ({original} characters)"
    return s


def terminal_text(text: str) -> str:
    """Generated text as a terminal may show it: escape sequences and control characters removed, newlines
    and tabs kept, nothing cut.

    Why: token texts come from the model file, and a prompt piped in can make a model repeat it, so a
    reply could move the cursor, clear the screen or retitle the window. Only for a terminal: text
    piped on (`gemma run ... | tool`) is data and stays byte for byte the model's. A sequence split
    across two pieces is harmless: its ESC goes with the first, the rest is printable.
    """
    if text.isprintable():  # the common case: nothing to remove
        return text
    return clean_display(text, None, multiline=True)


def clean_tree(value: object, limit: int | None = DEFAULT_LIMIT) -> object:
    """`clean_display` applied to every string in a JSON-like tree (dicts, lists)."""
    if isinstance(value, str):
        return clean_display(value, limit)
    if isinstance(value, dict):
        return {k: clean_tree(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_tree(v, limit) for v in value]
    return value
