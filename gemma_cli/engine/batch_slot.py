"""One request inside the batch scheduler: its sequence, drafter, sampler, stop rules and output queue.

`BatchGeneration` is what `BatchScheduler.submit` returns: it iterates like
an engine `Generation` (pieces, live `stats`, `result` at the end, `cancel`),
and asking it for a piece when none is queued runs one batched step for
every request (see batch.py), so any thread reading any request keeps them all going.
`BatchClient` is the engine-like view one server job uses instead of the `Engine`.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Iterator, Sequence

from gemma_cli.engine.adaptive import DraftController
from gemma_cli.engine.batch_budget import Acceptance
from gemma_cli.engine.drafters import Drafter
from gemma_cli.engine.generation import Emitter, Handoff
from gemma_cli.engine.llama import Model
from gemma_cli.engine.sampling import Dist, SamplingParams, TokenSampler
from gemma_cli.engine.speculative import Step
from gemma_cli.engine.types import GenerationResult, LiveStats, Piece, StopReason

if TYPE_CHECKING:  # pragma: no cover
    from gemma_cli.engine.batch import BatchScheduler
    from gemma_cli.engine.generate import DraftConfig


class SlotState:
    """Per-sequence decoding state. The KV of sequence `seq` holds history[:n_past]; `pending` is still to evaluate."""

    def __init__(
        self,
        model: Model,
        prompt: list[int],
        *,
        max_tokens: int,
        sampling: SamplingParams,
        stop: Sequence[str],
        drafter: Drafter,
        k_max: int,
        adaptive: bool,
        n_ctx: int,
        draft_source: str,
        resume: Handoff | None = None,
    ) -> None:
        self.seq = -1  # llama.cpp sequence id, assigned when the slot is admitted
        self.prompt = prompt
        self.history: list[int] = list(resume.history if resume and resume.history else prompt)
        self.pending: list[int] = self.history[-1:] if resume and resume.history else list(prompt)
        self.n_past = 0
        self.kv_state = resume.kv_state if resume and resume.history else b""  # loaded into `seq` on admission
        self.n_ctx = n_ctx
        self.drafter = drafter
        self.draft_source = draft_source
        self.k_max = k_max
        self.adaptive = adaptive
        self.sampler = resume.sampler if resume and resume.sampler else TokenSampler(sampling)
        # A drafter that samples its proposals draws more random numbers as k varies: then k must be what
        # the engine would choose alone, from this slot's own history, never from the batch's timing
        # (set on admission, when the slot gets its drafter: adaptive.timing_free_controller).
        self.controller: DraftController | None = None
        self.acceptance = Acceptance()
        self.draft_cost: float | None = None  # measured seconds per drafted token (costly drafters)
        self.since_draft = 0  # steps without drafting (probing; a slot with a `controller` probes by its rules)
        self.k = 0  # this step's chosen draft length
        if resume is not None:  # a generation moved here from the engine goes on with its own stats and text stream
            self.stats = resume.stats
            self.emitter = resume.emitter or Emitter(model, stop, max_tokens, self.stats)
        else:
            self.stats = LiveStats(draft_source=draft_source, draft_max=k_max, n_ctx=n_ctx)
            self.emitter = Emitter(model, stop, max_tokens, self.stats)
        self.stats.prompt_tokens = len(prompt)
        self.cancel_flag = threading.Event()
        self.out: collections.deque[Piece] = collections.deque()
        self.done = False
        self.result: GenerationResult | None = None
        # this step's plan
        self.draft: list[int] = []
        self.dists: list[Dist] | None = None
        self.key: object = None
        self.proposal: list[int] = []  # a free proposal the budget did not use (checked afterwards)

    @property
    def n_generated(self) -> int:
        return len(self.history) - len(self.prompt)

    def accept(self, n_acc: int, nxt: int) -> StopReason | None:
        """Apply one verified step: extend the history, emit its piece, say whether the slot ends."""
        emitted = self.draft[:n_acc]
        emitted.append(nxt)
        self.history.extend(emitted)
        self.pending = [nxt]
        stats = self.stats
        stats.target_passes += 1
        stats.draft_proposed += len(self.draft)
        stats.draft_accepted += n_acc
        if stats.target_passes == 1:
            stats.prompt_eval_s = stats.ttft_s = time.perf_counter() - stats.started
        stats.n_past = self.n_past
        piece = self.emitter.emit(Step(emitted, n_acc))
        if piece is not None:
            self.out.append(piece)
        return self.emitter.reason or (StopReason.CONTEXT if self.n_past + 1 >= self.n_ctx else None)

    def finish(self, reason: StopReason) -> None:
        """The slot ends: queue the held-back text and the result (the scheduler frees the KV)."""
        stats = self.stats
        stats.finished = time.perf_counter()
        if stats.target_passes and stats.ttft_s == 0.0:
            stats.ttft_s = stats.prompt_eval_s
        tail = self.emitter.flush()
        if tail is not None:
            self.out.append(tail)
        self.result = GenerationResult(self.emitter.text, self.emitter.tokens, reason, stats)
        self.done = True


class BatchGeneration:
    """A request running in a `BatchScheduler`: iterate for pieces; `stats` is live; `result` at the end."""

    def __init__(self, scheduler: "BatchScheduler", slot: SlotState) -> None:
        self._scheduler = scheduler
        self._slot = slot
        self.stats = slot.stats
        self.prompt_tokens = slot.prompt

    @property
    def result(self) -> GenerationResult | None:
        return self._slot.result

    def __iter__(self) -> Iterator[Piece]:
        return self

    def __next__(self) -> Piece:
        slot = self._slot
        while True:
            if slot.out:
                return slot.out.popleft()
            if slot.done:
                raise StopIteration
            self._scheduler.drive(slot)

    def cancel(self) -> None:
        """Stop this request after the current step; the others go on untouched."""
        self._slot.cancel_flag.set()

    def text(self) -> str:
        """Run to the end and return the whole text."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result.text


class BatchClient:
    """What one server job sees instead of the `Engine`: the same calls, its own cancel.

    `generate` submits to the scheduler; `cancel` stops only this client's
    generation. Several clients may iterate from different threads at once:
    whichever needs a piece runs the next batched step under the scheduler's lock.
    """

    def __init__(self, scheduler: "BatchScheduler", draft: "DraftConfig | None" = None) -> None:
        self.scheduler = scheduler
        self.engine = scheduler.engine
        self.draft = draft or scheduler.engine.draft  # this client's draft source (the engine's own is left alone)
        self._gen: "BatchGeneration | None" = None

    @property
    def n_ctx(self) -> int:
        return self.scheduler.n_ctx

    @property
    def chat_stops(self) -> tuple[str, ...]:
        return self.engine.chat_stops

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return self.engine.tokenize(text, add_special=add_special)

    def chat_tokens(self, messages, *, add_generation_prompt: bool = True) -> list[int]:  # type: ignore[no-untyped-def]
        return self.engine.chat_tokens(messages, add_generation_prompt=add_generation_prompt)

    def prompt_tokens(self, text: str, *, system: str | None = None, raw: bool = False) -> list[int]:
        return self.engine.prompt_tokens(text, system=system, raw=raw)

    def generate(self, prompt: str | Sequence[int], *, max_tokens: int = 512,
                 sampling: SamplingParams = SamplingParams(), stop: Sequence[str] = ()) -> "BatchGeneration":
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        self._gen = self.scheduler.submit(tokens, max_tokens=max_tokens, sampling=sampling, stop=stop, draft=self.draft)
        return self._gen

    def adopt(self, handoff: Handoff) -> "BatchGeneration":
        """Go on with a generation the engine started (`Generation.detach`), in this client's slot."""
        self._gen = self.scheduler.adopt(handoff, self.draft)
        return self._gen

    def cancel(self) -> None:
        if self._gen is not None:
            self._gen.cancel()
