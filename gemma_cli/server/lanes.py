"""Several requests on one loaded model: the engine when a request is alone, shared batches when it is not.

A request that arrives while nothing else runs on its model takes the
*engine lane*: the single-sequence engine exactly as with one slot (its KV
reuse across chat turns, its draft-length controller, its n-gram memory, MTP),
so one client pays nothing for batching. A request that arrives while others
run takes the *batch lane*: a slot in the model's `BatchScheduler` (created on
first need, closed before the engine), decoded in shared batches with the
other batch-lane requests. MTP requests (not batchable yet) always take the
engine lane and wait for it if it is busy.

The two lanes never decode at once: every step of either (one engine pass,
or one batched step) runs under the model's `TurnLock`, a FIFO lock, so an
engine request and the batch alternate step by step instead of fighting for
the cores (or the GPU), and neither starves the other.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Any, Iterator

from gemma_cli.engine.batch import BatchScheduler, batchable


class TurnLock:
    """A lock handed to waiters in arrival order (threading.Lock lets a releasing thread take it straight back)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = False
        self._waiters: collections.deque[threading.Event] = collections.deque()

    def acquire(self) -> None:
        with self._lock:
            if not self._held:
                self._held = True
                return
            turn = threading.Event()
            self._waiters.append(turn)
        turn.wait()  # release() hands the lock over directly: it stays held

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._held = False

    def __enter__(self) -> "TurnLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class TurnTaking:
    """A generation whose every step waits for the model's turn; the rest (result, stats, cancel) passes through."""

    def __init__(self, generation: Any, turns: TurnLock) -> None:
        self._generation = generation
        self._turns = turns

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        with self._turns:
            return next(self._generation)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._generation, name)


class LaneView:
    """What a job sees instead of the engine: the engine's (or a BatchClient's) calls; `generate` takes turns."""

    def __init__(self, target: Any, turns: TurnLock, batched: bool) -> None:
        self._target = target
        self._turns = turns
        self.batched = batched

    def generate(self, *args: Any, **kwargs: Any) -> TurnTaking:
        return TurnTaking(self._target.generate(*args, **kwargs), self._turns)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class Lanes:
    """One loaded engine's lanes: who runs where, and the batch scheduler behind the batch lane."""

    def __init__(self, engine: Any, n_parallel: int, exact: bool) -> None:
        self.engine = engine
        self.n_parallel = n_parallel
        self.exact = exact
        self.turns = TurnLock()
        self.scheduler: BatchScheduler | None = None
        self._cond = threading.Condition()
        self.on_engine = False  # a job holds the engine lane
        self.batched = 0  # jobs in the batch lane
        self.batched_total = 0  # jobs that ever took the batch lane
        self.peak = 0  # most jobs running at once

    @property
    def active(self) -> int:
        return int(self.on_engine) + self.batched

    def _fits_batch(self, draft: Any) -> bool:
        n_batch = self.engine.ctx.n_batch
        return self.n_parallel > 1 and batchable(draft) and self.n_parallel * (draft.tokens + 1) <= n_batch

    @contextlib.contextmanager
    def lane(self, draft: Any) -> Iterator[LaneView]:
        """Run one job: the engine lane if the model is idle (or the request cannot batch), else the batch lane."""
        with self._cond:
            while True:
                alone = not self.on_engine and self.batched == 0
                if alone or not self._fits_batch(draft):
                    if not self.on_engine:
                        self.on_engine = True
                        batched = False
                        break
                    self._cond.wait()  # an MTP request (or one drafting too far to batch) waits for the engine
                    continue
                if self.scheduler is None:
                    self.scheduler = BatchScheduler(self.engine, self.n_parallel, exact=self.exact)
                self.batched += 1
                self.batched_total += 1
                batched = True
                break
            self.peak = max(self.peak, self.active)
        try:
            if batched:
                assert self.scheduler is not None
                yield LaneView(self.scheduler.client(draft), self.turns, True)
            else:
                if draft != self.engine.draft:
                    with self.turns:  # the engine's drafter is ours now, but keep the switch between steps anyway
                        self.engine.set_draft(draft)
                yield LaneView(self.engine, self.turns, False)
        finally:
            with self._cond:
                if batched:
                    self.batched -= 1
                else:
                    self.on_engine = False
                self._cond.notify_all()

    def wait_idle(self) -> None:
        """Block until no job runs here (a reload for another context size waits for this)."""
        with self._cond:
            while self.active:
                self._cond.wait()

    def close(self) -> None:
        """The scheduler first (its context lives on the engine's model), then the engine."""
        if self.scheduler is not None:
            scheduler, self.scheduler = self.scheduler, None
            scheduler.close()
        self.engine.close()
