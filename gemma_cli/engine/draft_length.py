"""Draft length from per-token confidences and the measured cost of a verification pass.

A drafter that says how sure it is of each proposed token (p_i: the chance
the target agrees with token i given it agreed with the ones before) lets the
length be priced directly:

    E[tokens | k] = 1 + sum_{i<=k} prod_{j<=i} p_j
    rate(k)       = E[tokens | k] / t_verify(k + 1)

and k = argmax rate(k), 0 (plain decoding) unless some k beats 1 / t_verify(1).
`t_verify(b)` is `adaptive.PassCosts`: measured passes of b tokens on this
machine, at its current pace (far from linear and not even monotone on a CPU:
every verified row pays the output projection, and ggml changes kernels with
the batch size). A size not measured yet is priced from the nearest measured
smaller one by a concave prior, t(1) * UNMEASURED * (sqrt(b - 1) - sqrt(lo - 1)):
a second row may cost up to a full pass, later rows less and less. That keeps a
fresh process (`gemma run`) from paying for trying cheap-looking short drafts,
while long drafts, where batching pays, still get tried when the confidences
are high; once tried, a size is known. A size not measured yet is tried only
when it promises 10% more than the best measured choice, so a generation does
not walk through every size in turn. (Replayed on the tuning set with cold
costs: the linear 0.15-per-row optimism of `adaptive.py` gave 1.78x greedy and
a 0.94x worst sampled case; the prior 1.97x and 0.99x; with the 10% rule, after
later changes, 1.94x and 0.98x instead of 1.97x and 0.91x.)

There is no back-off or probing: the confidences come from the drafter
scoring every proposal, drafted or not, against what the target produced, so
a drafter that stopped drafting notices by itself when its proposals turn
good again. One correction is the controller's own: the drafts it paid for
are the proposals that looked best, so they fall short of their confidences
more than the average proposal does (the winner's curse); `record` keeps the
ratio of tokens those drafts got to what they expected and scales the next
expectations by it, drifting back to 1 step by step. (Tuning set, native
build, default vs plain in alternating rounds, two runs: geomean 1.678x ->
1.726x and 1.629x -> 1.668x; replayed on the tuning outputs, the worst case
1.04x -> 1.15x at the same mean; sampled unchanged.)

Estimates can still be wrong for a whole text (one that paraphrases its
prompt looks like a copy and breaks after a token or two, draft after draft).
So, last, a hard bound: a draft is made only if its worst case (every token
rejected: t(k+1)/t(1) - 1 passes lost, plus its drafting time) fits in the loss budget, which drafts
that pay refill (loss_budget.py, kept by the base controller). Whatever the
confidences say, a generation costs at most 2 passes + 1% more than plain.
"""

from __future__ import annotations

from gemma_cli.engine.adaptive import DraftController, step_passes


class DraftLengthController(DraftController):
    """`next_k(key)` with `key` the proposal's confidences (a tuple of floats)."""

    UNMEASURED = 0.85  # prior cost of extra rows, in plain passes, before a size is measured (see above)
    EXPLORE_MARGIN = 0.1  # an unmeasured size must beat the best measured choice by 10% (see above)
    MARGIN = 0.1  # drafts must promise 10% over plain: p is an estimate (tuning set, sampled: min 0.96x -> 0.99x)
    MARGIN_SAMPLED = 0.2  # sampling accepts less, in shorter runs: demand more (see `__init__`)
    MAX_SAMPLED = 4  # and draft at most this far (see `__init__`)
    PAID_PRIOR = 5.0  # tokens on both sides of the paid-for ratio (see `record`): 1 until a few drafts are scored
    PAID_DECAY = 0.95  # per step, drafted or not: the ratio forgets old drafts and drifts back to 1 while idle

    def __init__(self, k_max: int, *, sampled: bool = False, **kwargs: object) -> None:
        """`sampled`: the target samples (T > 0): drafts must promise MARGIN_SAMPLED over plain, and
        stop at MAX_SAMPLED tokens.

        Why: at T=1 even a token the text has always continued with is drawn with the target's
        probability, so a long draft whose first token misses is a whole batch of rows for
        nothing, and rows are dear (2-core EPYC, spinning threads: 17 rows cost 8.3 one-token
        passes, 5 rows 3.7). Replayed on the tuning set with that curve known (5 seeds x 15
        prompts, T=1, 128 tokens): uncapped, worst case 0.935x plain, geomean 1.066x; capped at
        4, worst 0.985x, geomean 1.070x (8: 0.957x; 3: 0.977x). Margin 0.2 over 0.1: worst
        0.970x -> 0.974x at the same mean on the earlier curve. Greedy keeps 0.1 and k_max.
        Tried and not kept (session 13): 6 tokens (7-row passes, still exact) with the 10% margin.
        The replay said +1.7% (`suffix_replay.py replay --sampled-only --max-sampled 6`, this
        Xeon's curve, margin patched), but live, interleaved with these rules on the validation
        prompts (`gemma bench -t 1 --runs 5`, the same seeds), it drafted 23% more tokens for 6%
        more accepted, and default / plain went 1.094x -> 1.087x (geomean of 18): no gain.
        """
        if sampled:
            k_max = min(k_max, self.MAX_SAMPLED)
        super().__init__(k_max, **kwargs)  # type: ignore[arg-type]
        self.margin = self.MARGIN_SAMPLED if sampled else self.MARGIN
        self._paid_got = self._paid_expected = self.PAID_PRIOR  # decayed: drafted tokens accepted, and expected

    def next_k(self, key: object = None) -> int:
        if not self.adaptive or self.k_max == 0:
            return self.k_max
        if self.measure_time and 1 not in self._t_verify:
            self.k = 0  # one plain step first: everything is judged against it
            return 0
        if not isinstance(key, tuple) or not key:
            self.k = 0
            return 0
        known = self._t_verify
        unit, t_draft = self._verify_time(1), self._draft_time()
        best_k, best_rate = 0, (1.0 + self.margin) / unit
        new_k, new_rate = 0, 0.0  # the best size not measured yet: tried only if clearly better
        expected, run = 1.0, min(self._paid_got / self._paid_expected, 1.0)
        for k in range(1, min(self.k_max, len(key)) + 1):
            run *= key[k - 1]
            expected += run
            t = self._verify_time(k + 1)
            if not self.budget.affords(step_passes(t, k, t_draft, unit) - 1.0):  # its worst case would overdraw the bank
                continue
            rate = expected / t
            if k + 1 in known or not self.measure_time:
                if rate > best_rate:
                    best_k, best_rate = k, rate
            elif rate > new_rate:
                new_k, new_rate = k, rate
        if new_rate > best_rate * (1.0 + self.EXPLORE_MARGIN):
            best_k = new_k
        self.k = best_k
        return best_k

    def _verify_time(self, batch: int) -> float:
        known = self._t_verify
        if batch in known:
            return known[batch]
        lo = max((b for b in known if b < batch), default=None)
        if lo is None:  # nothing smaller measured: relative to one plain pass
            unit = self._unit() if known else 1.0
            return unit * (1.0 + self.UNMEASURED * (batch - 1) ** 0.5)
        return known[lo] + self._unit() * self.UNMEASURED * ((batch - 1) ** 0.5 - (lo - 1) ** 0.5)

    def record(self, proposed: int, accepted: int, batch: int, verify_s: float, draft_s: float, key: object = None) -> None:
        """As `DraftController.record`, without per-key records (the drafter calibrates itself), and
        scoring what was paid for: the tokens a draft got against what its confidences expected.

        Why: the drafter calibrates on every proposal, but the controller drafts the ones that look
        best, and those are the over-estimated ones (the winner's curse). Where a text's drafted
        runs fall short, the ratio scales the next expectations down; it decays each step towards
        the prior, so a controller that stopped drafting tries again after a while.
        """
        scale = min(self._paid_got / self._paid_expected, 1.0)  # as next_k priced this draft
        drift = (1.0 - self.PAID_DECAY) * self.PAID_PRIOR
        got = self.PAID_DECAY * self._paid_got + drift
        expected = self.PAID_DECAY * self._paid_expected + drift
        if proposed and isinstance(key, tuple):
            run = scale
            for p in key[:proposed]:
                run *= p
                expected += run
            got += accepted
        self._paid_got, self._paid_expected = got, expected
        super().record(proposed, accepted, batch, verify_s, draft_s)
