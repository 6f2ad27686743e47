"""The heart: propose -> verify in one batched target pass -> accept -> roll back.

Plain decoding is the same loop with k = 0, so the baseline and the
speculative path share every line that could make them differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from gemma_cli.engine.adaptive import DraftController
from gemma_cli.engine.clock import step_clock
from gemma_cli.engine.drafters import Drafter
from gemma_cli.engine.llama import Context
from gemma_cli.engine.sampling import Dist, TokenSampler, accept_draft, draw, residual, warp
from gemma_cli.engine.types import LiveStats


@dataclass
class Step:
    """What one target pass produced: tokens to emit, of which `n_drafted` came from the draft."""

    tokens: list[int]
    n_drafted: int


def verify(
    rows: np.ndarray, draft: Sequence[int], draft_dists: list[Dist] | None, sampler: TokenSampler, position: int
) -> tuple[int, int]:
    """Accept a prefix of `draft` against the target's rows; return (n_accepted, next_token).

    Row i holds the target's logits for output `position + i`; the row after
    the last accepted draft yields the correction (or bonus) token.

    Deterministic drafts (n-gram; any draft when greedy): the target draws
    its own token at every position, with that position's fixed uniform, and
    accepts while it equals the draft. That is Leviathan et al.'s rule for a
    one-hot proposal (accept with probability p(d), else draw from p without
    d), and more: the output is token for token what plain decoding with the
    same seed produces. Sampled drafts (a drafter model): rejection sampling
    against the draft distributions, with the residual after a rejection.
    """
    n = len(draft)
    if sampler.greedy:  # one vectorised argmax over all rows: drafts are mostly accepted
        top = rows[: n + 1].argmax(axis=1).tolist()
        for i, d in enumerate(draft):
            if top[i] != d:
                return i, top[i]
        return n, top[n]
    if draft_dists is None:
        for i, d in enumerate(draft):
            tok = sampler.sample_at(rows[i], position + i)
            if tok != d:
                return i, tok
        return n, sampler.sample_at(rows[n], position + n)
    rng = sampler.rng
    for i, d in enumerate(draft):
        target = warp(rows[i], sampler.params)
        if not accept_draft(target, draft_dists[i], d, rng):
            return i, draw(residual(target, draft_dists[i], d), rng)
    return n, sampler.sample_at(rows[n], position + n)


def decode_steps(
    target: Context,
    history: list[int],
    pending: list[int],
    drafter: Drafter,
    controller: DraftController,
    sampler: TokenSampler,
    stats: LiveStats,
    clock: Callable[[], float] = step_clock,
    max_new: int | None = None,
) -> Iterator[Step]:
    """Generate until the context is full (the caller stops iterating); `history` grows in place.

    `history` = every token of the sequence; the target's KV holds
    history[:target.n_past]; `pending` are the tokens still to evaluate
    (the prompt suffix at first, then the last emitted token). `clock`
    times the steps the controller learns from (clock.py). `max_new`: the
    most tokens the caller will take; no draft reaches past them (a step
    emits its accepted drafts and one more), as rows past the end are paid
    for and thrown away.
    """
    drafter.begin(history)
    n_prompt = len(history)
    look_first = drafter.proposes_first
    while True:
        room = target.n_ctx - target.n_past - len(pending)
        if room < 0:
            return
        if max_new is not None:
            room = min(room, max_new - (len(history) - n_prompt) - 1)
        t0 = clock()
        key = None
        if look_first and room > 0:  # free proposals: look first, then decide
            draft, dists = drafter.propose(history, min(controller.k_max, room), sampler)
            key = drafter.last_key if draft else None
            k = min(controller.next_k(key), len(draft)) if draft else controller.next_k()
            draft = draft[:k]
        else:
            k = max(min(controller.next_k(), room), 0)
            draft, dists = drafter.propose(history, k, sampler) if k > 0 else ([], None)
            draft = draft[:k]
        t1 = clock()
        target.decode(pending + draft, n_outputs=len(draft) + 1)
        n_acc, nxt = verify(target.logits(), draft, dists, sampler, len(history) - n_prompt)
        t2 = clock()
        kept = target.n_past - len(draft) + n_acc  # drop the rejected drafts' KV
        target.trim(kept)
        drafter.after_verify(target, target.last_batch_len - 1 - (len(draft) - n_acc))
        if len(pending) == 1:  # prompt evaluation would skew the per-step costs
            # A drafter's prompt prefill is a one-off: charged per drafted token it would lock drafting out.
            controller.record(proposed=len(draft), accepted=n_acc, batch=len(draft) + 1,
                              verify_s=t2 - t1, draft_s=t1 - t0 - drafter.catch_up_seconds, key=key)
            stats.step_seconds += t2 - t0
            if draft:
                stats.draft_steps += 1
            else:  # this generation's own plain steps are the speedup estimate's baseline
                stats.plain_steps += 1
                stats.plain_step_seconds += t2 - t0
        stats.draft_proposed += len(draft)
        stats.draft_accepted += n_acc
        stats.target_passes += 1
        stats.draft_seconds += t1 - t0
        stats.single_pass_seconds = controller.single_pass_seconds
        emitted = draft[:n_acc]
        emitted.append(nxt)
        history.extend(emitted)
        pending = [nxt]
        yield Step(emitted, n_acc)
