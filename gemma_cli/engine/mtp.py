"""Gemma 4 Multi-Token-Prediction drafting with a `gemma4-assistant` GGUF.

The assistant is not a standalone model. Every draft row is a token plus a
hidden state, and the assistant attends to the *target's* KV cache (its own
context is a view of the target's last SWA and full layers). So:

- the target context emits its post-norm hidden row for every batch row
  (`llama_set_embeddings_nextn(target, True, masked=False)`);
- after each verify pass, `after_verify` copies the row of the last accepted
  token (the token *before* the new pending one) straight into the MTP batch;
- a draft is `k` one-row decodes, all at position `target.n_past` (the
  pending token's position, one past what the target's KV holds), each fed
  the previous draft token and the assistant's own projected hidden state;
- rollback is the target's alone: the assistant never writes KV.

The llama.cpp side (the linked context, the non-stable `llama_cpp_ext`
symbols) lives in `llama/mtp_context.py`; this module is the drafting logic.
Hidden rows move through preallocated numpy views; a draft step allocates
nothing in Python except the proposal list.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gemma_cli.compat import check_mtp_pair
from gemma_cli.engine.llama import Context, Model, MTPContext
from gemma_cli.engine.sampling import Dist, TokenSampler
from gemma_cli.errors import IncompatibleModelsError


def check_pair(target_model: Model, assistant_model: Model) -> None:
    """Refuse a pair llama.cpp would abort on (header checks are cached: repeating the engine's is free)."""
    check_mtp_pair(target_model.path, assistant_model.path)
    if assistant_model.n_embd_out != target_model.n_embd:
        raise IncompatibleModelsError(
            f"{assistant_model.path.name} reads {assistant_model.n_embd_out}-wide hidden "
            f"states, but {target_model.path.name} produces {target_model.n_embd}-wide ones"
        )
    if assistant_model.n_vocab != target_model.n_vocab:
        raise IncompatibleModelsError(
            f"{assistant_model.path.name} and {target_model.path.name} have different vocabularies"
        )


class MTPDrafter:
    """Drafter protocol implementation for a Gemma 4 target + its MTP assistant."""

    name = "mtp"
    proposes_first = False  # each draft row is an assistant decode: choose k first
    last_key = None  # proposals are costly: k is decided before proposing, no per-class record
    gives_confidences = False  # k comes from the acceptance estimate and measured costs (adaptive.py)
    samples_proposals = True  # sampled generations use rejection sampling against the assistant's distributions
    catch_up_seconds = 0.0  # the assistant reads the target's KV: nothing to catch up on

    def __init__(self, target_model: Model, assistant_model: Model, target_ctx: Context) -> None:
        check_pair(target_model, assistant_model)
        self.target_model = target_model
        self.assistant = assistant_model
        # prior for the adaptive draft length: one draft row streams the assistant's weights once
        self.relative_cost = assistant_model.size_bytes / max(target_model.size_bytes, 1)
        self.target_ctx = target_ctx
        self.mtp: MTPContext | None = None
        self._ready = False  # h_in holds the hidden row for the pending token's predecessor

    def attach(self, target: Context) -> None:
        """Turn on the target's hidden rows and create the linked MTP context."""
        self.target_ctx = target
        target.set_hidden_rows(True)  # unmasked: one hidden row per batch row
        self.mtp = MTPContext(self.assistant, target)
        self._ready = False

    def begin(self, history: Sequence[int]) -> None:
        # A new generation may start after a KV trim: the row we hold may not
        # belong to the new pending token's predecessor. Wait for a verify pass.
        self._ready = False

    def propose(self, history: Sequence[int], k: int, sampler: TokenSampler) -> tuple[list[int], list[Dist] | None]:
        mtp = self.mtp
        if mtp is None or not self._ready or k <= 0 or not history:
            return [], None
        pos = self.target_ctx.n_past  # the pending token's position, one past the target's KV
        if pos != len(history) - 1:  # not in the state after_verify left: draft nothing
            return [], None
        tokens: list[int] = []
        dists: list[Dist] = []
        tok = history[-1]
        sample = sampler.sample
        for i in range(k):
            row = mtp.step(tok, pos)  # same position for every draft row (shared KV)
            tok, dist = sample(row)
            tokens.append(tok)
            if dist is not None:
                dists.append(dist)
            if i + 1 < k:
                mtp.feed_back()
        self._ready = False  # h_in now holds draft state; the next verify refreshes it
        return tokens, (dists if dists else None)

    def after_verify(self, target: Context, row: int) -> None:
        """Copy the target's hidden row `row` (the new pending token's predecessor) into the MTP input."""
        if self.mtp is None:
            return
        rows = target.hidden_rows()
        if not 0 <= row < target.last_batch_len:
            self._ready = False
            return
        self.mtp.h_in[:] = rows[row]
        self._ready = True

    def close(self) -> None:
        if self.mtp is not None:
            self.mtp.close()
            self.mtp = None
        ctx = self.target_ctx
        if ctx is not None and getattr(ctx, "ptr", None):
            # plain decoding again: stop computing hidden rows for every batch row
            ctx.set_hidden_rows(False)


class MTPSlots:
    """One assistant context drafting for every sequence of a multi-sequence target (batch.py's slots).

    Each draft step is one assistant decode with a row per slot still
    drafting (llama.cpp's `draft-mtp` does the same for llama-server's
    slots), so four slots drafting three tokens cost three small decodes, not
    twelve. Each slot keeps its own hidden row and sampler (`MTPSlotDrafter`);
    rows leave the batch as their slots reach their draft length.
    """

    def __init__(self, target_model: Model, assistant_model: Model, target_ctx: Context, n_slots: int) -> None:
        check_pair(target_model, assistant_model)
        self.relative_cost = assistant_model.size_bytes / max(target_model.size_bytes, 1)
        target_ctx.set_hidden_rows(True)  # unmasked: one hidden row per batch row
        self.mtp = MTPContext(assistant_model, target_ctx, rows=n_slots)

    def drafter(self, seq: int) -> "MTPSlotDrafter":
        return MTPSlotDrafter(self, seq)

    def propose_many(
        self, jobs: Sequence[tuple["MTPSlotDrafter", Sequence[int], int, TokenSampler]]
    ) -> list[tuple[list[int], list[Dist] | None]]:
        """Drafts for (drafter, history, k, sampler) jobs, all slots' step i in one decode.

        A slot's rows sit at its pending token's position, len(history) - 1
        (the scheduler keeps history[:-1] in that sequence's KV).
        """
        out: list[tuple[list[int], list[Dist]]] = [([], []) for _ in jobs]
        live = [j for j, (d, hist, k, _) in enumerate(jobs) if d.ready and k > 0 and hist]
        mtp = self.mtp
        if mtp is None or not live:
            return [(t, None) for t, _ in out]
        for row, j in enumerate(live):
            mtp.h_rows[row] = jobs[j][0].h
        toks = [jobs[j][1][-1] for j in live]
        pos = [len(jobs[j][1]) - 1 for j in live]
        seqs = [jobs[j][0].seq for j in live]
        while live:
            logits = mtp.step_rows(toks, pos, seqs)
            keep: list[int] = []
            for row, j in enumerate(live):
                drafter, _, k, sampler = jobs[j]
                drafter.ready = False  # its row now holds draft state; the next verify refreshes it
                tok, dist = sampler.sample(logits[row])
                tokens, dists = out[j]
                tokens.append(tok)
                if dist is not None:
                    dists.append(dist)
                if len(tokens) < k:
                    keep.append(row)
                    toks[row] = tok
            if keep:
                mtp.feed_back_rows(keep)
            live = [live[r] for r in keep]
            toks, pos, seqs = [toks[r] for r in keep], [pos[r] for r in keep], [seqs[r] for r in keep]
        return [(t, d or None) for t, d in out]

    def close(self) -> None:
        if self.mtp is not None:
            self.mtp.close()
            self.mtp = None


class MTPSlotDrafter:
    """The Drafter protocol for one slot of `MTPSlots`: its hidden row, filled after each verify."""

    name = "mtp"
    proposes_first = False
    last_key = None
    gives_confidences = False
    samples_proposals = True
    catch_up_seconds = 0.0

    def __init__(self, group: MTPSlots, seq: int) -> None:
        self.group = group
        self.seq = seq
        self.relative_cost = group.relative_cost
        self.h = np.zeros(group.mtp.n_embd_in if group.mtp else 0, dtype=np.float32)
        self.ready = False

    def attach(self, target: Context) -> None:
        pass

    def begin(self, history: Sequence[int]) -> None:
        self.ready = False  # wait for a verify pass to give the pending token's predecessor row

    def propose(self, history: Sequence[int], k: int, sampler: TokenSampler) -> tuple[list[int], list[Dist] | None]:
        return self.group.propose_many([(self, history, k, sampler)])[0]

    def after_verify(self, target: Context, row: int) -> None:
        if not 0 <= row < target.last_batch_len:
            self.ready = False
            return
        self.h[:] = target.hidden_rows()[row]
        self.ready = True

    def close(self) -> None:
        self.ready = False
