"""Adaptive draft length: draft only as far as it pays on *this* machine.

Each step picks k in [0, k_max] maximising expected tokens per second:

    E[tokens | k] = (1 - a^(k+1)) / (1 - a)         (a: per-token acceptance)
    cost(k)       = t_verify(k + 1) + k * t_draft

`a` is a decayed estimate of the geometric acceptance rate, `t_verify(b)` a
decayed mean of measured target decode times per batch size, `t_draft` the
drafter's measured cost per proposed token. When no k > 0 beats plain
decoding, drafting pauses, with a short probe every few steps so the estimate
can recover when the text becomes predictable again.

With a seed, output must not depend on timing noise (k changes how many random
numbers are drawn), so sampled generations run with `measure_time=False`:
the costs stay at a fixed model (`PRIOR_PER_TOKEN` per extra verified token,
`draft_cost` per drafted token, in units of one plain step) and only the
acceptance estimate adapts, which is a function of the seed.
"""

from __future__ import annotations

DECAY = 0.85
PROBE_EVERY = 8
PRIOR_PER_TOKEN = 0.15


class DraftController:
    def __init__(self, k_max: int, *, adaptive: bool = True, measure_time: bool = True, draft_cost: float = 0.0) -> None:
        self.k_max = k_max
        self.adaptive = adaptive
        self.measure_time = measure_time
        self._hits = 2.0  # prior: a = 2/3
        self._misses = 1.0
        self._t_verify: dict[int, float] = {}
        self._draft_cost = draft_cost  # prior, in plain-step units
        self._t_draft: float | None = None  # measured seconds per drafted token
        self._since_probe = 0
        self.k = k_max

    @property
    def acceptance(self) -> float:
        return self._hits / (self._hits + self._misses)

    def _verify_time(self, batch: int) -> float:
        """t(b): a line through the measured batch costs, or the prior's shape around one point."""
        known = self._t_verify
        if not known:
            return 1.0 + PRIOR_PER_TOKEN * (batch - 1)
        if len(known) == 1:
            (b0, t0), = known.items()
            return t0 * (1.0 + PRIOR_PER_TOKEN * (batch - 1)) / (1.0 + PRIOR_PER_TOKEN * (b0 - 1))
        xs, ys = list(known), list(known.values())
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        slope = max(slope, 0.0)
        return max(my + slope * (batch - mx), 1e-9)

    @property
    def single_pass_seconds(self) -> float:
        """Measured (or extrapolated) cost of one plain decode step; 0 before any measurement."""
        return self._verify_time(1) if self._t_verify else 0.0

    def _draft_time(self) -> float:
        if self._t_draft is not None:
            return self._t_draft
        return self._draft_cost * self._verify_time(1)

    def next_k(self) -> int:
        """Draft length for the next step (0 = decode plainly)."""
        if not self.adaptive or self.k_max == 0:
            return self.k_max
        a = min(self.acceptance, 0.999)
        best_k, best_rate = 0, 1.0 / self._verify_time(1)
        t_draft = self._draft_time()
        for k in range(1, self.k_max + 1):
            rate = (1.0 - a ** (k + 1)) / (1.0 - a) / (self._verify_time(k + 1) + k * t_draft)
            if rate > best_rate:
                best_k, best_rate = k, rate
        if best_k == 0:
            self._since_probe += 1
            if self._since_probe >= PROBE_EVERY:
                self._since_probe = 0
                best_k = 1
        self.k = best_k
        return best_k

    def record(self, proposed: int, accepted: int, batch: int, verify_s: float, draft_s: float) -> None:
        """Feed back one step: drafts proposed/accepted and what the passes cost."""
        if proposed:
            self._hits = DECAY * self._hits + accepted
            self._misses = DECAY * self._misses + (1 if accepted < proposed else 0)
        if not self.measure_time:
            return
        verify_s = max(verify_s, 1e-6)
        prev = self._t_verify.get(batch)
        self._t_verify[batch] = verify_s if prev is None else DECAY * prev + (1 - DECAY) * verify_s
        if proposed:
            per_token = draft_s / proposed
            prev_d = self._t_draft
            self._t_draft = per_token if prev_d is None else DECAY * prev_d + (1 - DECAY) * per_token
