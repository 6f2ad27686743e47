"""One OS thread runs every llama.cpp decode of a process whose requests run on many threads (`gemma serve`).

An OpenMP build of llama.cpp computes each decode in a thread team that
libgomp keeps per *calling* thread. Once it manages more threads than there
are CPUs, libgomp's idle threads spin only ~100 iterations before sleeping
(its throttled spin count), so every one of the hundreds of barriers per token
pays a futex wake-up. Measured on the 2-core EPYC (Gemma 3 270M, 2 threads):
after one decode from a second thread, every later decode ran ~10% slower
(85 -> 75 tok/s, 1.97 -> 1.79 cores busy). The server runs jobs on a pool of
worker threads, so it installs a `ComputeThread` and every decode call site
(`_lib.run_decode`) hands its call to that one thread: one team, full spinning.
A hand-off costs tens of microseconds against 1-20 ms decodes.

The CLI decodes on its main thread only and installs nothing. Over RPC it is
not installed either: a lost worker parks the decoding thread inside ggml for
good (engine/rpc.py), and that must not be the thread every model shares.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Callable, Iterator


class ComputeThread:
    """A daemon thread that runs the calls handed to it, one at a time, and returns their results."""

    def __init__(self, name: str = "gemma-compute") -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], threading.Lock, list[Any]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            fn, args, done, box = self._jobs.get()
            try:
                box.append(fn(*args))
            except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
                box.append(e)
                box.append(None)
            finally:
                done.release()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the compute thread (directly when already on it)."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        done = threading.Lock()
        done.acquire()
        box: list[Any] = []
        self._jobs.put((fn, args, done, box))
        done.acquire()  # released by the compute thread when the call has returned or raised
        if len(box) == 2:
            raise box[0]
        return box[0]


#: The installed compute thread (None: each caller decodes on its own thread). See `installed`.
current: ComputeThread | None = None


def install() -> ComputeThread:
    """Route every later decode of this process through one compute thread (idempotent)."""
    global current
    if current is None:
        current = ComputeThread()
    return current


@contextlib.contextmanager
def installed() -> Iterator[ComputeThread]:
    """`install` for a block, then back to decoding on the callers' threads (tests, benchmarks)."""
    global current
    previous = current
    current = ComputeThread()
    try:
        yield current
    finally:
        current = previous
