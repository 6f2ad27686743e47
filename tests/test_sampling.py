"""Pure maths: warping, acceptance, residuals, the adaptive controller, the text stream."""

from __future__ import annotations

import numpy as np
import pytest

from gemma_cli.engine.adaptive import DraftController
from gemma_cli.engine.loss_budget import LossBudget
from gemma_cli.engine.sampling import Dist, SamplingParams, accept_draft, draw, residual, top_k_ids, warp
from gemma_cli.engine.textstream import TextStream

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.10], dtype=np.float32))


def test_warp_temperature_one_is_softmax():
    d = warp(LOGITS, SamplingParams(temperature=1.0))
    assert d.ids.tolist() == [0, 1, 2, 3]
    assert np.allclose(d.probs, [0.5, 0.25, 0.15, 0.10], atol=1e-6)


def test_warp_filters():
    assert warp(LOGITS, SamplingParams(temperature=1.0, top_k=2)).ids.tolist() == [0, 1]
    d = warp(LOGITS, SamplingParams(temperature=1.0, top_p=0.7))  # 0.5 + 0.25 reaches 0.7
    assert d.ids.tolist() == [0, 1] and np.allclose(d.probs, [2 / 3, 1 / 3])
    assert warp(LOGITS, SamplingParams(temperature=1.0, min_p=0.4)).ids.tolist() == [0, 1]


@pytest.mark.parametrize("scale", [0.01, 1.0, 3.0, 40.0])
@pytest.mark.parametrize("k", [1, 64, 5000])
def test_top_k_ids_is_exactly_the_k_largest(scale, k):
    """The windowed fast path and the full-partition fallback both give the exact top-k set."""
    rng = np.random.default_rng(int(scale * 100) + k)
    row = (rng.standard_normal(50_000) * scale).astype(np.float32)
    got = np.sort(top_k_ids(row, k))
    want = np.sort(np.argsort(-row, kind="stable")[:k])
    assert np.array_equal(got, want)


def test_draw_follows_the_distribution():
    rng = np.random.default_rng(0)
    d = Dist(np.array([3, 7]), np.array([0.2, 0.8]))
    draws = [draw(d, rng) for _ in range(20000)]
    assert abs(draws.count(7) / len(draws) - 0.8) < 0.02


def test_residual_is_normalised_positive_part():
    p = Dist(np.array([0, 1, 2]), np.array([0.5, 0.3, 0.2]))
    q = Dist(np.array([0, 1]), np.array([0.8, 0.2]))
    r = residual(p, q, 0)
    assert np.allclose(r.probs, [0.0, 0.1 / 0.3, 0.2 / 0.3])
    one_hot = residual(p, None, 0)
    assert np.allclose(one_hot.probs, [0.0, 0.6, 0.4])


def test_acceptance_probability_is_min_ratio():
    p = Dist(np.array([0, 1]), np.array([0.3, 0.7]))
    q = Dist(np.array([0, 1]), np.array([0.6, 0.4]))
    rng = np.random.default_rng(1)
    acc0 = np.mean([accept_draft(p, q, 0, rng) for _ in range(20000)])
    assert abs(acc0 - 0.5) < 0.02  # 0.3 / 0.6
    assert all(accept_draft(p, q, 1, rng) for _ in range(100))  # p >= q: always
    assert not accept_draft(p, q, 5, rng)  # outside the target's support


def test_controller_pauses_on_low_acceptance_and_probes():
    c = DraftController(6, measure_time=False)
    c.budget = LossBudget(start=float("inf"))  # probing alone; the budget below
    for _ in range(30):
        c.record(4, 0, 5, 0.0, 0.0)
    ks = [c.next_k() for _ in range(16)]
    assert ks.count(0) >= 14 and 1 in ks  # paused, with probes


def test_controller_drafts_long_on_high_acceptance():
    c = DraftController(6, measure_time=False)
    for _ in range(30):
        c.record(6, 6, 7, 0.0, 0.0)
    assert c.next_k() == 6


def test_controller_uses_measured_costs():
    """Verifying b tokens costs b plain steps (measured): no draft length can pay off."""
    c = DraftController(6)
    for _ in range(20):
        for b in range(1, 8):
            c.record(b - 1, (b - 1) // 2, b, 0.010 * b, 0.0)
    assert c.next_k() == 0


def test_controller_tries_an_unmeasured_length_once_then_trusts_the_measurement():
    c = DraftController(4)
    for _ in range(10):
        c.record(0, 0, 1, 0.010, 0.0)
        c.record(1, 1, 2, 0.011, 0.0)
    k = c.next_k()
    assert k > 1  # longer drafts look cheap until measured
    for _ in range(10):
        c.record(k, k // 2, k + 1, 0.010 * (k + 1) * 3, 0.0)  # ...and turn out expensive
    assert c.next_k() < k


def test_failed_probes_back_off():
    """Drafts would pay if accepted (a b-token pass costs 1 + 0.6(b-1) steps), but none are."""
    c = DraftController(4)
    c.budget = LossBudget(start=float("inf"))  # probing alone; the budget below
    for _ in range(10):
        c.record(0, 0, 1, 0.010, 0.0)
        for b in range(2, 6):
            c.record(b - 1, 0, b, 0.010 * (1 + 0.6 * (b - 1)), 0.0)
    ks = [c.next_k() for _ in range(8)]
    assert ks.count(1) == 1  # one probe in the first 8 steps
    c.record(1, 0, 2, 0.020, 0.0)  # the probe did not pay
    ks = [c.next_k() for _ in range(15)]
    assert ks.count(1) == 0  # the next probe waits 16 steps


def test_drafts_stay_within_the_loss_budget():
    """Every proposal of a class never seen before (each starts at the optimistic prior), none ever right:
    the generation still costs at most 2 passes + 1% over plain decoding (loss_budget.py)."""
    c = DraftController(4)
    t1 = 0.010
    spent, tokens, drafted = 0.0, 0, 0
    for step in range(600):
        k = c.next_k(key=step)
        t = t1 * (1 + 0.6 * k)
        c.record(k, 0, k + 1, t, 0.0, key=step)
        spent, tokens, drafted = spent + t / t1, tokens + 1, drafted + k
    assert drafted > 0
    assert spent <= tokens * 1.01 + 2.0 + 1e-6  # without the budget: 961 passes for these 600 tokens


def test_shared_pass_costs_carry_measurements_into_the_next_generation():
    """Sampled generations reuse what earlier ones measured: no plain step to re-measure, no re-exploration."""
    from gemma_cli.engine.adaptive import PassCosts

    costs = PassCosts()
    first = DraftController(4, costs=costs)
    assert first.next_k() == 0  # nothing measured yet: one plain step first
    for b in range(1, 6):  # every extra verified token costs a full step: drafting cannot pay
        first.record(b - 1, b - 1, b, 0.010 * b, 0.0)
    second = DraftController(4, costs=costs)
    assert [second.next_k() for _ in range(50)] == [0] * 50
    fresh = DraftController(4)  # measuring afresh: the same first step, then optimism
    assert fresh.next_k() == 0
    fresh.record(0, 0, 1, 0.010, 0.0)
    assert fresh.next_k() > 0
    untimed = DraftController(4, measure_time=False, costs=costs)  # timing off ignores shared costs
    assert untimed.next_k() > 0


def test_seeded_pass_costs_steer_the_first_decision():
    """A seeded curve replaces measuring afresh: no plain step to measure first, and k follows the curve."""
    from gemma_cli.engine.adaptive import PassCosts

    steep = PassCosts.from_curve({b: 0.010 * b for b in range(1, 6)})  # b tokens cost b plain steps: never pays
    assert [DraftController(4, costs=steep).next_k() for _ in range(3)] == [0, 0, 0]
    flat = PassCosts.from_curve({b: 0.010 for b in range(1, 6)})  # verifying more is free: draft as far as allowed
    assert DraftController(4, costs=flat).next_k() == 4
    steep.seed(flat.curve)  # re-seeding replaces the curve in place, even under a live controller
    live = DraftController(4, costs=steep)
    steep.seed({1: 0.010, 2: 0.020, 3: 0.030, 4: 0.040, 5: 0.050})
    assert live.next_k() == 0 and steep.curve == {1: 0.010, 2: 0.020, 3: 0.030, 4: 0.040, 5: 0.050}
    curve = steep.curve
    curve[1] = 1.0  # a copy: persisting or editing it leaves the costs alone
    assert steep.curve[1] == 0.010


def test_pass_costs_follow_the_machines_pace_for_every_size_and_bound_a_single_stall():
    """A slower machine shows in every size's price; one stalled pass does not; a size's own error is learnt."""
    from gemma_cli.engine.adaptive import PassCosts

    costs = PassCosts.from_curve({1: 0.010, 2: 0.015, 8: 0.040})
    for _ in range(40):  # one-token passes only, 20% slower than the curve (a longer history, a busier machine)
        costs.observe(1, 0.012, 0, 0.0)
    c = costs.curve
    assert c[1] == pytest.approx(0.012, rel=0.01)
    assert c[8] / c[1] == pytest.approx(4.0, rel=0.01) and c[2] / c[1] == pytest.approx(1.5, rel=0.01)  # ratios kept

    costs.observe(1, 1.0, 0, 0.0)  # a 1-second stall (a preempted thread) counts as OUTLIER x its estimate
    assert costs.curve[1] < 0.012 * 1.1

    steady = PassCosts.from_curve({1: 0.010, 8: 0.040})  # the curve under-prices size 8: it costs 5 passes
    for _ in range(60):
        steady.observe(1, 0.010, 0, 0.0)
        steady.observe(8, 0.050, 7, 0.0)
    assert steady.curve[8] / steady.curve[1] == pytest.approx(5.0, rel=0.03)
    assert steady.curve[1] == pytest.approx(0.010, rel=0.05)


@pytest.mark.parametrize("curve", [{0: 0.01}, {1: 0.0}, {1: -1.0}, {1: float("nan")}, {1: float("inf")}, {"1": 0.01}, {1: "fast"}])
def test_a_bad_pass_cost_curve_is_refused_and_changes_nothing(curve):
    from gemma_cli.engine.adaptive import PassCosts

    costs = PassCosts.from_curve({1: 0.010})
    with pytest.raises(ValueError, match="pass cost"):
        costs.seed(curve)
    assert costs.curve == {1: 0.010}


def test_sampled_generations_do_not_price_unmeasured_lengths_as_cheap():
    """Greedy explores long drafts at once; sampled ones start short (unmeasured sizes at the prior)."""
    eager, careful = DraftController(8), DraftController(8, optimistic=False)
    for c in (eager, careful):
        c.record(0, 0, 1, 0.010, 0.0)
    assert eager.next_k() >= 2
    assert careful.next_k() == 1


def test_a_drafter_that_cannot_pay_even_when_always_right_is_never_probed():
    """Self-drafting: each proposed token costs a full target step, so even 100% acceptance loses."""
    c = DraftController(8, draft_cost=1.0)
    c.record(0, 0, 1, 0.010, 0.0)
    assert [c.next_k() for _ in range(300)] == [0] * 300
    cheap = DraftController(8, draft_cost=0.05)  # a drafter 20x smaller than the target
    cheap.record(0, 0, 1, 0.010, 0.0)
    assert cheap.next_k() > 0


@pytest.mark.parametrize("stops,chunks,expected", [
    (["END"], ["ab", "cE", "N", "Dxyz"], "abc"),
    (["END"], ["ab", "E", "x"], "abEx"),
    (["\n\n", "###"], ["line", "\n", "\n", "more"], "line"),
])
def test_text_stream_never_prints_part_of_a_stop(stops, chunks, expected):
    s = TextStream(stops)
    out = "".join(s.feed(c.encode()) for c in chunks) + s.flush()
    assert out == expected
