"""A new BatchScheduler prices drafts from the engine's measured pass costs, not from a made-up curve (issue 16)."""

from __future__ import annotations

import pytest

from gemma_cli.engine.batch import BatchScheduler
from gemma_cli.engine.batch_budget import BatchCosts, Candidate, choose_lengths
from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig

# Seconds per pass by rows. Steep: every row costs a whole pass, so no draft can pay (E(k) < k + 1).
# Flat: extra rows are almost free, so even a guess pays.
STEEP = {rows: 0.05 * rows for rows in range(1, 18)}
FLAT = {rows: 0.05 + 0.0005 * rows for rows in range(1, 18)}
PROMPTS = ["abcabcabcabcabcab", "hello hello hello hello hel"]
NGRAM = DraftConfig(source="ngram", tokens=6)


def _engine(tiny_model, curve: dict[int, float]) -> Engine:
    return Engine(tiny_model, DraftConfig(source="none"), EngineConfig(n_ctx=256, n_threads=1, pass_costs=curve))


def test_from_curve_validates_like_pass_costs():
    assert BatchCosts.from_curve({1: 1, 3: 2.5}).by_rows == {1: 1.0, 3: 2.5}
    assert BatchCosts.from_curve({}).by_rows == {}
    for bad in ({0: 1.0}, {2: 0.0}, {2: float("inf")}, {True: 1.0}, {"2": 1.0}):
        with pytest.raises(ValueError, match="pass cost"):
            BatchCosts.from_curve(bad)


@pytest.mark.parametrize("curve,drafts", [(STEEP, False), (FLAT, True)])
def test_scheduler_starts_from_the_engines_curve_and_drafts_by_it(tiny_model, curve, drafts):
    eng = _engine(tiny_model, curve)
    sched = BatchScheduler(eng, 2)
    assert sched.costs.by_rows == curve  # seeded before any step ran
    guess = [Candidate(2 / 3, 6)] * 2  # the prior acceptance every slot starts with
    assert (max(choose_lengths(guess, sched.costs)) > 0) is drafts
    gens = [sched.submit(eng.tokenize(p), max_tokens=40, draft=NGRAM) for p in PROMPTS]
    sched.step()  # the prompts (their own decodes, with drafts if the curve says so)
    sched.step()  # the first shared decode
    proposed_early = sum(g.stats.draft_proposed for g in gens)
    sched.run()
    proposed = sum(g.stats.draft_proposed for g in gens)
    if drafts:
        assert proposed_early > 0  # from the first steps: rows priced as nearly free
    else:
        # Every extra row costs a whole pass: nothing is drafted in the first steps, where an unseeded
        # scheduler prices unmeasured rows at 0.15 of a pass and drafts at once. Later steps are priced by
        # what this machine measured: the shared 2-row decodes bring T(2)/T(1) below the seeded 2.0 (1.8
        # after ~25 steps on this tiny model), so a lone slot with a confident proposal may draft at the end.
        assert proposed_early == 0
        assert proposed < sum(g.stats.generated_tokens for g in gens) // 4
    for p, g in zip(PROMPTS, gens, strict=True):  # the draft lengths never change the (greedy) output
        ref = eng.generate(eng.tokenize(p), max_tokens=40)
        ref.text()
        assert g.result.tokens == ref.result.tokens
    sched.close()
    eng.close()
