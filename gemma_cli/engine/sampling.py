"""Sampling split into *warp* (logits -> distribution) and *draw*, plus the
lossless acceptance rules of speculative decoding.

Pure numpy, no llama.cpp: the maths is testable on four-element vectors.

A warped distribution is sparse: `Dist(ids, probs)` with ids sorted ascending,
probs summing to 1. Speculative verification compares the target's and the
drafter's distributions *after the same warp*, so rejection sampling is exact
for the distribution the user asked for (temperature, top-k, top-p, min-p).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gemma_cli.limits import is_greedy


@dataclass(frozen=True)
class SamplingParams:
    """What the user asked for. temperature 0 (or below limits.GREEDY_TEMPERATURE) means greedy (argmax)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return is_greedy(self.temperature)

    def validate(self) -> "SamplingParams":
        """Raise UsageError for values no sampler can honour (rules in `gemma_cli.limits`)."""
        from gemma_cli.limits import check_sampling

        check_sampling(self.temperature, self.top_k, self.top_p, self.min_p)
        return self


@dataclass(frozen=True)
class Dist:
    """A sparse probability distribution over token ids (ids ascending)."""

    ids: np.ndarray
    probs: np.ndarray

    def prob(self, token: int) -> float:
        i = int(np.searchsorted(self.ids, token))
        if i < len(self.ids) and self.ids[i] == token:
            return float(self.probs[i])
        return 0.0


def warp(logits: np.ndarray, params: SamplingParams) -> Dist:
    """Temperature, then top-k, top-p (nucleus) and min-p filters, renormalised."""
    n = logits.shape[0]
    if params.greedy:  # a tiny temperature would overflow logits / T: it means argmax
        return Dist(np.array([int(logits.argmax())], dtype=np.int64), np.ones(1))
    k = params.top_k if 0 < params.top_k < n else n
    if k < n:
        ids = top_k_ids(logits, k)
        z = logits[ids].astype(np.float64)
    else:
        ids = np.arange(n)
        z = logits.astype(np.float64)
    z = z / params.temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if params.top_p < 1.0 or params.min_p > 0.0:
        order = np.argsort(-p, kind="stable")
        ps = p[order]
        keep = len(ps)
        if params.top_p < 1.0:
            # smallest prefix whose mass reaches top_p (always at least one token)
            keep = min(keep, int(np.searchsorted(np.cumsum(ps), params.top_p)) + 1)
        if params.min_p > 0.0:
            keep = min(keep, max(1, int(np.count_nonzero(ps >= params.min_p * ps[0]))))
        sel = order[:keep]
        ids, p = ids[sel], p[sel]
        p = p / p.sum()
    srt = np.argsort(ids)
    return Dist(ids[srt].astype(np.int64), p[srt])


def top_k_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k largest logits, exactly, in no particular order.

    A full argpartition of a 262k-entry row costs ~2 ms, more than the
    target's own decode step on small models; the top k of a language model's
    row sit within a few logits of its maximum, so partition only the entries
    near the top, widening the window until it holds at least k of them.
    """
    n = logits.shape[0]
    if k >= n:
        return np.arange(n)
    top = float(logits.max())
    for margin in (8.0, 16.0, 32.0):
        near = np.flatnonzero(logits >= top - margin)
        if len(near) >= k:  # everything outside the window is smaller than everything in it
            return near[np.argpartition(logits[near], len(near) - k)[len(near) - k :]]
    return np.argpartition(logits, n - k)[n - k :]


def draw(dist: Dist, rng: np.random.Generator) -> int:
    """One categorical draw (inverse CDF; cheaper than rng.choice)."""
    return inverse_cdf(dist, rng.random())


def inverse_cdf(dist: Dist, u: float) -> int:
    """The token whose slice of [0, 1) (ids in ascending order) holds `u`.

    A fixed uniform per output position makes sampling a function of the
    logits and the seed alone: the coupling behind `speculative.verify`.
    """
    c = np.cumsum(dist.probs)
    i = int(np.searchsorted(c, u * c[-1], side="right"))
    return int(dist.ids[min(i, len(dist.ids) - 1)])


def residual(target: Dist, draft: Dist | None, rejected: int) -> Dist:
    """Normalised max(0, p_target - p_draft): where to sample after a rejection.

    `draft` None means a deterministic (one-hot) proposal of `rejected`.
    """
    if draft is None:
        q = (target.ids == rejected).astype(np.float64)
    else:
        pos = np.searchsorted(draft.ids, target.ids)
        pos = np.minimum(pos, len(draft.ids) - 1)
        q = np.where(draft.ids[pos] == target.ids, draft.probs[pos], 0.0)
    r = np.maximum(target.probs - q, 0.0)
    total = r.sum()
    if total <= 0.0:  # p_target == p_draft exactly: any draw from p_target is correct
        return target
    return Dist(target.ids, r / total)


def accept_draft(target: Dist, draft: Dist | None, token: int, rng: np.random.Generator) -> bool:
    """Leviathan et al.: accept with probability min(1, p_target(d) / p_draft(d))."""
    pt = target.prob(token)
    if pt <= 0.0:
        return False
    qd = 1.0 if draft is None else draft.prob(token)
    if qd <= pt:
        return True
    return rng.random() < pt / qd


class TokenSampler:
    """The user's sampling settings plus the seeded random streams every draw comes from.

    The target's own draws use one fixed uniform per output position
    (`uniform`), so the token at position j depends on the logits and the
    seed only, never on how many drafts were tried before it. Drafters that
    sample their proposals use the separate `rng` stream.
    """

    CHUNK = 256

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.greedy = params.greedy
        positions, drafts = np.random.SeedSequence(params.seed).spawn(2)
        self.rng = np.random.default_rng(drafts)
        self._position_rng = np.random.default_rng(positions)
        self._uniforms = self._position_rng.random(self.CHUNK)

    def uniform(self, position: int) -> float:
        """The uniform that decides the target's token at output `position`."""
        while position >= len(self._uniforms):
            self._uniforms = np.concatenate([self._uniforms, self._position_rng.random(self.CHUNK)])
        return float(self._uniforms[position])

    def sample(self, logits: np.ndarray) -> tuple[int, Dist | None]:
        """A drafter's proposal from a logits row; greedy returns no distribution."""
        if self.greedy:
            return int(logits.argmax()), None
        dist = warp(logits, self.params)
        return draw(dist, self.rng), dist

    def sample_at(self, logits: np.ndarray, position: int) -> int:
        """The target's token at output `position` (greedy: the argmax)."""
        if self.greedy:
            return int(logits.argmax())
        return inverse_cdf(warp(logits, self.params), self.uniform(position))
