"""Where things are printed: results on stdout, diagnostics on stderr.

Colour only on a terminal and never with NO_COLOR, so pipes and files get
plain bytes.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

from gemma_cli.engine import LiveStats


def quiet_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so interpreter shutdown does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def dumb_terminal() -> bool:
    """TERM=dumb (Emacs shell-mode, some CI logs): escape sequences show as garbage there, so none are written."""
    return os.environ.get("TERM", "") == "dumb"


def use_color(stream=None) -> bool:
    stream = stream or sys.stdout
    return not os.environ.get("NO_COLOR") and not dumb_terminal() and hasattr(stream, "isatty") and stream.isatty()


def stderr_console() -> Console:
    return Console(stderr=True, no_color=not use_color(sys.stderr), highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    return Console(no_color=not use_color(sys.stdout), highlight=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.3f}s"
    return f"{seconds * 1000:.2f}ms"


def _speedup(stats: LiveStats) -> str:
    """The estimate, or why there is none (it needs plain steps of this generation to compare with)."""
    value = stats.speedup_estimate
    if value is None:
        return "n/a (too few plain and drafting steps to compare; measure with gemma bench)"
    return f"{value:.2f}x vs plain decoding ({stats.plain_steps} plain, {stats.draft_steps} drafting steps)"


def verbose_summary_lines(stats: LiveStats, load_s: float) -> list[tuple[str, str]]:
    """Ollama's `--verbose` block plus the speculative decoding figures."""
    eval_count = max(stats.generated_tokens - 1, 0)
    rows = [
        ("total duration", _duration(load_s + stats.wall_s)),
        ("load duration", _duration(load_s)),
        ("prompt eval count", f"{stats.prompt_evaluated} token(s) ({stats.prompt_tokens - stats.prompt_evaluated} cached)"),
        ("prompt eval duration", _duration(stats.prompt_eval_s)),
        ("prompt eval rate", f"{stats.prompt_tokens_per_s:.2f} tokens/s"),
        ("eval count", f"{eval_count} token(s)"),
        ("eval duration", _duration(stats.decode_s)),
        ("eval rate", f"{stats.tokens_per_s:.2f} tokens/s"),
        ("draft source", stats.draft_source),
    ]
    if stats.draft_source != "none":
        rows += [
            ("draft length", f"{stats.draft_max} (adaptive)"),
            ("draft proposed", f"{stats.draft_proposed} token(s)"),
            ("draft accepted", f"{stats.draft_accepted} token(s) ({stats.acceptance_rate:.1%})"),
            ("tokens per pass", f"{stats.tokens_per_pass:.2f}"),
            ("speedup estimate", _speedup(stats)),
        ]
    return rows


def render_verbose_summary(stats: LiveStats, load_s: float) -> None:
    lines = verbose_summary_lines(stats, load_s)
    width = max(len(k) for k, _ in lines) + 2
    sys.stderr.write("\n" if sys.stderr.isatty() else "")
    for key, value in lines:
        sys.stderr.write(f"{key + ':':<{width}}{value}\n")
    sys.stderr.flush()


def size_text(n: int | float | None) -> str:
    """Bytes as `ls -h`-like text in powers of 1000, as Ollama prints them: '5 B', '268.1 MB'; '?' when unknown."""
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def table(rows: list[list[object]], cell_limit: int = 200) -> str:
    """Left-aligned columns 4 spaces apart, as `gemma list` and `gemma ps` print them.

    Every cell is cleaned (at most `cell_limit` characters): cells hold a server's strings
    (client mode) or a model file's.
    """
    from gemma_cli.text_safety import clean_display

    cells = [[clean_display(c, cell_limit) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join("    ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in cells)
