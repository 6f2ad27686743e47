"""Ctrl-C while a generation streams: stop it cleanly between decode steps.

The engine checks its cancel flag once per step, so the text printed so far
stays consistent with the KV cache. `gemma run` lets a second Ctrl-C interrupt
at once (a stuck step must not trap the user); the chat REPL must stay alive,
so there every Ctrl-C only cancels.

While the block runs, the terminal's ECHOCTL flag is off, so Ctrl-C does not
echo `^C` into the middle of the streamed text.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from types import FrameType
from typing import Any, Protocol


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class CancelOnSigint:
    """Route SIGINT to `engine.cancel()` for the duration of a `with` block; `fired` says whether it came."""

    def __init__(self, engine: Cancellable, *, second_interrupts: bool) -> None:
        self.engine = engine
        self.second_interrupts = second_interrupts
        self.fired = False
        self._previous: Any = None
        self._termios: Any = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.fired and self.second_interrupts:
            raise KeyboardInterrupt
        self.fired = True
        self.engine.cancel()

    def __enter__(self) -> "CancelOnSigint":
        self._previous = signal.signal(signal.SIGINT, self._handler)
        self._termios = _echoctl_off()
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)
        _restore(self._termios)


def _echoctl_off() -> Any:
    """Turn off ECHOCTL on the controlling terminal; returns what to restore (None: nothing changed)."""
    try:
        import termios

        fd = sys.stdin.fileno()
        if not sys.stdin.isatty():
            return None
        old = termios.tcgetattr(fd)
        new = list(old)
        new[3] = new[3] & ~termios.ECHOCTL
        termios.tcsetattr(fd, termios.TCSANOW, new)
        return fd, old
    except Exception:  # not a terminal, no termios, a closed stdin: nothing to change
        return None


def _restore(saved: Any) -> None:
    if saved is None:
        return
    import termios

    fd, old = saved
    with contextlib.suppress(OSError, termios.error):
        termios.tcsetattr(fd, termios.TCSANOW, old)
