"""Several requests on one loaded model: the engine when a request is alone, shared batches when it is not.

A request that arrives while nothing else runs on its model takes the
*engine lane*: the single-sequence engine exactly as with one slot (its KV
reuse across chat turns, its draft-length controller, its n-gram memory, MTP),
so one client pays nothing for batching. A request that arrives while others
run takes the *batch lane*: a slot in the model's `BatchScheduler` (created on
first need, closed before the engine), decoded in shared batches with the
other batch-lane requests (MTP ones too: the assistant drafts for every
slot in one decode per draft step, `mtp.MTPSlots`). A request drafting more
tokens than the batch has rows for takes the engine lane and waits for it.

The two lanes never decode at once: every step of either (one engine pass,
or one batched step) runs under the model's `TurnLock`, a FIFO lock, so an
engine request and the batch alternate step by step instead of fighting for
the cores (or the GPU), and neither starves the other.

Alternating is the slow way to share: the engine's one-row passes and the
batch's decodes then add up instead of merging (on this 2-core CPU a decode of 4 rows
costs ~2.8 one-row decodes: an engine request next to three batched ones
wins little). So a batchable engine-lane request *moves into
the batch* at its next step once another request has joined the batch lane
(`EngineRun`): its KV cells are copied into a scheduler slot (exact), and its
sampler, text stream and stats go with it (`Generation.detach`,
`BatchScheduler.adopt`). Sampled requests whose drafter samples its
proposals (their random stream follows the draft lengths), and every request
in exact mode (GEMMA_BATCH_EXACT=1: see `can_move`) stay.

The scheduler's context holds one n_ctx KV stream per slot next to the
engine's own, so before creating it the lanes check what memory is left
(`memory.batch_slots_that_fit`): if fewer slots fit, the scheduler gets those;
if fewer than two, batching is off for this model (requests take the engine
lane one at a time, as with GEMMA_NUM_PARALLEL=1). Either way one line says so.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
from typing import Any, Callable, Iterator

from gemma_cli.engine.batch import BatchScheduler


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

    def pause(self) -> None:
        """Held: let everyone waiting now take a turn, then hold it again; nothing when no one waits."""
        with self._lock:
            if not self._waiters:
                return
        self.release()
        self.acquire()

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


class EngineRun:
    """An engine-lane generation that moves into the batch, between two steps, once others share batches."""

    def __init__(self, generation: Any, view: "LaneView") -> None:
        self._generation = generation
        self._view = view
        self._moved: Any = None  # the BatchGeneration it goes on as

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        view = self._view
        with view.lanes.turns:
            if self._moved is None and view.lanes.batched and not view.cancelled:
                self._move()
            return next(self._moved if self._moved is not None else self._generation)

    def _move(self) -> None:
        view = self._view
        moved = view.lanes.move_to_batch(view, self._generation.detach)
        if moved is None:  # no room, or finishing or cancelled: it goes on (or ends) on the engine
            return
        client, handoff = moved
        self._moved = client.adopt(handoff)
        view.target = client

    @property
    def generation(self) -> Any:
        return self._moved if self._moved is not None else self._generation

    def cancel(self) -> None:
        self.generation.cancel()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generation, name)


class LaneView:
    """What a job sees instead of the engine: the engine's (or a BatchClient's) calls; `generate` takes turns."""

    def __init__(self, lanes: "Lanes", target: Any, draft: Any, batched: bool) -> None:
        self.lanes = lanes
        self.target = target
        self.draft = draft
        self.batched = batched
        self.cancelled = False
        self._run: EngineRun | None = None
        self._generation: Any = None

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        generation = self.target.generate(*args, **kwargs)
        if not self.batched:  # a long prompt is one engine step: the batch lane takes turns between its chunks
            generation.between_chunks = self.lanes.turns.pause
            self._generation = generation  # a cancel goes to it: one made before it starts must hold (Generation.cancel)
        if self.batched or not self.lanes.can_move(self.draft, kwargs.get("sampling")):
            return TurnTaking(generation, self.lanes.turns)
        self._run = EngineRun(generation, self)
        return self._run

    def cancel(self) -> None:
        self.cancelled = True
        if self._run is not None:
            self._run.cancel()
        elif self._generation is not None:
            self._generation.cancel()
        else:
            self.target.cancel()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


class Lanes:
    """One loaded engine's lanes: who runs where, and the batch scheduler behind the batch lane."""

    def __init__(self, engine: Any, n_parallel: int, exact: bool, *, name: str = "model",
                 log: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.n_parallel = n_parallel
        self.exact = exact
        self.name = name
        self.log = log or _stderr
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
        return self.n_parallel > 1 and self.n_parallel * (draft.tokens + 1) <= n_batch

    def can_move(self, draft: Any, sampling: Any) -> bool:
        """Whether an engine-lane request may move into the batch: it fits, not a sampled one whose
        drafter samples proposals (its random stream follows its draft lengths, which would change), and
        only into the fast mode's unified pool (llama.cpp loads a sequence's cells only into a context with
        as many KV streams as the one they came from; the exact mode has one per slot)."""
        greedy = sampling is None or sampling.greedy
        return not self.exact and self._fits_batch(draft) and (greedy or not self.engine.drafter.samples_proposals)

    def move_to_batch(self, view: LaneView, detach: Callable[[], Any]) -> tuple[Any, Any] | None:
        """Move `view`'s job from the engine lane into the batch: (its BatchClient, `detach()`'s handoff),
        or None when there is no room or the generation cannot move (then it stays on the engine)."""
        with self._cond:
            if not self.on_engine or self.scheduler is None or self.batched >= self.n_parallel:
                return None
            handoff = detach()
            if handoff is None:
                return None
            self.on_engine = False
            self.batched += 1
            self.batched_total += 1
            view.batched = True
            self._cond.notify_all()  # a request waiting for the engine (drafting too far to batch) may take it now
            return self.scheduler.client(view.draft), handoff

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
                    self._cond.wait()  # a request drafting too far to batch waits for the engine
                    continue
                if self.scheduler is None:
                    self.scheduler = self._new_scheduler()
                    if self.scheduler is None:
                        continue  # too little memory to batch: this request takes the engine lane when free
                self.batched += 1
                self.batched_total += 1
                batched = True
                break
            self.peak = max(self.peak, self.active)
        view: LaneView | None = None
        try:
            if batched:
                assert self.scheduler is not None
                view = LaneView(self, self.scheduler.client(draft), draft, True)
            else:
                if draft != self.engine.draft:
                    with self.turns:  # the engine's drafter is ours now, but keep the switch between steps anyway
                        self.engine.set_draft(draft)
                view = LaneView(self, self.engine, draft, False)
            yield view
        finally:
            with self._cond:
                if view.batched if view is not None else batched:
                    self.batched -= 1
                else:
                    self.on_engine = False
                self._cond.notify_all()

    def _new_scheduler(self) -> BatchScheduler | None:
        """The batch scheduler with as many of `n_parallel` slots as memory holds; None (and batching
        off from now on: `n_parallel` = 1) when fewer than two do. Not checked with RPC workers."""
        from gemma_cli.engine.generate import gpu_offload
        from gemma_cli.memory import batch_slots_that_fit

        eng = self.engine
        if not eng.config.rpc:
            gpu_layers, gpu_free = gpu_offload(eng.config.n_gpu_layers)
            fit = batch_slots_that_fit(eng.target.path, eng.n_ctx, self.n_parallel, n_batch=eng.ctx.n_batch,
                                       gpu_layers=gpu_layers, gpu_free=gpu_free)
            if fit.slots < self.n_parallel:
                self.n_parallel = fit.slots if fit.slots >= 2 else 1
                then = f"batching {self.n_parallel} requests" if self.n_parallel > 1 else "requests run one at a time"
                self.log(f"{self.name}: only {fit.summary()}: {then} (lower GEMMA_NUM_PARALLEL or the context size; "
                         f"GEMMA_SKIP_MEMORY_CHECK=1 skips this check)")
        if self.n_parallel < 2:
            return None
        return BatchScheduler(eng, self.n_parallel, exact=self.exact)

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


def _stderr(line: str) -> None:
    sys.stderr.write(f"gemma serve: {line}\n")
    sys.stderr.flush()
