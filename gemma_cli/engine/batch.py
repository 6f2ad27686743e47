"""Several requests decode together: one llama.cpp context, one sequence per slot, one decode per step.

Each step builds one batch holding every decoding slot's pending token plus
its draft (lengths chosen together, see batch_budget.py) and at most one
chunk of a waiting prompt, runs one decode, then verifies each slot with
`speculative.verify` and trims that slot's rejected KV cells. Requests join
between steps and leave the moment they finish (continuous batching); a long
prompt is evaluated in PREFILL_CHUNK pieces while others decode, so it does
not stall them. A new prompt sharing a prefix with a running slot's cached
tokens gets a copy of those cells (`llama_memory_seq_cp`) instead of evaluating them.

Losslessness per slot holds for the same reason it does alone: the target's
token at each output position depends only on that sequence's logits and
the slot's own seed (`TokenSampler`), never on the draft lengths; a slot
whose drafter samples its proposals (sampled generation with a drafter
model or MTP: its random stream follows its draft lengths) gets k from the
engine's own controller for such a generation, fed by its own history alone
(`adaptive.timing_free_controller`), so it drafts what it drafts alone on the
engine. Gemma 4 MTP slots draft together:
one assistant context linked to the scheduler's, each draft step one decode
with a row per drafting slot (`mtp.MTPSlots`), fed each slot's hidden row
from its last verify. Which drafter a slot gets, and what outlives a
request, is batch_drafters.py's.

The scheduler has its own context on the engine's model (one KV stream of
n_ctx cells per slot); the engine's single-sequence path is untouched. Two
rules keep each slot's logits bit-identical to a solo run: a slot's cells sit
where they would alone (one stream each), and slots share a decode only up
to EXACT_ROWS rows (see there); prompt pieces decode on their own.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Sequence

import numpy as np

from gemma_cli import limits
from gemma_cli.engine.adaptive import timing_free_controller
from gemma_cli.engine.batch_budget import PROBE_EVERY, BatchCosts, Candidate, choose_lengths, split_groups
from gemma_cli.engine.batch_drafters import SlotDrafters
from gemma_cli.engine.batch_slot import BatchClient, BatchGeneration, SlotState
from gemma_cli.engine.generate import DraftConfig, Engine
from gemma_cli.engine.generation import Handoff
from gemma_cli.engine.llama import Context
from gemma_cli.engine.mtp import MTPSlots
from gemma_cli.engine.sampling import SamplingParams
from gemma_cli.engine.speculative import verify
from gemma_cli.engine.types import StopReason
from gemma_cli.errors import ContextFullError, UsageError

# Decodes of up to this many rows give every row logits bit-identical to a one-row decode of the
# same sequence (llama.cpp CPU kernels, Gemma 3 270M Q4_K_M, measured 2026-11-30 teacher-forced over
# 40 tokens: 1 slot x 1..7 rows and 4 slots x 1 row: error 0.0; 8 or 9 rows of one slot, 4 slots x
# 3 rows: up to 0.5-1.0 logit). Slots share a decode only within this cap, so batching others in
# never changes a slot's numerics (a slot's own k+1 rows beyond it are what it would decode alone)
# while its history holds at most 256 tokens: past that llama.cpp splits a one-row attention pass
# across threads and even 2 rows round differently (docs/batching.md, tests/test_engine.py).
EXACT_ROWS = 7
# With repacked CPU weights (GEMMA_CPU_REPACK=1) llama.cpp multiplies rows four at a time: decodes of up to 3
# rows stay bit-identical to one-row decodes, 4 rows move a logit by up to 1.8 (tests/test_engine.py).
EXACT_ROWS_REPACKED = 3
PREFILL_CHUNK = 128  # prompt tokens per step while other slots decode (~0.1-0.3 s on a 2-core CPU for the 270M)
MAX_PARALLEL = 64


def default_num_parallel(gpu: bool = False) -> int:
    """`GEMMA_NUM_PARALLEL`, else 4 on a CPU and 8 with GPU offload.

    On a CPU every output row pays the vocabulary projection, so a decode of
    4 slots with a few draft rows each is already past the cheap part of the
    cost curve; a GPU stays flat for longer.
    """
    raw = os.environ.get("GEMMA_NUM_PARALLEL", "").strip()
    if not raw:
        return 8 if gpu else 4
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_PARALLEL:
        raise UsageError(f"GEMMA_NUM_PARALLEL must be a whole number from 1 to {MAX_PARALLEL}, got {raw!r}")
    return n


class BatchScheduler:
    """Up to `n_slots` concurrent generations on `engine`'s model, decoded in shared batches."""

    def __init__(
        self, engine: Engine, n_slots: int | None = None, *, prefill_chunk: int = PREFILL_CHUNK, exact: bool = True
    ) -> None:
        """`exact=False` trades bit-identical per-slot logits for speed: one unified KV pool (outputs then
        equal solo runs only up to near-ties of ~0.15 logit). The EXACT_ROWS cap holds in both modes: through
        `gemma serve`, uncapped shared decodes of 8-16 rows moved a logit by 0.6 (a real divergence)."""
        self.engine = engine
        self.n_slots = n_slots or default_num_parallel(engine.config.n_gpu_layers > 0)
        limits.check_positive(self.n_slots, "number of parallel slots")
        self.n_ctx = engine.n_ctx  # per slot: what a request would have alone
        cfg = engine.config
        self.ctx = Context(engine.target, n_ctx=self.n_slots * self.n_ctx, n_batch=cfg.n_batch,
                           n_threads=cfg.n_threads, n_seq_max=self.n_slots, kv_unified=not exact)
        self.prefill_chunk = max(1, min(prefill_chunk, self.ctx.n_batch))
        # both modes: bigger shared decodes move logits by up to ~1 (not a near-tie)
        self.exact_rows = EXACT_ROWS_REPACKED if engine.target.cpu_repack else EXACT_ROWS
        self.costs = BatchCosts.from_curve(engine.costs.curve)  # the engine's measured passes (empty: optimistic)
        self.active: list[SlotState] = []
        self.waiting: collections.deque[SlotState] = collections.deque()
        self._free = list(range(self.n_slots))
        self._lock = threading.RLock()
        self._swa = engine.target.n_swa
        self.drafters = SlotDrafters(engine, self.ctx, self.n_slots, self.n_ctx)

    # -- requests --------------------------------------------------------------
    def submit(
        self,
        prompt: Sequence[int],
        *,
        max_tokens: int = 512,
        sampling: SamplingParams = SamplingParams(),
        stop: Sequence[str] = (),
        draft: DraftConfig | None = None,
        resume: Handoff | None = None,
    ) -> BatchGeneration:
        """Queue a request; it joins the batch at the next step with a free slot (`resume`: see `adopt`)."""
        sampling.validate()
        limits.check_max_tokens(max_tokens)
        draft = (draft or self.engine.draft).validate()
        if self.n_slots * (draft.tokens + 1) > self.ctx.n_batch:
            raise UsageError(f"{self.n_slots} slots drafting {draft.tokens} tokens need n_batch >= {self.n_slots * (draft.tokens + 1)}")
        tokens = list(prompt)
        if not tokens:
            raise UsageError("the prompt is empty")
        if len(tokens) >= self.n_ctx:
            raise ContextFullError(f"the prompt has {len(tokens)} tokens but the context holds {self.n_ctx}")
        with self._lock:
            self.drafters.check(draft)
        slot = SlotState(
            self.engine.target, tokens, max_tokens=max_tokens, sampling=sampling, stop=stop,
            drafter=_Deferred(draft), k_max=0 if draft.source == "none" else draft.tokens,
            adaptive=draft.adaptive, n_ctx=self.n_ctx, draft_source=draft.source, resume=resume,
        )
        with self._lock:
            self.waiting.append(slot)
        return BatchGeneration(self, slot)

    def adopt(self, handoff: Handoff, draft: DraftConfig | None = None) -> BatchGeneration:
        """Go on with a generation the engine started: its KV cells are copied into a slot (exact), its
        sampler, text stream and stats move with it, so its output is what it would have been there."""
        return self.submit(handoff.prompt, max_tokens=handoff.max_tokens, sampling=handoff.sampling, stop=handoff.stop,
                           draft=draft, resume=handoff)

    def client(self, draft: DraftConfig | None = None) -> "BatchClient":
        """An engine-like view for one request (what a server job calls; see BatchClient), drafting with `draft`."""
        return BatchClient(self, draft)

    def drive(self, slot: SlotState) -> None:
        """Run one step unless another thread produced `slot`'s next piece meanwhile."""
        with self._lock:
            if not slot.out and not slot.done:
                self.step()

    def run(self) -> None:
        """Step until every submitted request has finished."""
        while self.step():
            pass

    @property
    def busy(self) -> int:
        return len(self.active) + len(self.waiting)

    # -- one step --------------------------------------------------------------
    def step(self) -> bool:
        """Admit, decode one batch, verify every slot; False when nothing is left to run."""
        with self._lock:
            self._admit()
            for s in [s for s in self.active if s.cancel_flag.is_set()]:
                self._leave(s, StopReason.CANCELLED)
            if not self.active:
                return bool(self.waiting)
            self._run_batch()
            return True

    def _admit(self) -> None:
        deferred: list[SlotState] = []
        while self.waiting and self._free:
            slot = self.waiting.popleft()
            if slot.cancel_flag.is_set():
                slot.finish(StopReason.CANCELLED)
                continue
            config = slot.drafter.config  # type: ignore[attr-defined]
            if not self.drafters.can_link(config, cells_in_use=bool(self.active)):
                deferred.append(slot)  # its assistant context can only be linked while no slot holds cells
                continue
            slot.seq = self._free.pop(0)
            slot.drafter = self.drafters.get(config, slot.seq)
            if slot.drafter.samples_proposals and not slot.sampler.greedy:  # k as the engine would choose it alone
                slot.controller = timing_free_controller(slot.k_max, slot.adaptive, slot.drafter.relative_cost)
            slot.drafter.begin(slot.history)
            if slot.kv_state:  # moved from the engine: its cells as they were there
                self.ctx.load_seq_state(slot.seq, slot.kv_state)
                slot.n_past, slot.kv_state = len(slot.history) - 1, b""
            else:
                self._share_prefix(slot)
                slot.stats.prompt_evaluated = len(slot.pending)
            self.active.append(slot)
        self.waiting.extendleft(reversed(deferred))

    def _share_prefix(self, slot: SlotState) -> None:
        """Reuse a running slot's cells for the longest prefix this prompt shares with its cached tokens."""
        best, src = 0, None
        limit = len(slot.prompt) - 1  # the last prompt token stays pending: its row gives the first logits
        window = self._swa
        for other in self.active:
            cached = other.history[: other.n_past]
            n = 0
            top = min(limit, len(cached))
            while n < top and cached[n] == slot.prompt[n]:
                n += 1
            # Sliding-window layers: once a sequence is past its window, llama.cpp hands the cells that fell out
            # of it to any sequence's new tokens (find_slot), so the source may no longer hold cells the copy
            # needs (Gemma 4 tiny pair, window 16: copies gave first-token logits 0.2-0.75 off). Safe while the
            # source is inside its window, or has nothing past the shared prefix.
            if window and other.n_past >= window and other.n_past > n:
                continue
            if n > best:
                best, src = n, other
        if src is not None and best > 0:
            self.ctx.seq_copy(src.seq, slot.seq, best)
            slot.n_past = best
            slot.pending = slot.prompt[best:]

    def _leave(self, slot: SlotState, reason: StopReason) -> None:
        self.ctx.seq_trim(slot.seq, 0)  # free every cell this sequence held
        self.active.remove(slot)
        self.drafters.release(slot.drafter, slot.draft_source)
        self._free.append(slot.seq)
        slot.finish(reason)

    def _run_batch(self) -> None:
        decoding = [s for s in self.active if len(s.pending) == 1]
        used = sum(1 + s.k_max for s in decoding)  # rows their drafts may take at most
        budget = min(self.prefill_chunk if decoding else self.ctx.n_batch, self.ctx.n_batch - used)
        chunks: list[tuple[SlotState, int]] = []  # prompt pieces evaluated without outputs
        for s in self.active:
            if len(s.pending) == 1 or budget <= 0:
                continue
            if len(s.pending) + s.k_max <= budget:  # the prompt's last piece: an output row, drafts
                decoding.append(s)
                budget -= len(s.pending) + s.k_max
            else:
                n = min(budget, len(s.pending) - 1)  # keep one token for the piece with outputs
                chunks.append((s, n))
                budget -= n
        ready: list[SlotState] = []
        for s in decoding:
            if self.n_ctx - s.n_past - len(s.pending) < 0:
                self._leave(s, StopReason.CONTEXT)
            else:
                ready.append(s)
        self._plan_drafts(ready, sum(n for _, n in chunks))
        self._decode_and_verify(ready, chunks)

    def _plan_drafts(self, ready: list[SlotState], chunk_rows: int) -> None:
        """Each slot's draft for this step: free proposals first, one budget over the batch, then costly drafts."""
        joint: list[SlotState] = []
        cands: list[Candidate] = []
        for s in ready:
            s.draft, s.dists, s.key, s.proposal = [], None, None, []
            room = self.n_ctx - s.n_past - len(s.pending)
            left = s.emitter.max_tokens - len(s.emitter.tokens) - 1  # rows past the last wanted token are thrown away
            limit = min(s.k_max, room, left)
            if s.controller is not None:  # every step, as `speculative.decode_steps` asks the engine's controller
                s.k = max(min(s.controller.next_k(), limit), 0)
                continue
            if limit <= 0:
                continue
            if s.drafter.proposes_first:
                s.proposal, s.dists = s.drafter.propose(s.history, limit, s.sampler)
                # a drafter giving per-token confidences (n-gram: last_key) is judged by them, not by a key's record
                s.key = s.drafter.last_key if s.proposal and not s.drafter.gives_confidences else None
                limit = len(s.proposal)
                if not limit:
                    continue
            if not s.adaptive:
                s.k = limit
            else:
                joint.append(s)
                cost = 0.0 if s.drafter.proposes_first else s.draft_cost
                if cost is None:  # not measured yet: the drafter's prior, in plain decodes
                    cost = s.drafter.relative_cost * self.costs.time(1)
                confidences = tuple(s.drafter.last_key[:limit]) if s.proposal and s.drafter.gives_confidences else ()
                cands.append(Candidate(s.acceptance.rate(s.key), limit, cost, confidences))
                continue
            self._probe(s)
        extra = self.costs.time(1) * chunk_rows / max(self.ctx.n_batch, 1) if chunk_rows else 0.0
        for s, k in zip(joint, choose_lengths(cands, self.costs, extra, self.exact_rows), strict=True):
            s.k = k
            self._probe(s)
        costly: dict[object, list[SlotState]] = {}  # slots proposing now, by who drafts them (MTP slots together)
        for s in ready:
            k, s.k = s.k, 0
            if s.proposal:
                s.draft = s.proposal[:k]
            elif k > 0:
                s.k = k
                costly.setdefault(getattr(s.drafter, "group", s), []).append(s)
        for owner, slots in costly.items():
            t0 = self.engine.clock()
            if isinstance(owner, MTPSlots):
                drafts = owner.propose_many([(s.drafter, s.history, s.k, s.sampler) for s in slots])
            else:
                drafts = [s.drafter.propose(s.history, s.k, s.sampler) for s in slots]
            for s, (draft, dists) in zip(slots, drafts, strict=True):
                s.draft, s.dists, s.k = draft[: s.k], dists, 0
            per = (self.engine.clock() - t0) / max(sum(len(s.draft) for s in slots), 1)
            for s in slots:
                s.stats.draft_seconds += per * len(s.draft)
                if s.draft:  # a batched drafter's step is shared: each slot is charged its tokens' share
                    s.draft_cost = per if s.draft_cost is None else 0.85 * s.draft_cost + 0.15 * per

    @staticmethod
    def _probe(s: SlotState) -> None:
        """A costly drafter the budget stopped still tries one token every PROBE_EVERY steps."""
        if s.k > 0:
            s.since_draft = 0
            return
        s.since_draft += 1
        if not s.drafter.proposes_first and s.since_draft >= PROBE_EVERY:
            s.since_draft, s.k = 0, 1

    def _decode_and_verify(self, ready: list[SlotState], chunks: list[tuple[SlotState, int]]) -> None:
        """Decode the step's rows (in the groups the cost curve favours), verify each slot, trim its rejected cells."""
        decoding = [s for s in ready if len(s.pending) == 1]
        for group in split_groups([len(s.draft) + 1 for s in decoding], self.costs, self.exact_rows):
            self._decode_group([decoding[i] for i in group], [])
        # Prompt pieces get decodes of their own: llama.cpp's logits depend on a batch's shape (Gemma 3
        # 270M: the same 72-token prompt split 30+42 or 8+64 differs by ~1 logit), so a prompt evaluated
        # as it would be alone keeps the output as it would be alone.
        for s in ready:
            if len(s.pending) > 1:
                self._decode_group([s], [])
        for chunk in chunks:
            self._decode_group([], [chunk])

    def _decode_group(self, ready: list[SlotState], chunks: list[tuple[SlotState, int]]) -> None:
        toks: list[int] = []
        pos: list[int] = []
        seqs: list[int] = []
        outs: list[int] = []
        starts: list[int] = []
        for s in ready:
            rows = s.pending + s.draft
            starts.append(len(toks))
            toks += rows
            pos += range(s.n_past, s.n_past + len(rows))
            seqs += [s.seq] * len(rows)
            outs += [0] * (len(s.pending) - 1) + [1] * (len(s.draft) + 1)
        for s, n in chunks:
            toks += s.pending[:n]
            pos += range(s.n_past, s.n_past + n)
            seqs += [s.seq] * n
            outs += [0] * n
        if not toks:
            return
        t0 = self.engine.clock()  # the engine's step clock (EngineConfig.clock): what the draft budget learns from
        self.ctx.decode_rows(np.asarray(toks, np.int32), np.asarray(pos, np.int32), np.asarray(seqs, np.int32),
                             np.asarray(outs, np.int8))
        logits = self.ctx.logits() if ready else None
        dt = self.engine.clock() - t0
        if ready and not chunks and all(len(s.pending) == 1 for s in ready):
            self.costs.observe(sum(len(s.draft) + 1 for s in ready), dt)
        for s, n in chunks:
            s.n_past += n
            s.pending = s.pending[n:]
        row = 0
        for s, start in zip(ready, starts, strict=True):
            n_out = len(s.draft) + 1
            n_acc, nxt = verify(logits[row : row + n_out], s.draft, s.dists, s.sampler, s.n_generated)
            row += n_out
            prompt_step = len(s.pending) > 1
            s.n_past += len(s.pending) + n_acc  # the accepted drafts' cells stay, the rejected ones go
            if n_acc < len(s.draft):
                self.ctx.seq_trim(s.seq, s.n_past)
            s.drafter.after_verify(self.ctx, start + len(s.pending) - 1 + n_acc)
            if s.controller is not None:
                if not prompt_step:  # as `decode_steps` feeds the engine's (timing is off: the seconds are unused)
                    s.controller.record(proposed=len(s.draft), accepted=n_acc, batch=len(s.draft) + 1, verify_s=0.0, draft_s=0.0)
            elif s.draft:
                s.acceptance.record(len(s.draft), n_acc, s.key)
            elif s.proposal:  # a free proposal left out: was its first token right? (cost nothing to learn)
                s.acceptance.record(1, int(s.proposal[0] == nxt), s.key)
            if not prompt_step:
                s.stats.step_seconds += dt
                s.stats.single_pass_seconds = self.costs.time(1)
            reason = s.accept(n_acc, nxt)
            if reason is not None:
                self._leave(s, reason)

    def kv_positions(self) -> dict[int, int]:
        """Highest KV position per sequence id (-1: empty), for accounting checks."""
        return {seq: self.ctx.seq_pos_max(seq) for seq in range(self.n_slots)}

    def close(self) -> None:
        with self._lock:
            for s in list(self.active):
                self._leave(s, StopReason.CANCELLED)
            while self.waiting:
                self.waiting.popleft().finish(StopReason.CANCELLED)
            self.drafters.close()
            self.ctx.close()


class _Deferred:
    """Placeholder drafter until admission gives the slot a sequence id (drafter models are pooled per id)."""

    proposes_first = True
    samples_proposals = False
    relative_cost = 0.0
    last_key = None

    def __init__(self, config: DraftConfig) -> None:
        self.config = config
