"""Adaptive draft length: draft only as far as it pays on *this* machine.

Each step picks k in [0, k_max] maximising expected tokens per unit of time:

    E[tokens | k] = (1 - a^(k+1)) / (1 - a)         (a: per-token acceptance)
    cost(k)       = t_verify(k + 1) + k * t_draft

`a` is a decayed estimate of the geometric acceptance rate; `t_verify(b)` what
measured target passes of b tokens cost at the machine's current pace
(`observe_pass`); `t_draft` the drafter's measured cost per proposed token.
Verification cost is far from flat on a CPU (Gemma 3 270M, 2 threads, 2-core EPYC: a 2-token pass costs 1.9x a 1-token pass,
a 9-token pass 5.0x, because every row pays for the 262k-vocabulary output projection),
so each batch size is measured, not modelled. A size not measured yet is
assumed cheap (optimism: trying it once costs one step, and corrects it).
With this controller (the n-gram `DraftLengthController` keeps the engine's
costs for every generation instead; see draft_length.py), greedy generations
measure afresh each time: the fresh optimism makes them
try long drafts early, which on text that copies is where the speed is
(keeping costs across greedy generations measured slower: code rewrite
1.77x -> 1.56x, chat 1.55x -> 1.45x). Sampled generations accept a
deterministic draft with probability p(d), far less often and in shorter
runs, so exploring rarely pays: they price sizes not measured yet at the
prior (0.5 plain steps per extra token) rather than as cheap, and reuse the
`PassCosts` the engine kept from earlier generations (a chat session).

When no k > 0 beats plain decoding, drafting pauses, probing with k=1 at
exponentially growing intervals (8, 16, ... 128 steps) for as long as the
measurements keep saying drafting does not pay, so a prompt that turns
predictable is noticed while a losing drafter costs almost nothing. A drafter
too slow to pay even at 100% acceptance (a model as big as the target) is
not probed at all: it never even evaluates the prompt.

A seed must reproduce sampled output exactly, so timing may only steer k
where k cannot change the output. It cannot for deterministic proposals
(n-gram, and any drafter when greedy): the target draws every token with a
fixed uniform per position (see `speculative.verify`). A drafter that samples
its proposals draws more or fewer random numbers as k varies, so such
generations run with `measure_time=False`: costs stay at a fixed prior and
only the acceptance estimate (a function of the seed) adapts.

Whatever the estimates, a draft is made only when its worst case (every
drafted token rejected) fits in the generation's loss budget, which bounds
what drafting can cost against plain decoding (loss_budget.py).

Seeding: `PassCosts.from_curve({batch_size: seconds})` (or `seed` on the
engine's own `Engine.costs`, or `EngineConfig(pass_costs=...)`) starts the
target's pass costs from a known curve instead of from nothing, e.g. one
measured earlier on this machine, or a flat curve under which timing alone
steers k. The curve is a starting point: measurements move it as usual.
`PassCosts.curve` reads it back, {batch_size: seconds}.
"""

from __future__ import annotations

import math
from typing import Mapping

from gemma_cli.engine.loss_budget import LossBudget

DECAY = 0.85
RATIO_DECAY = 0.9  # how slowly one size's cost moves against the others' (the common pace moves at DECAY)
OUTLIER = 1.5  # one pass counts at most this far from its estimate, either way
OPTIMISTIC_PER_TOKEN = 0.15  # unmeasured extra verified token, in plain steps
PRIOR_PER_TOKEN = 0.5  # fixed cost model when timing is off
PROBE_MIN, PROBE_MAX = 8, 128


def _decayed_mean(prev: float | None, value: float) -> float:
    return value if prev is None else DECAY * prev + (1 - DECAY) * value


def check_curve(curve: Mapping[int, float]) -> dict[int, float]:
    """`curve` as {batch_size: seconds} of floats; ValueError for a size below 1 or a time not positive and finite."""
    checked: dict[int, float] = {}
    for batch, seconds in curve.items():
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"a pass cost's batch size must be an integer >= 1, got {batch!r}")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf:
            raise ValueError(f"the pass cost of batch size {batch} must be a positive number of seconds, got {seconds!r}")
        checked[batch] = float(seconds)
    return checked


def step_passes(t_pass: float, k: int, t_draft: float, unit: float) -> float:
    """A step drafting k tokens, in one-token passes: its (k+1)-token pass plus drafting k tokens, over `unit`.

    The one formula behind a draft's price (`DraftController._step_passes`); the controllers' loops call it
    with the per-step parts looked up once.
    """
    return (t_pass + k * t_draft) / unit


def observe_pass(table: dict[int, float], size: int, seconds: float) -> None:
    """Learn from one timed pass of `size` tokens (rows): every size follows the machine's pace, `size` its own cost too.

    A pass's time over its size's estimate is partly the machine's pace at that moment (load,
    clocks, a longer history) and partly the estimate's own error. The first moves every size
    alike, so a size not drafted for a while is priced at today's pace rather than the pace it
    was last measured at; only the second moves one size against the others (and never size 1,
    the unit the others are priced in). The controllers decide on ratios t(k+1)/t(1), so a table
    whose sizes were measured at different moments, each a decayed mean of its own, drifts apart
    and steers them wrongly. Session 12, one engine over the 18 validation prompts, 3 rounds:
    t(16)/t(1) read 4.96-8.42 and t(8)/t(1) 3.25-4.69 between generations; with this rule, over
    the 11 tuning prompts, 5.35-5.78 and 3.48-3.49 (`benchmarks/pass_curve.py`: 5.2-6.1 and
    3.2-3.8 at 64-2,000 tokens of history). A reading outside [1/OUTLIER, OUTLIER] times its
    estimate (a pause, a preempted thread) counts as that bound; a size's first reading is taken
    as it is, there being nothing to compare it with. In place: controllers hold `table`.
    """
    if not math.isfinite(seconds):
        return
    seconds = max(seconds, 1e-9)
    known = table.get(size)
    if known is None:  # a new size: its first reading is all there is
        table[size] = seconds
        return
    level = min(max(seconds / known, 1.0 / OUTLIER), OUTLIER)
    pace = 1.0 + (1.0 - DECAY) * (level - 1.0)
    for b in table:
        table[b] *= pace
    if size != 1:
        table[size] *= 1.0 + (1.0 - RATIO_DECAY) * (level / pace - 1.0)


class PassCosts:
    """Measured seconds per target pass by batch size (`observe_pass`), and per drafted token (a decayed mean).

    The engine keeps one across generations (see above); `forget_drafter`
    when the draft source changes, as the target's pass costs stay true.
    """

    def __init__(self) -> None:
        self.verify: dict[int, float] = {}  # batch size -> seconds, at the machine's current pace
        self.draft_per_token: float | None = None

    @classmethod
    def from_curve(cls, curve: Mapping[int, float]) -> "PassCosts":
        """Costs that start from `curve`, {batch_size: seconds per target pass} (see `seed`)."""
        costs = cls()
        costs.seed(curve)
        return costs

    def seed(self, curve: Mapping[int, float]) -> None:
        """Replace the target's pass costs with `curve`, {batch_size: seconds}; the drafter's cost stays.

        In place: a controller already sharing these costs sees the new curve.
        ValueError for a batch size below 1 or a time that is not a positive finite number.
        """
        checked = check_curve(curve)
        self.verify.clear()
        self.verify.update(checked)

    @property
    def curve(self) -> dict[int, float]:
        """A copy of the measured target pass costs, {batch_size: seconds}: what `seed` takes."""
        return dict(self.verify)

    def observe(self, batch: int, verify_s: float, proposed: int, draft_s: float) -> None:
        """Learn from one step: the pass's time by `observe_pass`, the drafter's per proposed token."""
        observe_pass(self.verify, batch, verify_s)
        if proposed:
            self.draft_per_token = _decayed_mean(self.draft_per_token, max(draft_s, 0.0) / proposed)

    def forget_drafter(self) -> None:
        self.draft_per_token = None


class DraftController:
    """Chooses k for each step of one generation from its acceptance so far and what passes cost.

    `costs` shares measurements with earlier generations (default: measure
    afresh); `optimistic=False` prices sizes not measured yet at the prior
    instead of as cheap; `measure_time=False` ignores timing altogether.
    """

    def __init__(
        self,
        k_max: int,
        *,
        adaptive: bool = True,
        measure_time: bool = True,
        draft_cost: float = 0.0,
        costs: PassCosts | None = None,
        optimistic: bool = True,
    ) -> None:
        self.k_max = k_max
        self.adaptive = adaptive
        self.measure_time = measure_time
        self._unmeasured_per_token = OPTIMISTIC_PER_TOKEN if measure_time and optimistic else PRIOR_PER_TOKEN
        self._hits = 2.0  # prior: a = 2/3
        self._misses = 1.0
        self._by_key: dict[object, list[float]] = {}  # per proposal class: [hits, misses]
        self._costs = costs if costs is not None and measure_time else PassCosts()
        self._t_verify = self._costs.verify  # stays empty when timing is off
        self._draft_cost = draft_cost  # prior, in plain-step units
        self._probe_every = PROBE_MIN
        self._since_probe = 0
        self.budget = LossBudget()  # what drafting may still lose against plain decoding (loss_budget.py)
        self.k = k_max

    @property
    def acceptance(self) -> float:
        return self._hits / (self._hits + self._misses)

    def _key_record(self, key: object) -> list[float]:
        rec = self._by_key.get(key)
        if rec is None:  # an unseen class starts at the optimistic prior: a class never tried is never learnt
            rec = self._by_key[key] = [2.0, 1.0]
        return rec

    def _acceptance(self, key: object) -> float:
        """Acceptance for proposals of one class (e.g. the n-gram match length), else overall."""
        if key is None:
            return self.acceptance
        h, m = self._key_record(key)
        return h / (h + m)

    def _verify_time(self, batch: int) -> float:
        """t(b): measured when known, else optimistic from the nearest measured smaller batch."""
        known = self._t_verify
        if batch in known:
            return known[batch]
        per_token = self._unmeasured_per_token
        if not known:
            return 1.0 + per_token * (batch - 1)
        smaller = [b for b in known if b < batch]
        if smaller:
            lo = max(smaller)
            return known[lo] + per_token * self._unit() * (batch - lo)
        hi = min(known)
        return known[hi] / (1.0 + per_token * (hi - 1)) * (1.0 + per_token * (batch - 1))

    def _unit(self) -> float:
        """Cost of one plain step in the measured units."""
        if 1 in self._t_verify:
            return self._t_verify[1]
        b = min(self._t_verify)
        return self._t_verify[b] / (1.0 + OPTIMISTIC_PER_TOKEN * (b - 1))

    @property
    def single_pass_seconds(self) -> float:
        """Measured (or extrapolated) cost of one plain decode step; 0 before any measurement."""
        return self._verify_time(1) if self._t_verify else 0.0

    def _draft_time(self) -> float:
        measured = self._costs.draft_per_token
        return measured if measured is not None else self._draft_cost * self._verify_time(1)

    def _step_passes(self, k: int) -> float:
        """A step that drafts k tokens, in one-token passes: verifying k+1 rows plus drafting k tokens.

        The one price of a draft for the loss budget: `next_k` checks it can afford it, and `record`
        books it again once the pass it timed has moved the table, so the booking follows what the
        pass cost. Where the reading raised the price (a size's first try, a slower moment) the bank
        can dip below zero by that difference; then no draft is made until it refills.
        """
        return step_passes(self._verify_time(k + 1), k, self._draft_time(), self._verify_time(1))

    def next_k(self, key: object = None) -> int:
        """Draft length for the next step (0 = decode plainly).

        `key` names the class of the proposal at hand when the drafter could
        look before the decision (n-gram: the matched n-gram length), so a
        6-token match and a 1-token match are judged by their own records.
        """
        if not self.adaptive or self.k_max == 0:
            return self.k_max
        if self.measure_time and 1 not in self._t_verify:
            self.k = 0  # measure one plain step first: everything is judged against it
            return 0
        a = min(self._acceptance(key), 0.999)
        unit = self._verify_time(1)
        plain_rate = 1.0 / unit
        best_k, best_rate, ceiling = 0, plain_rate, 0.0
        t_draft = self._draft_time()
        for k in range(1, self.k_max + 1):
            t = self._verify_time(k + 1)
            if not self.budget.affords(step_passes(t, k, t_draft, unit) - 1.0):  # its worst case would overdraw the bank
                continue
            cost = t + k * t_draft
            ceiling = max(ceiling, (k + 1) / cost)  # the rate if every draft were accepted
            rate = (1.0 - a ** (k + 1)) / (1.0 - a) / cost
            if rate > best_rate:
                best_k, best_rate = k, rate
        if best_k > 0:
            self._probe_every = PROBE_MIN
        elif ceiling > plain_rate:  # would pay if acceptance rose: probe, ever more rarely while it does not
            self._since_probe += 1
            if self._since_probe >= self._probe_every:
                self._since_probe = 0
                self._probe_every = min(self._probe_every * 2, PROBE_MAX)
                best_k = 1
        self.k = best_k
        return best_k

    def record(self, proposed: int, accepted: int, batch: int, verify_s: float, draft_s: float, key: object = None) -> None:
        """Feed back one step: drafts proposed/accepted and what the passes cost."""
        if proposed:
            miss = 1 if accepted < proposed else 0
            if key is not None:
                rec = self._key_record(key)
                rec[0] = DECAY * rec[0] + accepted
                rec[1] = DECAY * rec[1] + miss
            self._hits = DECAY * self._hits + accepted
            self._misses = DECAY * self._misses + miss
        if self.measure_time:
            self._costs.observe(batch, verify_s, proposed, draft_s)
        # Priced from the cost table (not from one noisy pass) as this pass has just moved it: a size that
        # proved dearer than next_k priced it is charged nearer what it cost (test_drafts_stay_within_the_loss_budget).
        self.budget.settle(accepted + 1, self._step_passes(proposed) if proposed else 1.0)


def timing_free_controller(k_max: int, adaptive: bool, draft_cost: float) -> DraftController:
    """The controller of a sampled generation whose drafter samples its proposals (MTP, a drafter model).

    Its random stream follows its draft lengths, so k must be a function of its own acceptance history
    only: the fixed prior costs, the probes and the loss budget, never timing (see the module doc). The
    engine (`Generation._start`) and a batch slot (`BatchScheduler`) build it here, so the same seeded
    request writes the same text alone and batched: with a rule of the batch's own, a seeded sampled MTP
    request drafted nothing for 15 steps in a slot where the engine probed at step 8, and wrote plain
    decoding's text (tests/test_batch_mtp.py).
    """
    return DraftController(k_max, adaptive=adaptive, measure_time=False, draft_cost=draft_cost)
