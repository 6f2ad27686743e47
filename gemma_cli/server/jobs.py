"""One request's work on a model's worker thread, streamed back to the event loop.

The engine is synchronous and not thread-safe: a job gets it (or a slot in the
model's batch scheduler) through lanes.py, which lets one step run at a time. A job reports through an asyncio
queue: first READY (the model is loaded and the prompt fits) or ERROR, then
PIECE events, then DONE. `cancel()` is safe from the event loop at any time:
a queued job never starts, a running one stops within one decode step.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from gemma_cli.server.validate import GenOptions

READY, PIECE, DONE, ERROR = "ready", "piece", "done", "error"


@dataclass(frozen=True)
class Event:
    kind: str
    value: Any = None


@dataclass(frozen=True)
class Outcome:
    """What a finished generation reports: the engine's result and the request's timings."""

    result: Any  # gemma_cli.engine.types.GenerationResult (None for a load-only job)
    load_s: float
    total_s: float
    queued_s: float

    @property
    def ttft_s(self) -> float:
        """Time to first token as the client sees it: queue wait, model load, prompt evaluation."""
        return self.queued_s + self.load_s + (self.result.stats.ttft_s if self.result is not None else 0.0)


class JobCancelled(Exception):
    """The job was cancelled before it started: the client went away or the server is stopping."""


class CutShort(Exception):
    """The server stopped while this reply was being written: what the client got is not the whole reply."""


class Job:
    """A request for a model's worker thread: `work(engine)` builds a Generation (or None to only load)."""

    def __init__(self, options: GenOptions, keep_alive: float, work: Callable[[Any], Any] | None) -> None:
        self.options = options
        self.keep_alive = keep_alive
        self.work = work
        self.created = time.perf_counter()
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._engine: Any = None
        self.batched = False  # it ran in the batch lane (shared batches with other requests)
        self.server_stopping = False  # cancelled by the server's shutdown, not by its client (see `cancel`)

    # -- event-loop side ----------------------------------------------------
    def cancel(self, *, server_stopping: bool = False) -> None:
        """Stop this job: before it starts, or within one decode step (thread safe).

        `server_stopping`: the server is shutting down while the client still reads, so the reply must end
        with an error rather than look finished (a client that went away reads nothing either way).
        """
        if server_stopping:
            self.server_stopping = True
        self._cancelled.set()
        engine = self._engine
        if engine is not None:
            engine.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def next_event(self) -> Event:
        return await self.events.get()

    # -- worker-thread side ---------------------------------------------------
    def emit(self, kind: str, value: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, Event(kind, value))
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    def run(self, engine: Any, load_s: float) -> Outcome:
        """Generate on this (worker) thread, emitting READY, PIECEs; returns the outcome for DONE."""
        started = time.perf_counter()
        queued_s = max(started - self.created - load_s, 0.0)
        if self.work is None:
            self.emit(READY, load_s)
            return Outcome(None, load_s, time.perf_counter() - self.created, queued_s)
        self.batched = bool(getattr(engine, "batched", False))
        generation = self.work(engine)  # may raise: template, context, options errors
        self._engine = engine
        if self.cancelled:  # cancelled while loading: do not start decoding
            engine.cancel()
        self.emit(READY, load_s)
        try:
            for piece in generation:
                self.emit(PIECE, piece)
                if self.cancelled:
                    engine.cancel()  # in case the cancel raced the generation's start
        finally:
            self._engine = None
            self.batched = self.batched or bool(getattr(engine, "batched", False))  # it may have moved into the batch
        return Outcome(generation.result, load_s, time.perf_counter() - self.created, queued_s)
