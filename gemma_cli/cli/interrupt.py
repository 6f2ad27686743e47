"""Ctrl-C while a generation streams: stop it cleanly between decode steps.

The engine checks its cancel flag once per step, so the text printed so far
stays consistent with the KV cache. `gemma run` lets a second Ctrl-C end the
process at once, exit 130 (a stuck step must not trap the user); the chat REPL must stay alive,
so there every Ctrl-C only cancels.

While the block runs, the terminal's ECHOCTL flag is off, so Ctrl-C does not
echo `^C` into the middle of the streamed text.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, Iterator, Protocol


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
            _exit_now()
        self.fired = True
        self.engine.cancel()

    def __enter__(self) -> "CancelOnSigint":
        self._previous = signal.signal(signal.SIGINT, self._handler)
        self._termios = _echoctl_off()
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)
        _restore(self._termios)


@contextlib.contextmanager
def held_until_loaded() -> Iterator[None]:
    """Hold a Ctrl-C that comes while llama.cpp loads a model until the load returns, then raise it.

    Why: llama.cpp logs through a Python callback while it loads, so that is where Python's SIGINT
    handler runs; ctypes prints the KeyboardInterrupt raised there as "Exception ignored" with a
    traceback and drops it, and the command went on to generate as if no Ctrl-C had come. Held, the
    Ctrl-C ends the command (exit 130) once the load is back in Python. Only on the main thread, and
    not where SIGINT is ignored (a background job).
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    came: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if came:
        raise KeyboardInterrupt


def _exit_now() -> None:
    """The second Ctrl-C: end the process at once, exit status 130, without unwinding.

    Why not raise KeyboardInterrupt: it lands wherever the main thread is, often in the middle of
    closing the engine after the first Ctrl-C cancelled it, and an unwind that frees llama.cpp's model
    and context halfway crashed the process (SIGSEGV, "double free") in about half of the tries. What
    was printed stays printed; the OS takes back the memory.
    """
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.write("\n")
        sys.stderr.flush()
    os._exit(130)  # ExitCode.INTERRUPT: 128 + SIGINT, as shells report it


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
