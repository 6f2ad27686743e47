"""The heart: propose -> verify in one batched target pass -> accept -> roll back.

Plain decoding is the same loop with k = 0, so the baseline and the
speculative path share every line that could make them differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from gemma_cli.engine.adaptive import DraftController
from gemma_cli.engine.clock import step_clock
from gemma_cli.engine.drafters import Drafter
from gemma_cli.engine.llama import Context
from gemma_cli.engine.sampling import Dist, SamplingParams, accept_draft, draw, residual, warp
from gemma_cli.engine.types import LiveStats


class TokenSampler:
    """The user's sampling settings plus the seeded RNG every draw comes from."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.greedy = params.greedy
        self.rng = np.random.default_rng(params.seed)

    def sample(self, logits: np.ndarray) -> tuple[int, Dist | None]:
        """One token from a logits row; greedy returns no distribution."""
        if self.greedy:
            return int(logits.argmax()), None
        dist = warp(logits, self.params)
        return draw(dist, self.rng), dist


@dataclass
class Step:
    """What one target pass produced: tokens to emit, of which `n_drafted` came from the draft."""

    tokens: list[int]
    n_drafted: int


def verify(
    rows: np.ndarray, draft: Sequence[int], draft_dists: list[Dist] | None, sampler: TokenSampler
) -> tuple[int, int]:
    """Accept a prefix of `draft` against the target's rows; return (n_accepted, next_token).

    Row i holds the target's logits for the position of draft[i]; the row
    after the last accepted draft yields the correction (or bonus) token.
    Greedy: accept while the draft equals the target's argmax. Sampling:
    rejection sampling, with the residual distribution after a rejection.
    """
    if sampler.greedy:  # one vectorised argmax over all rows: drafts are mostly accepted
        top = rows[: len(draft) + 1].argmax(axis=1).tolist()
        for i, d in enumerate(draft):
            if top[i] != d:
                return i, top[i]
        return len(draft), top[len(draft)]
    rng = sampler.rng
    for i, d in enumerate(draft):
        target = warp(rows[i], sampler.params)
        q = draft_dists[i] if draft_dists is not None else None
        if not accept_draft(target, q, d, rng):
            return i, draw(residual(target, q, d), rng)
    return len(draft), draw(warp(rows[len(draft)], sampler.params), rng)


def decode_steps(
    target: Context,
    history: list[int],
    pending: list[int],
    drafter: Drafter,
    controller: DraftController,
    sampler: TokenSampler,
    stats: LiveStats,
) -> Iterator[Step]:
    """Generate forever (the caller stops iterating); `history` grows in place.

    `history` = every token of the sequence; the target's KV holds
    history[:target.n_past]; `pending` are the tokens still to evaluate
    (the prompt suffix at first, then the last emitted token).
    """
    drafter.begin(history)
    while True:
        room = target.n_ctx - target.n_past - len(pending)
        if room < 0:
            return
        t0 = step_clock()
        key = None
        if drafter.relative_cost == 0.0 and room > 0:  # free proposals: look first, then decide
            draft, dists = drafter.propose(history, min(controller.k_max, room), sampler)
            key = drafter.last_key if draft else None
            k = min(controller.next_k(key), len(draft)) if draft else controller.next_k()
            draft = draft[:k]
        else:
            k = min(controller.next_k(), room)
            draft, dists = drafter.propose(history, k, sampler) if k > 0 else ([], None)
            draft = draft[:k]
        t1 = step_clock()
        target.decode(pending + draft, n_outputs=len(draft) + 1)
        n_acc, nxt = verify(target.logits(), draft, dists, sampler)
        t2 = step_clock()
        kept = target.n_past - len(draft) + n_acc  # drop the rejected drafts' KV
        target.trim(kept)
        drafter.after_verify(target, target.last_batch_len - 1 - (len(draft) - n_acc))
        if len(pending) == 1:  # prompt evaluation would skew the per-step costs
            controller.record(len(draft), n_acc, len(draft) + 1, t2 - t1, t1 - t0, key)
            stats.step_seconds += t2 - t0
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
