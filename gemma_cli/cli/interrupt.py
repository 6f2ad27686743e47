"""Ctrl-C while a generation streams: stop it cleanly between decode steps.

The engine checks its cancel flag once per step, so the text printed so far
stays consistent with the KV cache. `gemma run` lets a second Ctrl-C interrupt
at once (a stuck step must not trap the user); the chat REPL must stay alive,
so there every Ctrl-C only cancels.
"""

from __future__ import annotations

import signal
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

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.fired and self.second_interrupts:
            raise KeyboardInterrupt
        self.fired = True
        self.engine.cancel()

    def __enter__(self) -> "CancelOnSigint":
        self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)
