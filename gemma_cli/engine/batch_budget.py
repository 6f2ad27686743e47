"""One draft budget for a batch of sequences: every slot's draft length chosen together.

A batched step costs one decode whose time grows with its output rows (on a
CPU each output row pays the vocabulary projection), so a draft token is
worth its row only if the tokens it is expected to add beat what the row
costs the *whole* batch. Each step maximises

    sum_i E_i(k_i) / (T(sum_i (k_i + 1)) + sum_i k_i * d_i)

where E_i(k) = (1 - a_i^(k+1)) / (1 - a_i) is slot i's expected tokens for a
k-token draft (a_i: its decayed acceptance), T(rows) the measured decode
time of a batch with that many output rows, d_i its drafter's cost per token.
Rows go one at a time to the slot whose next draft token is likeliest to be
accepted (a_i^(k_i+1)), and the best point on that path wins, so a slot with
poor acceptance drafts less and one copying text drafts more.

A scheduler starts from the engine's measured one-sequence pass costs
(`BatchCosts.from_curve`); sizes not measured yet are priced optimistically
(as `adaptive.py` does): trying one costs a step and corrects it. This
module keeps its own acceptance records so it depends only on the `Drafter`
protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from gemma_cli.engine.adaptive import check_curve, observe_pass

DECAY = 0.85
OPTIMISTIC_PER_ROW = 0.15  # an unmeasured extra output row, in single-row decodes
PROBE_EVERY = 16  # a costly drafter that stopped drafting tries one token this often


class BatchCosts:
    """Seconds of one batched decode by its number of output rows, at the machine's current pace."""

    def __init__(self) -> None:
        self.by_rows: dict[int, float] = {}

    @classmethod
    def from_curve(cls, curve: Mapping[int, float]) -> "BatchCosts":
        """Costs that start from `curve`, {rows: seconds}, e.g. the engine's measured one-sequence passes
        (`PassCosts.curve`: a pass of k+1 tokens has k+1 output rows), so a new scheduler's first steps
        price drafts from this machine rather than from the optimistic guess. Observations then move it.
        ValueError as `PassCosts.seed` (a size below 1, a time not positive and finite)."""
        costs = cls()
        costs.by_rows.update(check_curve(curve))
        return costs

    def observe(self, rows: int, seconds: float) -> None:
        """One batched decode's time: the machine's pace moves every size, `rows` its own too (`adaptive.observe_pass`)."""
        observe_pass(self.by_rows, rows, seconds)

    def time(self, rows: int) -> float:
        """T(rows): measured, else interpolated between measured sizes, else optimistic."""
        known = self.by_rows
        if rows in known:
            return known[rows]
        if not known:
            return 1.0 + OPTIMISTIC_PER_ROW * (rows - 1)
        below = [r for r in known if r < rows]
        above = [r for r in known if r > rows]
        if below and above:
            lo, hi = max(below), min(above)
            return known[lo] + (known[hi] - known[lo]) * (rows - lo) / (hi - lo)
        unit = known[min(known)] / (1.0 + OPTIMISTIC_PER_ROW * (min(known) - 1))
        if below:
            lo = max(below)
            return known[lo] + OPTIMISTIC_PER_ROW * unit * (rows - lo)
        return unit * (1.0 + OPTIMISTIC_PER_ROW * (rows - 1))


class Acceptance:
    """One slot's decayed per-token acceptance, overall and per proposal class (drafter.last_key)."""

    def __init__(self) -> None:
        self._all = [2.0, 1.0]  # hits, misses: prior a = 2/3
        self._by_key: dict[object, list[float]] = {}

    def rate(self, key: object = None) -> float:
        h, m = self._all if key is None else self._by_key.get(key, [2.0, 1.0])
        return min(h / (h + m), 0.999)

    def record(self, proposed: int, accepted: int, key: object = None) -> None:
        if not proposed:
            return
        miss = 1 if accepted < proposed else 0
        recs = [self._all] if key is None else [self._all, self._by_key.setdefault(key, [2.0, 1.0])]
        for rec in recs:
            rec[0] = DECAY * rec[0] + accepted
            rec[1] = DECAY * rec[1] + miss


@dataclass
class Candidate:
    """What the budget needs to know about one decoding slot this step."""

    acceptance: float
    limit: int  # most draft tokens it may get (k_max, room, proposal length)
    draft_cost: float = 0.0  # seconds per drafted token (0 for free proposals)
    confidences: tuple[float, ...] = ()  # per-token chances the drafter gives (n-gram): they replace `acceptance`

    def chance(self, k: int, run: float) -> float:
        """P(draft tokens 1..k+1 all accepted), given `run` = P(tokens 1..k accepted)."""
        if self.confidences:
            return run * self.confidences[k] if k < len(self.confidences) else 0.0
        return self.acceptance ** (k + 1)


def choose_lengths(slots: list[Candidate], costs: BatchCosts, extra_seconds: float = 0.0, cap: int | None = None) -> list[int]:
    """Draft lengths for every slot, maximising the batch's expected tokens per second.

    `extra_seconds` is what the step costs besides the decode's output rows
    (e.g. a prompt chunk riding along), which makes drafting relatively cheaper.
    `cap`: the most rows one decode may hold (batch.EXACT_ROWS); the decode
    time of a choice is that of the groups `split_groups` will really decode,
    so rows past the cap are priced as the extra decode they cost (pricing
    them as one bigger decode had 4 copying slots draft into 4 separate
    decodes, slower than not drafting at all).
    """
    ks = [0] * len(slots)
    runs = [1.0] * len(slots)  # P(each slot's draft so far is all accepted)
    best, best_rate = list(ks), 0.0
    tokens = float(len(slots))
    drafting = 0.0
    while True:
        rows = [k + 1 for k in ks]
        decode = grouped_time(rows, costs, cap) if rows else 0.0
        rate = tokens / (decode + extra_seconds + drafting) if rows else 0.0
        if rate > best_rate:
            best, best_rate = list(ks), rate
        pick, gain = -1, 0.0
        for i, s in enumerate(slots):
            if ks[i] < s.limit:
                g = s.chance(ks[i], runs[i])
                if g > gain:
                    pick, gain = i, g
        if pick < 0:
            return best
        ks[pick] += 1
        runs[pick] = gain
        tokens += gain
        drafting += slots[pick].draft_cost


def grouped_time(rows: list[int], costs: BatchCosts, cap: int | None = None) -> float:
    """Seconds to decode slots with these row counts in the groups `split_groups` forms."""
    return sum(costs.time(sum(rows[i] for i in group)) for group in split_groups(rows, costs, cap))


def split_groups(rows: list[int], costs: BatchCosts, cap: int | None = None) -> list[list[int]]:
    """Which slots share a decode: merge groups while one decode of both costs less than two.

    Usually everything goes into one decode. But the cost curve is not always
    concave: on a 2-core AVX2 CPU a 2-row decode of Gemma 3 270M measured
    2.8x a 1-row one (and 4 rows 3.5x), so two single-row slots are cheaper
    decoded one after the other. No merged group exceeds `cap` rows (see
    batch.EXACT_ROWS). Returns lists of indices into `rows`.
    """
    cap = cap or 1 << 30
    groups = [[i] for i in range(len(rows))]
    size = list(rows)
    t = costs.time
    while len(groups) > 1:
        best, pair = 0.0, None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if size[a] + size[b] > cap:
                    continue
                saving = t(size[a]) + t(size[b]) - t(size[a] + size[b])
                if saving > best:
                    best, pair = saving, (a, b)
        if pair is None:
            break
        a, b = pair
        groups[a] += groups.pop(b)
        size[a] += size.pop(b)
    if len(groups) > 1 and sum(size) <= cap and t(sum(size)) <= sum(t(n) for n in size):  # pairwise merging can miss the whole batch
        return [list(range(len(rows)))]
    return [sorted(g) for g in groups]
