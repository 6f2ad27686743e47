"""This machine's verification-cost curve survives the process: saved when an engine closes, seeded at the next load."""

from __future__ import annotations

import json

import pytest

from gemma_cli import pass_cost_cache
from gemma_cli.engine import SamplingParams
from gemma_cli.pair import ModelPair
from gemma_cli.session import EngineChoice, open_engine


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / pass_cost_cache.FILE_NAME


def test_a_curve_round_trips_and_only_curves_worth_keeping_are_saved(cache):
    pass_cost_cache.save("k", {1: 0.02, 2: 0.03, 5: 0.05})
    assert pass_cost_cache.load("k") == {1: 0.02, 2: 0.03, 5: 0.05}
    assert pass_cost_cache.load("other") is None
    pass_cost_cache.save("plain-only", {1: 0.02})  # a plain step alone tells a later process nothing
    assert pass_cost_cache.load("plain-only") is None
    pass_cost_cache.save("k", {1: 0.01, 2: 0.015})  # the newest measurement replaces the old
    assert pass_cost_cache.load("k") == {1: 0.01, 2: 0.015}


@pytest.mark.parametrize(
    "content",
    ["not json", "[1, 2]", json.dumps({"k": {"1": -1, "2": 0.1}}), json.dumps({"k": {"x": 0.1}}),
     json.dumps({"k": {"1": True, "2": 0.1}}), json.dumps({"k": {"99999": 0.1, "1": 0.1}}), json.dumps({"k": "0.1"})],
)
def test_a_damaged_cache_is_ignored_never_an_error(cache, content):
    cache.parent.mkdir(parents=True)
    cache.write_text(content)
    assert pass_cost_cache.load("k") is None
    pass_cost_cache.save("k", {1: 0.02, 2: 0.03})  # and is replaced by the next save
    assert pass_cost_cache.load("k") == {1: 0.02, 2: 0.03}


def test_the_cache_keeps_a_bounded_number_of_keys(cache):
    for i in range(pass_cost_cache.MAX_ENTRIES + 5):
        pass_cost_cache.save(f"k{i}", {1: 0.02, 2: 0.03})
    kept = json.loads(cache.read_text())
    assert len(kept) == pass_cost_cache.MAX_ENTRIES
    assert f"k{pass_cost_cache.MAX_ENTRIES + 4}" in kept and "k0" not in kept  # the oldest go first


def test_an_engine_saves_its_measured_curve_and_the_next_one_starts_from_it(cache, tiny_model):
    pair = ModelPair(name="tiny", target=tiny_model)
    choice = EngineChoice(draft="ngram", draft_tokens=6, ctx=512, threads=1)
    first = open_engine(pair, choice)
    assert not first.costs_seeded  # nothing saved yet
    flat = {b: 1e-3 for b in range(1, 8)}  # drafting looks free, so the tiny model's text gets drafted at all
    first.costs.seed(flat)
    prompt = first.tokenize("the cat sat on the mat. the cat sat on the mat. the cat sat on the")
    g = first.generate(prompt, max_tokens=60, sampling=SamplingParams(temperature=0.0))
    g.text()
    assert g.result.stats.draft_proposed > 0
    measured = first.costs.curve
    assert measured != flat and len(measured) >= 2  # real timings moved the curve
    first.close()
    assert pass_cost_cache.load(pass_cost_cache.cache_key(first, tiny_model)) == pytest.approx(measured)

    second = open_engine(pair, choice)
    try:
        # the saved sizes as saved; the sizes up to 17 rows it lacked measured now and added (pass_probe.fill_curve)
        assert second.costs_seeded and {b: second.costs.curve[b] for b in measured} == pytest.approx(measured)
        assert sorted(second.costs.curve) == list(range(1, 18))
    finally:
        second.close()

    other = open_engine(pair, EngineChoice(draft="ngram", draft_tokens=6, ctx=512, threads=2))
    try:
        assert not other.costs_seeded  # another thread count is another machine as far as costs go
    finally:
        other.close()


def test_the_first_load_on_a_machine_measures_the_curve_and_leaves_the_engine_as_fresh(cache, tiny_model):
    pair = ModelPair(name="tiny", target=tiny_model)
    choice = EngineChoice(draft="ngram", draft_tokens=8, ctx=512, threads=1)
    probed = open_engine(pair, choice)
    try:
        curve = probed.costs.curve
        assert sorted(curve) == list(range(1, max(curve) + 1)) and max(curve) >= 9  # a whole curve, no gaps
        assert pass_cost_cache.load(pass_cost_cache.cache_key(probed, tiny_model)) == pytest.approx(curve)
        assert probed.ctx.n_past == 0 and probed.ctx.pos_max() == -1 and probed.slot.tokens == []
        prompt = probed.tokenize("the cat sat on the mat. the cat sat on the")
        got = probed.generate(prompt, max_tokens=40, sampling=SamplingParams(temperature=0.0))
        got.text()
    finally:
        probed.close()
    from gemma_cli.engine import DraftConfig, Engine, EngineConfig

    plain = Engine(tiny_model, DraftConfig(source="none"), EngineConfig(n_ctx=512, n_threads=1))
    try:
        ref = plain.generate(prompt, max_tokens=40, sampling=SamplingParams(temperature=0.0))
        ref.text()
    finally:
        plain.close()
    assert got.result.tokens == ref.result.tokens  # the dummy passes left nothing behind in the KV cache


def test_a_drafter_model_engine_does_not_probe(cache, tiny_model, tiny_drafter):
    pair = ModelPair(name="tiny", target=tiny_model, drafter=tiny_drafter, draft_source="model")
    engine = open_engine(pair, EngineChoice(draft="model", draft_tokens=4, ctx=512, threads=1))
    try:
        assert engine.costs.curve == {} and not cache.exists()
    finally:
        engine.close()


def test_a_later_load_measures_only_the_sizes_the_saved_curve_lacks_at_its_pace(cache, tiny_model):
    """The first probe's second of budget may end before the long sizes (about 12 rows for Gemma 3 270M on
    2 cores): a later load measures what is missing, scaled to the saved curve's pace, and nothing once whole."""
    from gemma_cli.engine import pass_probe

    pair = ModelPair(name="tiny", target=tiny_model)
    choice = EngineChoice(draft="ngram", draft_tokens=16, ctx=512, threads=1)
    first = open_engine(pair, choice)
    key = pass_cost_cache.cache_key(first, tiny_model)
    first.close()
    slow = {b: 0.5 * b for b in range(1, 10)}  # a saved curve at a far slower pace than this machine's, 9 sizes
    pass_cost_cache.save(key, slow)
    second = open_engine(pair, choice)
    try:
        curve = second.costs.curve
        assert {b: curve[b] for b in slow} == pytest.approx(slow)  # what was saved stays as saved
        assert sorted(curve) == list(range(1, 18))
        assert all(0.25 < curve[b] < 60.0 for b in range(10, 18))  # measured, put at the saved pace (0.5 s a pass)
    finally:
        second.close()
    assert sorted(pass_cost_cache.load(key)) == list(range(1, 18))
    decodes: list[int] = []
    probe = pass_probe.probe_pass_costs

    def counting(ctx, max_batch, **kwargs):
        out = probe(ctx, max_batch, **kwargs)
        decodes.append(len(out))
        return out

    pass_probe.probe_pass_costs = counting
    try:
        third = open_engine(pair, choice)
        third.close()
    finally:
        pass_probe.probe_pass_costs = probe
    assert decodes == [0]  # whole: nothing measured
