"""One generation: the loop over decode steps, and turning each step into a streamed `Piece`.

A `Generation` holds everything that belongs to one sequence while it runs:
its history, sampler, draft controller, text stream and live statistics. The
`CacheSlot` is what outlives it: the KV cache the engine keeps between calls
and the tokens it holds, plus the flag that cancels the running generation.
Today the engine has one slot (llama.cpp sequence 0); multi-sequence
batching gives each generation its own slot and steps them together.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from gemma_cli.engine.adaptive import DraftController, timing_free_controller
from gemma_cli.engine.draft_length import DraftLengthController
from gemma_cli.engine.llama import Context, Model
from gemma_cli.engine.sampling import SamplingParams, TokenSampler
from gemma_cli.engine.speculative import Step, decode_steps
from gemma_cli.engine.textstream import TextStream
from gemma_cli.engine.types import GenerationResult, LiveStats, Piece, StopReason
from gemma_cli.errors import ContextFullError

if TYPE_CHECKING:  # pragma: no cover
    from gemma_cli.engine.generate import Engine


class CacheSlot:
    """One sequence's place in a context's KV memory: the tokens it holds and a cancel flag.

    `tokens` mirrors the KV: `ctx` holds exactly their positions once a
    generation has finished (`keep`). Thread and signal safe to `cancel`.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.tokens: list[int] = []  # tokens whose KV is in ctx (sequence 0)
        self._cancel = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the running generation to stop after the current step."""
        self._cancel.set()

    def start(self, prompt: Sequence[int]) -> tuple[list[int], list[int]]:
        """A generation begins: clear the cancel flag, keep the longest cached prefix.

        Returns (history, pending): the whole sequence so far, and the tokens
        still to evaluate. At least one stays pending, so the first pass yields logits.
        """
        self._cancel.clear()
        cached = self.tokens
        limit = min(len(cached), len(prompt) - 1)
        i = 0
        while i < limit and cached[i] == prompt[i]:
            i += 1
        self.ctx.trim(i)  # also drops anything an interrupted step left behind
        del cached[i:]
        return list(prompt), list(prompt[i:])

    def keep(self, history: Sequence[int]) -> None:
        """A generation ended: record which of its tokens the KV now holds."""
        self.tokens = list(history[: self.ctx.n_past])

    def clear(self) -> None:
        """Forget the KV cache (a new conversation)."""
        self.ctx.clear()
        self.tokens = []


class Emitter:
    """Turns each step's tokens into a `Piece`, and decides where the generation stops.

    It stops at an end-of-generation token (not emitted), a stop string (the
    text is cut before it) or `max_tokens`; `reason` says which, None while going on.
    """

    def __init__(self, model: Model, stop: Sequence[str], max_tokens: int, stats: LiveStats) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.stats = stats
        self.stream = TextStream(stop)
        self.tokens: list[int] = []
        self.texts: list[str] = []
        self.reason: StopReason | None = None

    def emit(self, step: Step) -> Piece | None:
        """The piece for one step's tokens (None when it has neither text nor tokens)."""
        model, stream, out = self.model, self.stream, self.tokens
        texts: list[str] = []
        n_tok = n_draft = draft_chars = 0
        for j, tok in enumerate(step.tokens):
            if model.is_eog(tok):
                self.reason = StopReason.EOS
                break
            out.append(tok)
            n_tok += 1
            texts.append(stream.feed(model.piece(tok)))
            if j < step.n_drafted:
                n_draft += 1
                draft_chars += len(texts[-1])
            if stream.stopped:
                self.reason = StopReason.STOP
                break
            if len(out) >= self.max_tokens:
                self.reason = StopReason.LENGTH
                break
        stats = self.stats
        stats.generated_tokens += n_tok
        stats.emitted_from_draft += n_draft
        stats.emitted_from_target += n_tok - n_draft
        text = "".join(texts)
        if not (text or n_tok):
            return None
        self.texts.append(text)
        return Piece(text, n_tok, n_draft, draft_chars)

    def flush(self) -> Piece | None:
        """Text the stream held back (a partial character, a possible stop-string prefix)."""
        tail = self.stream.flush()
        if not tail:
            return None
        self.texts.append(tail)
        return Piece(tail, 0, 0)

    @property
    def text(self) -> str:
        return "".join(self.texts)


@dataclass
class Handoff:
    """A generation stopped between two steps, to go on elsewhere (a batch: see BatchScheduler.adopt).

    `history` is empty when it had not started (then only the request moves);
    else the KV state holds history[:-1] and history[-1] is still to evaluate.
    The sampler (its per-position uniforms), emitter (text held back for stop
    strings) and live stats move with it, so the output goes on as if it had stayed.
    """

    prompt: list[int]
    history: list[int]
    kv_state: bytes
    sampling: SamplingParams
    sampler: TokenSampler | None
    emitter: Emitter | None
    stats: LiveStats
    max_tokens: int
    stop: list[str]


class Cancelled(Exception):
    """Raised between the chunks of a long prompt's decode when the generation was cancelled (`Generation._run`)."""


class Generation:
    """An in-progress generation: iterate for pieces; `stats` is live; `result` at the end.

    Nothing runs until the first piece is asked for: only then does it take
    the engine's slot (clearing a cancel request made before) and its drafter.
    """

    def __init__(self, engine: "Engine", tokens: list[int], max_tokens: int, sampling: SamplingParams, stop: Sequence[str]) -> None:
        self.engine = engine
        self.slot: CacheSlot = engine.slot
        self.prompt_tokens = tokens
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.stop = list(stop)
        d = engine.draft
        self.stats = LiveStats(draft_source=d.source, draft_max=0 if d.source == "none" else d.tokens, n_ctx=engine.n_ctx)
        self.result: GenerationResult | None = None
        self.history: list[int] = []  # the whole sequence: prompt, then every emitted token
        self.emitter: Emitter | None = None
        self._started = False
        # Called between the chunks of a long prompt, after the cancel check: `gemma serve` lets the other
        # requests on the model take their turn there (server/lanes.py). None: nothing.
        self.between_chunks: Callable[[], None] | None = None
        self._cancel_asked = False
        self._iter = self._run()

    def __iter__(self) -> Iterator[Piece]:
        return self._iter

    def __next__(self) -> Piece:
        return next(self._iter)

    def cancel(self) -> None:
        """Stop after the current step (or chunk of a long prompt); before the first step, at once."""
        self._cancel_asked = True  # taking the slot clears its flag: a cancel made before that is re-applied then
        self.slot.cancel()

    def text(self) -> str:
        """Run to the end and return the whole text."""
        for _ in self._iter:
            pass
        assert self.result is not None
        return self.result.text

    def detach(self) -> Handoff | None:
        """Stop here, between steps, and hand the rest over; None when it cannot move (finishing, cancelled).

        The engine keeps the KV of what ran (its cache for the next call), and
        the handoff carries a copy of this sequence's cells.
        """
        if self.result is not None or self.slot.cancelled:
            return None
        em = self.emitter
        if not self._started:
            self._iter.close()
            return Handoff(list(self.prompt_tokens), [], b"", self.sampling, None, None, self.stats, self.max_tokens, self.stop)
        if em is None or em.reason is not None or self.slot.ctx.n_past + 1 >= self.slot.ctx.n_ctx:
            return None
        if self.slot.ctx.n_past != len(self.history) - 1:
            return None  # not between two steps (cannot happen at a yield; kept as a guard)
        self._iter.close()  # runs _run's cleanup: the engine's cache keeps these tokens
        kv = self.slot.ctx.seq_state(0)
        return Handoff(list(self.prompt_tokens), list(self.history), kv, self.sampling, self.sampler, em, self.stats,
                       self.max_tokens, self.stop)

    def _start(self) -> Iterator[Step]:
        """Take the slot (reusing its cached prefix) and set up this sequence's sampler and controller."""
        eng, stats = self.engine, self.stats
        self.history, pending = self.slot.start(self.prompt_tokens)
        stats.prompt_tokens = len(self.prompt_tokens)
        stats.prompt_evaluated = len(pending)
        greedy = self.sampling.greedy
        k_max = 0 if eng.draft.source == "none" else eng.draft.tokens
        if eng.drafter.gives_confidences:  # k from the drafter's per-token confidences (draft_length.py)
            # Costs carry across generations, greedy ones too (and across processes: pass_cost_cache.py):
            # its unmeasured-size prior is cautious, so knowing the curve only helps (draft_length.py).
            self.controller: DraftController = DraftLengthController(
                k_max, adaptive=eng.draft.adaptive, costs=eng.costs, sampled=not greedy
            )
        elif not greedy and eng.drafter.samples_proposals:  # its random stream follows k: timing may not steer it
            self.controller = timing_free_controller(k_max, eng.draft.adaptive, eng.drafter.relative_cost)
        else:
            self.controller = DraftController(
                k_max,
                adaptive=eng.draft.adaptive,
                draft_cost=eng.drafter.relative_cost,
                costs=None if greedy else eng.costs,
                optimistic=greedy,
            )
        self.sampler = TokenSampler(self.sampling)
        return decode_steps(self.slot.ctx, self.history, pending, eng.drafter, self.controller, self.sampler, stats, eng.clock,
                            max_new=self.max_tokens)

    def _between_chunks(self) -> None:
        """Between two chunks of a long prompt: stop if cancelled (a client that went away must not hold the
        model for the rest of its prompt: 2,600 tokens were ~20 s on a 2-core CPU), else let others in."""
        if self.slot.cancelled:
            raise Cancelled
        if self.between_chunks is not None:
            self.between_chunks()
            if self.slot.cancelled:
                raise Cancelled

    def _run(self) -> Iterator[Piece]:
        stats, ctx = self.stats, self.slot.ctx
        self._started = True
        steps = self._start()
        if self._cancel_asked:  # cancelled while it waited (a model load, another request's turn): never decode
            self.slot.cancel()
        emitter = self.emitter = Emitter(self.engine.target, self.stop, self.max_tokens, stats)
        reason: StopReason | None = None
        try:
            ctx.between_chunks = self._between_chunks
            while reason is None:
                if self.slot.cancelled:
                    reason = StopReason.CANCELLED
                    break
                try:
                    step = next(steps)
                except (StopIteration, ContextFullError):
                    reason = StopReason.CONTEXT
                    break
                except Cancelled:  # between two chunks of the prompt: count what was evaluated, not all of it
                    stats.prompt_evaluated = max(ctx.n_past - (len(self.prompt_tokens) - stats.prompt_evaluated), 0)
                    reason = StopReason.CANCELLED
                    break
                if stats.target_passes == 1:
                    stats.prompt_eval_s = stats.ttft_s = time.perf_counter() - stats.started
                stats.n_past = ctx.n_past
                piece = emitter.emit(step)
                if piece is not None:
                    yield piece
                reason = emitter.reason or (StopReason.CONTEXT if ctx.n_past + 1 >= ctx.n_ctx else None)
        finally:
            ctx.between_chunks = None
            steps.close()
            self.slot.keep(self.history)
            stats.finished = time.perf_counter()
            if stats.target_passes and stats.ttft_s == 0.0:
                stats.ttft_s = stats.prompt_eval_s
        tail = emitter.flush()
        if tail is not None:
            yield tail
        self.result = GenerationResult(emitter.text, emitter.tokens, reason, stats)
