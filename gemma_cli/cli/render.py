"""Show a streaming reply: the text, a live status line, and a summary after it.

The status line lives on the terminal's last row, outside a scroll region
(DECSTBM, the way apt draws its progress bar): the reply streams and wraps
freely above it and nothing is ever redrawn except that one row. It is
refreshed at most `refresh_s` apart, never per token, from the engine's live
`LiveStats`, so drawing it costs nothing measurable.

With `highlight`, text from accepted draft tokens is coloured differently from
tokens the target produced itself, so speculation can be seen working.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Callable, Iterable, TextIO

from rich.color import ColorSystem
from rich.style import Style

from gemma_cli.engine import LiveStats, Piece, StopReason
from gemma_cli.text_safety import terminal_text

DRAFT_STYLE = Style(color="cyan")
TARGET_STYLE = Style()
STATUS_STYLE = Style(dim=True)
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

_STOP_WORDS = {
    StopReason.EOS: "",
    StopReason.STOP: "stop string",
    StopReason.LENGTH: "max tokens reached",
    StopReason.CONTEXT: "context full",
    StopReason.CANCELLED: "cancelled",
}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 1.0 else f"{seconds:.2f}s"


def live_text(stats: LiveStats, frame: int = 0) -> str:
    """The one-row status shown while generating."""
    parts = [f"{SPINNER[frame % len(SPINNER)]} generating", f"{stats.tokens_per_s:.1f} tok/s"]
    if stats.draft_source != "none":
        parts.append(f"accept {stats.acceptance_rate:.0%}")
        parts.append(f"{stats.tokens_per_pass:.2f} tok/pass")
    parts.append(f"ctx {stats.n_past}/{stats.n_ctx}")
    parts.append("Ctrl-C stops")
    return " │ ".join(parts)


def waiting_text(prompt_tokens: int) -> str:
    """The status before the first token (the summary says how much came from the cache)."""
    return f"{SPINNER[0]} evaluating the prompt ({prompt_tokens} tokens, reusing the cached prefix)…"


SEP = " · "


def summary_parts(stats: LiveStats, stop: StopReason) -> list[str]:
    """The summary's pieces; figures that are read together stay in one piece (never split by wrapping)."""
    parts = [f"{stats.generated_tokens} tokens{SEP}{stats.tokens_per_s:.1f} tok/s"]
    if stats.draft_source != "none":
        parts.append(f"{stats.draft_source} accepted {stats.draft_accepted}/{stats.draft_proposed} ({stats.acceptance_rate:.0%})")
        parts.append(f"{stats.tokens_per_pass:.2f} tok/pass")
    parts.append(f"TTFT {_ms(stats.ttft_s)}")
    parts.append(f"prompt {stats.prompt_evaluated}/{stats.prompt_tokens} evaluated{SEP}ctx {stats.n_past}/{stats.n_ctx}")
    word = _STOP_WORDS.get(stop, stop.value)
    if word:
        parts.append(word)
    return parts


def summary_text(stats: LiveStats, stop: StopReason) -> str:
    """The compact line printed after each reply."""
    return SEP.join(summary_parts(stats, stop))


def styled(text: str, style: Style, color: bool) -> str:
    """ANSI-styled text via rich (plain when colour is off or the style is empty)."""
    if not color or not text or not style:
        return text
    return style.render(text, color_system=ColorSystem.TRUECOLOR)


def split_drafted(piece: Piece) -> tuple[str, str]:
    """(text from accepted drafts, text from the target's own token) of one piece.

    Within a step the accepted drafts come first and the target's token last.
    The engine may say exactly where the drafted text ends (`draft_chars`);
    otherwise the split is estimated from the token counts.
    """
    if piece.n_drafted <= 0 or not piece.text:
        return "", piece.text
    cut = getattr(piece, "draft_chars", None)
    if cut is None:
        if piece.n_drafted >= piece.n_tokens:
            cut = len(piece.text)
        else:
            cut = round(len(piece.text) * piece.n_drafted / max(piece.n_tokens, 1))
    cut = max(0, min(int(cut), len(piece.text)))
    return piece.text[:cut], piece.text[cut:]


class StatusBar:
    """One status row pinned to the bottom of a terminal while a reply streams above it."""

    def __init__(self, stream: TextIO, color: bool) -> None:
        self.stream = stream
        self.color = color
        self.rows = 0
        self.cols = 0
        self.active = False

    def _size(self) -> tuple[int, int]:
        size = shutil.get_terminal_size((80, 24))
        return size.lines, size.columns

    def open(self) -> bool:
        rows, cols = self._size()
        if rows < 3 or cols < 20:
            return False
        self.rows, self.cols = rows, cols
        # newline (scrolls if at the bottom), save, scroll region = all but the last row, restore, back up
        self.stream.write(f"\n\x1b7\x1b[1;{rows - 1}r\x1b8\x1b[1A")
        self.stream.flush()
        self.active = True
        return True

    def draw(self, text: str) -> None:
        if not self.active:
            return
        rows, cols = self._size()
        if (rows, cols) != (self.rows, self.cols) and rows >= 3:  # resized: move the region
            self.stream.write(f"\x1b7\x1b[{self.rows};1H\x1b[2K\x1b[1;{rows - 1}r\x1b8")
            self.rows, self.cols = rows, cols
        line = text[: max(self.cols - 1, 1)]
        self.stream.write(f"\x1b7\x1b[{self.rows};1H\x1b[2K{styled(line, STATUS_STYLE, self.color)}\x1b8")
        self.stream.flush()

    def close(self) -> None:
        if not self.active:
            return
        self.active = False
        # save, clear the status row, full-screen scroll region again, restore
        self.stream.write(f"\x1b7\x1b[{self.rows};1H\x1b[2K\x1b[r\x1b8")
        self.stream.flush()


class ReplyRenderer:
    """Writes a reply's pieces to `out`, keeps the status bar fresh, prints the summary."""

    def __init__(
        self,
        out: TextIO | None = None,
        err: TextIO | None = None,
        *,
        live: bool,
        color: bool,
        highlight: bool = False,
        refresh_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.live = live
        self.color = color
        self.highlight = highlight and color
        self.refresh_s = refresh_s
        self.clock = clock

    def stream(self, pieces: Iterable[Piece], stats: LiveStats, *, prompt_tokens: int,
               stopped: Callable[[], bool] | None = None) -> str:
        """Write every piece as it arrives; the status row shows `stats` (updated by the engine).

        Once `stopped()` is true (Ctrl-C), later pieces (the rest of the step
        being verified) are consumed but not shown. Returns the text shown.
        """
        bar = StatusBar(self.err, self.color) if self.live else None
        out = self.out
        safe = terminal_text if _is_terminal(out) else str  # a terminal never gets the model's escape sequences
        frame = 0
        ended_with_newline = True
        wrote = False
        shown: list[str] = []
        try:
            if bar is not None and bar.open():
                bar.draw(waiting_text(prompt_tokens))
            last = -1e9
            for piece in pieces:
                if stopped is not None and stopped():
                    continue
                if piece.text:
                    shown.append(piece.text)
                    if self.highlight:
                        drafted, own = split_drafted(piece)
                        out.write(styled(safe(drafted), DRAFT_STYLE, True) + safe(own))
                    else:
                        out.write(safe(piece.text))
                    out.flush()
                    ended_with_newline = piece.text.endswith("\n")
                    wrote = True
                if bar is not None:
                    now = self.clock()
                    if now - last >= self.refresh_s:
                        last = now
                        frame += 1
                        bar.draw(live_text(stats, frame))
        finally:
            if wrote and not ended_with_newline:
                out.write("\n")
            out.flush()
            if bar is not None:
                bar.close()
        return "".join(shown)

    def summary(self, stats: LiveStats, stop: StopReason) -> None:
        parts = summary_parts(stats, stop)
        if not self.live:
            self.err.write(styled(SEP.join(parts), STATUS_STYLE, self.color) + "\n")
            self.err.flush()
            return
        # A terminal: break between the parts, never inside a number. Each row but the last is
        # padded to the full width, so the terminal itself moves on to the next row and the
        # summary stays one line of text (for copy and paste, and for anything reading the stream).
        cols = shutil.get_terminal_size((80, 24)).columns
        rows = wrap_parts(parts, cols)
        text = "".join(row.ljust(cols) for row in rows[:-1]) + rows[-1]
        self.err.write(styled(text, STATUS_STYLE, self.color) + "\n")
        self.err.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


def wrap_parts(parts: list[str], width: int, sep: str = SEP) -> list[str]:
    """Pack `parts` into rows of at most `width` columns, breaking only between parts.

    A part wider than a row is split at its own separators, if it has any.
    """
    pieces = [sub for part in parts for sub in (part.split(sep) if len(part) > width else [part])]
    rows: list[str] = []
    current = ""
    for part in pieces:
        candidate = part if not current else current + sep + part
        if current and len(candidate) > width:
            rows.append(current)
            current = part
        else:
            current = candidate
    rows.append(current)
    return rows
