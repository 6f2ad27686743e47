"""Loaded models: load on first use, worker threads per model, keep-alive, LRU unloading.

Rules (see issue 15, and issue 16 for parallel requests):
- a model is loaded by the first request that needs it, on one of its worker threads;
- each model runs up to `num_parallel` jobs at once (GEMMA_NUM_PARALLEL; 1: one at a time,
  in arrival order): a job alone uses the engine, jobs arriving while others run share
  batches (lanes.py);
- at most `max_loaded` models stay loaded; a new one evicts the least recently
  used *idle* model and waits while every loaded model is busy;
- a model is never unloaded while a job is queued or running on it;
- an idle model unloads when its keep-alive (from its latest request) runs out;
  keep-alive 0 unloads right after the response, before its final event;
- at most `max_queue` jobs wait (for a busy model or a free slot); beyond that, 503;
- with `--rpc`, a lost worker fails every queued and running job with one JSON
  error (502), and later requests get the same error: llama.cpp keeps the broken
  connection, so this process cannot reconnect (see `on_rpc_lost`).

All bookkeeping is under one threading lock: worker threads and the event
loop both touch it. Engines are only ever touched on their model's threads,
one step at a time (lanes.TurnLock).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from gemma_cli.server.errors import QueueFullError
from gemma_cli.server.jobs import DONE, ERROR, Job, JobCancelled, Outcome
from gemma_cli.server.lanes import Lanes
from gemma_cli.server.metrics import Metrics
from gemma_cli.server.settings import FOREVER, Settings

FAR_FUTURE = datetime(2318, 1, 1, tzinfo=timezone.utc)  # what Ollama reports for "never expires"


class Slot:
    """One model: its resolved files, its engine and lanes (once loaded) and its worker threads."""

    def __init__(self, name: str, pair: Any, after: "Future[None] | None" = None, parallel: int = 1) -> None:
        self.name = name
        self.pair = pair
        self.engine: Any = None
        self.lanes: Lanes | None = None
        self.n_ctx = 0  # the engine's context (llama.cpp may round the request up)
        self.asked_ctx = 0  # the context size it was loaded for
        self.trained_ctx: int | None = None  # the target's trained context (its GGUF header), read on first num_ctx
        self.pending = 0  # jobs queued or running
        self.parallel = parallel  # jobs that may run at once
        self.keep_alive = 0.0
        self.expires = FOREVER  # monotonic deadline while idle
        self.last_used = time.monotonic()
        self.loaded_at: datetime | None = None
        self.load_window = (0.0, 0.0)  # perf_counter start and end of the latest (re)load
        self.jobs: set[Job] = set()  # queued or running, so shutdown can cancel them
        self.stop_requested = False  # `gemma stop` while busy: unload after the queued jobs
        self._after = after  # an evicted model's close, finished before this one loads
        self._setup = threading.Lock()  # one job at a time loads, reloads or picks its lane
        self.worker = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix=f"gemma-model-{name}")

    @property
    def parallel_now(self) -> int:
        """Requests that decode together now: the lanes' count once memory cut it (`Lanes._new_scheduler`), else
        GEMMA_NUM_PARALLEL's. What `/api/ps` reports."""
        return min(self.parallel, self.lanes.n_parallel) if self.lanes is not None else self.parallel

    def run_job(self, settings: Settings, job: Job) -> Outcome:
        """Load if needed, take a lane (the engine, or a batch slot when others run), run the job there."""
        with contextlib.ExitStack() as stack:
            with self._setup:
                load_s, draft = self.ensure_engine(settings, job.options)
                load_s = max(load_s, self.load_waited(job.created))
                assert self.lanes is not None
                view = stack.enter_context(self.lanes.lane(draft))
            outcome = job.run(view, load_s)
        return outcome

    def ensure_engine(self, settings: Settings, options: Any) -> tuple[float, Any]:
        """Load (or reload for another context size, once no job runs); (seconds spent, the request's draft)."""
        from gemma_cli.session import EngineChoice, draft_config, open_engine

        if self._after is not None:
            self._after.result()
            self._after = None
        n_ctx = self.request_context(options.num_ctx, settings.n_ctx)
        choice = EngineChoice(options.draft, options.draft_tokens, n_ctx, settings.n_gpu_layers, settings.n_threads,
                              settings.rpc, settings.tensor_split)
        t0 = time.perf_counter()
        if self.engine is not None and self.asked_ctx != n_ctx:
            assert self.lanes is not None
            self.lanes.wait_idle()
            self.close()  # another context size: reload, as Ollama does for num_ctx
        if self.engine is None:
            self.engine = open_engine(self.pair, choice, option="draft")
            self.lanes = Lanes(self.engine, settings.num_parallel, settings.batch_exact, name=self.name)
            self.n_ctx, self.asked_ctx = self.engine.n_ctx, n_ctx
            self.loaded_at = datetime.now(timezone.utc)
            self.load_window = (t0, time.perf_counter())
            return self.load_window[1] - t0, self.engine.draft
        return 0.0, draft_config(self.pair, choice, option="draft")

    def request_context(self, asked: int | None, server_ctx: int) -> int:
        """The context a request loads with: the server's --ctx, or its own num_ctx capped at the larger of the
        model's trained context and --ctx (as Ollama caps num_ctx at the trained length).

        Why: num_ctx comes from any client, and the KV cache grows with it: one request asking for a million
        tokens of a 32k-context Gemma 3 270M made the server hold 19 GB for positions the model was never
        trained on. The operator's own --ctx is trusted as given.
        """
        from gemma_cli.engine.llama import rounded_context

        if asked is None:
            return rounded_context(server_ctx)
        if self.trained_ctx is None:
            self.trained_ctx = _trained_context(self.pair.target)
        cap = max(self.trained_ctx or asked, server_ctx)
        if asked > cap and (self.engine is None or self.asked_ctx != rounded_context(cap)):
            sys.stderr.write(f"gemma serve: {self.name}: num_ctx {asked} is more than it was trained on "
                             f"({self.trained_ctx}) and than --ctx ({server_ctx}); loading with {cap}\n")
            sys.stderr.flush()
        # Rounded as the context will be: num_ctx 4000 and 4096 (or none, with --ctx 4096) are one context, and
        # comparing the numbers as asked reloaded the model, and lost its prompt cache, at every switch.
        return rounded_context(min(asked, cap))

    def load_waited(self, since: float) -> float:
        """Seconds of the latest load that a job created at `since` waited through: a request that queued
        while another loaded the model reports that wait as its load_duration (as Ollama does), not 0."""
        start, end = self.load_window
        return max(end - max(start, since), 0.0)

    def close(self) -> None:
        if self.engine is not None:
            lanes, self.lanes, self.engine = self.lanes, None, None
            assert lanes is not None
            lanes.close()

    @property
    def size(self) -> int:
        files = {self.pair.target} | ({self.pair.drafter} if self.pair.drafter else set())  # one file as both: once
        return sum(p.stat().st_size for p in files if p.exists())

    def expires_at(self) -> datetime:
        if self.pending or self.keep_alive == FOREVER:
            return FAR_FUTURE if self.keep_alive == FOREVER else datetime.now(timezone.utc) + timedelta(seconds=self.keep_alive)
        left = max(self.expires - time.monotonic(), 0.0)
        return datetime.now(timezone.utc) + timedelta(seconds=left)


def _trained_context(target: Any) -> int:
    """The target's `{arch}.context_length`, 0 when the header has none or cannot be read (no cap: the load reports it)."""
    from gemma_cli.errors import GemmaError
    from gemma_cli.gguf_meta import read_gguf

    try:
        value = read_gguf(target, strings=False).arch_key("context_length")
    except (GemmaError, OSError):
        return 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(frozen=True)
class LoadedModel:
    """A snapshot for /api/ps."""

    name: str
    pair: Any
    size: int
    n_ctx: int
    draft_source: str
    expires_at: datetime
    in_use: bool
    loaded: bool
    parallel: int = 1  # jobs that may run at once (GEMMA_NUM_PARALLEL)
    active: int = 0  # jobs running now
    batched: int = 0  # of those, jobs sharing batches


class ModelManager:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._lock = threading.RLock()
        self._slots: dict[str, Slot] = {}
        self._waiting = 0  # jobs admitted but not yet running (the queue)
        self.rpc_lost: str | None = None  # why models split across RPC workers can no longer run here
        if settings.rpc:
            from gemma_cli.engine import rpc

            rpc.set_loss_handler(self.on_rpc_lost)

    # -- admission ------------------------------------------------------------
    async def submit(self, name: str, job: Job) -> None:
        """Queue `job` on model `name` (loading it if needed); QueueFullError when the queue is full."""
        from gemma_cli.registry.resolve import resolve_model

        pair = None
        counted = False  # whether this job holds a place in the queue
        try:
            while True:
                with self._lock:
                    slot = self._slots.get(name)
                    if slot is None and pair is not None:
                        slot = self._new_slot(name, pair)
                        if slot is None and not counted:  # every loaded model is busy: wait for one
                            self._admit_waiting()
                            counted = True
                    if slot is not None:
                        if slot.pending >= slot.parallel and not counted:
                            self._admit_waiting()
                            counted = True
                        slot.pending += 1
                        slot.jobs.add(job)
                        slot.expires = FOREVER
                        slot.worker.submit(self._run, slot, job, counted)
                        counted = False  # the worker thread gives the place back when the job starts
                        return
                if pair is None:
                    pair = await asyncio.to_thread(resolve_model, name)
                    continue
                if job.cancelled:
                    raise JobCancelled("the client went away")
                await asyncio.sleep(0.02)
        finally:
            if counted:
                with self._lock:
                    self._waiting -= 1
                    self.metrics.queue_depth.set(self._waiting)

    def _admit_waiting(self) -> None:
        if self._waiting >= self.settings.max_queue:
            self.metrics.rejected.inc()
            raise QueueFullError(self.settings.max_queue)
        self._waiting += 1
        self.metrics.queue_depth.set(self._waiting)

    def _new_slot(self, name: str, pair: Any) -> Slot | None:
        """A slot for `name`, evicting the least recently used idle model if full; None if all are busy."""
        after = None
        if len(self._slots) >= self.settings.max_loaded:
            idle = [s for s in self._slots.values() if s.pending == 0]
            if not idle:
                return None
            victim = min(idle, key=lambda s: s.last_used)
            after = self._unload_locked(victim)
        slot = Slot(name, pair, after, self.settings.num_parallel)
        self._slots[name] = slot
        self.metrics.loaded_models.set(len(self._slots))
        return slot

    # -- the worker thread -------------------------------------------------------
    def _run(self, slot: Slot, job: Job, counted: bool) -> None:
        with self._lock:
            if counted:
                self._waiting -= 1
                self.metrics.queue_depth.set(self._waiting)
        final: tuple[str, Any] = (ERROR, RuntimeError("the job ended without a result"))
        try:
            if job.cancelled:
                raise JobCancelled("the client went away")
            if self.rpc_lost:
                from gemma_cli.engine.rpc_protocol import RpcError

                raise RpcError(self.rpc_lost)
            final = (DONE, slot.run_job(self.settings, job))
        except BaseException as exc:  # noqa: BLE001 - reported to the client as JSON
            final = (ERROR, exc)
        finally:
            self._finish(slot, job)
            job.emit(*final)

    def _finish(self, slot: Slot, job: Job) -> None:
        """Bookkeeping after a job, before its final event: keep-alive 0 unloads here."""
        with self._lock:
            slot.pending -= 1
            slot.jobs.discard(job)
            if job.batched:
                self.metrics.batched.labels(slot.name).inc()
            slot.last_used = time.monotonic()
            slot.keep_alive = 0.0 if slot.stop_requested else job.keep_alive
            slot.expires = slot.last_used + slot.keep_alive if slot.keep_alive != FOREVER else FOREVER
            unload = slot.pending == 0 and (slot.keep_alive == 0 or slot.engine is None)
            if unload and self._slots.get(slot.name) is slot:
                del self._slots[slot.name]
                self.metrics.loaded_models.set(len(self._slots))
            else:
                unload = False
        if unload:
            slot.close()  # on this slot's own thread: nothing else can use the engine
            slot.worker.shutdown(wait=False)

    def on_rpc_lost(self, line: str) -> None:
        """An RPC worker went away (on a thread ggml has parked for good, see rpc.set_loss_handler).

        Every job on a loaded model gets the error now; the models are dropped
        without closing them (freeing their remote buffers would wait on the
        dead connection), and later requests get the same error.
        """
        from gemma_cli.engine.rpc_protocol import RpcError

        message = f"{line}; this server cannot reconnect: restart `gemma rpc-worker` there, then `gemma serve`"
        sys.stderr.write(f"gemma serve: {message}\n")
        sys.stderr.flush()
        with self._lock:
            self.rpc_lost = message
            slots = list(self._slots.values())
            self._slots.clear()
            self.metrics.loaded_models.set(0)
        for slot in slots:
            for job in list(slot.jobs):
                job.emit(ERROR, RpcError(message))
            slot.worker.shutdown(wait=False, cancel_futures=True)

    # -- unloading ------------------------------------------------------------
    def _unload_locked(self, slot: Slot) -> "Future[None]":
        """Remove an idle slot and close its engine on its own thread; returns that close."""
        del self._slots[slot.name]
        self.metrics.loaded_models.set(len(self._slots))
        future = slot.worker.submit(slot.close)
        slot.worker.shutdown(wait=False)
        return future

    def stop(self, name: str) -> bool:
        """Unload `name` now if idle, else right after its queued jobs; False if not loaded."""
        with self._lock:
            slot = self._slots.get(name)
            if slot is None:
                return False
            slot.stop_requested = True
            if slot.pending == 0:
                self._unload_locked(slot)
            return True

    def expire(self) -> None:
        """Unload idle models whose keep-alive ran out (called periodically)."""
        now = time.monotonic()
        with self._lock:
            for slot in list(self._slots.values()):
                if slot.pending == 0 and slot.expires <= now:
                    self._unload_locked(slot)

    async def reap_forever(self, every: float = 0.25) -> None:
        while True:
            await asyncio.sleep(every)
            self.expire()

    def cancel_all(self) -> None:
        """Stop every queued and running job within a step (server shutdown); thread safe."""
        with self._lock:
            jobs = [job for slot in self._slots.values() for job in slot.jobs]
        for job in jobs:
            job.cancel(server_stopping=True)

    def shutdown(self) -> None:
        """Cancel every job (each stops within a step) and close the engines on their threads."""
        with self._lock:
            slots = list(self._slots.values())
            self._slots.clear()
            self.metrics.loaded_models.set(0)
            jobs = [job for slot in slots for job in slot.jobs]
        for job in jobs:
            job.cancel(server_stopping=True)
        for slot in slots:
            slot.worker.submit(slot.close)
            slot.worker.shutdown(wait=False)

    # -- views ------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return self._waiting

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            slots = list(self._slots.values())
        out = []
        for s in slots:
            engine, lanes = s.engine, s.lanes
            out.append(LoadedModel(s.name, s.pair, s.size, s.n_ctx, engine.draft.source if engine else "",
                                   s.expires_at(), s.pending > 0, engine is not None, s.parallel_now,
                                   lanes.active if lanes else 0, lanes.batched if lanes else 0))
        return out

    def keep_alive_for(self, value: Any) -> float:
        from gemma_cli.server.settings import parse_duration

        return self.settings.keep_alive if value is None else parse_duration(value)
