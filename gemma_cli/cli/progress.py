"""Download/copy progress on stderr: rich bars on a terminal, nothing otherwise.

Implements the registry's `PullProgress` callbacks. Bars show bytes, speed
and ETA per file (target and drafter). Off with --quiet and whenever stderr
is not a terminal, so logs and pipes stay clean.
"""

from __future__ import annotations

import os
import sys

from gemma_cli.registry.pull import NullProgress, PullProgress


class RichProgress:
    """One live rich Progress; each `start` adds a bar, `finish` completes it."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

        console = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")))
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=console, transient=False,
        )
        self._task = None

    def __enter__(self) -> "RichProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, label: str, total: int | None, completed: int = 0) -> None:
        self._task = self._progress.add_task(label, total=total, completed=completed)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)

    def finish(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[-1]
            if task.total is not None:
                self._progress.update(self._task, completed=task.total)
        self._task = None

    def abort(self, note: str) -> None:
        """Leave the bar where the transfer stopped and say why (never a full bar for a partial file)."""
        if self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(self._task, description=f"{task.description}: {note}")
        self._task = None


class _NullContext(NullProgress):
    def __enter__(self) -> "_NullContext":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_for(quiet: bool) -> "RichProgress | _NullContext":
    """Bars only when wanted and stderr is a terminal; use as a context manager."""
    if quiet or not sys.stderr.isatty():
        return _NullContext()
    return RichProgress()


__all__ = ["progress_for", "RichProgress", "PullProgress"]
