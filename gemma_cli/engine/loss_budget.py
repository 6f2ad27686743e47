"""A bound on what drafting may lose against plain decoding, in this machine's measured pass costs.

Every estimate a controller drafts on can be wrong for a whole text: a text
that paraphrases its prompt looks like a copy token after token and breaks
after one or two. Confidence corrections shrink such losses but do not bound
them. The budget does, like a gambler's bank:

    bank = START + PER_TOKEN * tokens emitted + sum over drafted steps of
           (tokens the step emitted - its pass cost in one-token passes)

A drafted step that emits a tokens for a pass of b rows gains a + ... - t(b)/t(1)
passes against plain decoding (a miss at the first token gains 1 - t(b)/t(1),
the step's worst case). A draft is allowed only when its worst case fits in
the bank, so the bank stays above zero (less the amount by which a pass's
own reading raised its price: the controller books each step at the price the
table holds after it) and a generation of n tokens costs about
n * (1 + PER_TOKEN) + START one-token passes at most, whatever the drafter
believed. Drafts that pay fill the bank, so a text that copies
well soon affords the longest drafts; a text whose drafts miss spends START,
then drafts only as the per-token allowance refills it.

START = 2 passes and PER_TOKEN = 0.01 were chosen from the guard the product
keeps (>= 0.97x plain decoding): at 128 tokens the bound is 1 + 3.3/128 =
1.026x plain's time, ~0.975x its speed. Not fitted to any workload.
"""

from __future__ import annotations


class LossBudget:
    """The bank above, in one-token-pass units. `affords(risk)` before a draft, `settle(...)` after each step."""

    START = 2.0  # one-token passes the first drafts may lose before any has paid
    PER_TOKEN = 0.01  # passes of allowance per emitted token, drafted or not

    def __init__(self, start: float | None = None, per_token: float | None = None) -> None:
        self.bank = self.START if start is None else start
        self.per_token = self.PER_TOKEN if per_token is None else per_token

    def affords(self, risk: float) -> bool:
        """Whether a draft whose worst case loses `risk` passes (t(b)/t(1) - 1) keeps the bank at or above zero."""
        return risk <= self.bank + 1e-9

    def settle(self, emitted: int, cost: float) -> None:
        """One step emitted `emitted` tokens for `cost` one-token passes (1.0 for a plain step: no change but the allowance)."""
        self.bank += emitted * self.per_token + (emitted - cost)
