"""Speculative decoding must be lossless: greedy equals the target's greedy; sampling has its distribution."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from gemma_cli.engine import speculative
from gemma_cli.engine.draft_length import DraftLengthController
from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
from gemma_cli.engine.sampling import SamplingParams, warp
from gemma_cli.engine.speculative import TokenSampler
from lossless import (
    NEAR_TIE,
    assert_few_near_ties,
    check_greedy_lossless,
    check_sampled_coupling,
    chi_square_pvalue,
    edge_tolerance,
    exact_continuations,
    next_logits,
    sample_outcomes,
)

GREEDY = SamplingParams(temperature=0.0)
TINY_PROMPTS = ["abcabcabcab", "hello hello hello hel", "the cat sat on the mat. the cat sat", "x=1; y=2; x=1; y="]


def _plain(path, n_ctx=512):
    return Engine(path, DraftConfig(source="none"), EngineConfig(n_ctx=n_ctx, n_threads=2))


@pytest.mark.parametrize("source", ["ngram", "model"])
def test_greedy_lossless_tiny_all_draft_lengths(tiny_model, tiny_drafter, source):
    plain = _plain(tiny_model)
    drafter = tiny_drafter if source == "model" else None
    spec = Engine(tiny_model, DraftConfig(source=source, tokens=1, model_path=drafter), EngineConfig(n_ctx=512, n_threads=2))
    verdicts = []
    for text in TINY_PROMPTS:
        prompt = plain.tokenize(text)
        ref = plain.generate(prompt, max_tokens=48, sampling=GREEDY)
        ref.text()
        for k in range(1, 9):
            spec.set_draft(DraftConfig(source=source, tokens=k, model_path=drafter, adaptive=False))
            got = spec.generate(prompt, max_tokens=48, sampling=GREEDY)
            got.text()
            verdicts.append(check_greedy_lossless(plain, prompt, ref.result, got.result))
            ref = plain.generate(prompt, max_tokens=48, sampling=GREEDY)  # plain engine was reset by the check
            ref.text()
    assert spec.drafter.name == source
    print(f"{source}: {verdicts.count('equal')}/{len(verdicts)} equal")
    assert_few_near_ties(verdicts)


def test_self_draft_accepts_everything_and_stops_inside_a_draft(tiny_model):
    """The target drafting for itself: every draft is accepted, and EOS inside an accepted draft ends output."""
    plain = _plain(tiny_model)
    spec = Engine(tiny_model, DraftConfig(source="model", tokens=8, model_path=tiny_model, adaptive=False), EngineConfig(n_ctx=512, n_threads=2))
    prompt = plain.tokenize("abc")  # this fixture model answers "abc" with 86 tokens and EOS
    ref = plain.generate(prompt, max_tokens=200, sampling=GREEDY)
    ref.text()
    got = spec.generate(prompt, max_tokens=200, sampling=GREEDY)
    got.text()
    assert ref.result.stop_reason.value == "eos", "fixture model is expected to emit EOS"
    assert got.result.tokens == ref.result.tokens
    assert got.result.stop_reason == ref.result.stop_reason
    s = got.result.stats
    assert s.acceptance_rate > 0.95
    assert s.emitted_from_draft > s.emitted_from_target


GEMMA3_NGRAM_TEXTS = [
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. Monday, Tuesday,",
    "<ul>\n  <li>one</li>\n  <li>two</li>\n  <li>three</li>\n  <li>",
]


@pytest.fixture(scope="module")
def gemma3_plain_refs(gemma3_path):
    """The plain engine and its greedy output for each text, once for every draft length below."""
    plain = _plain(gemma3_path, n_ctx=1024)
    refs = {}
    for text in GEMMA3_NGRAM_TEXTS:
        prompt = plain.tokenize(text)
        ref = plain.generate(prompt, max_tokens=48, sampling=GREEDY)
        ref.text()
        refs[text] = (prompt, ref.result)
    yield plain, refs
    plain.close()


@pytest.mark.slow
# A typical draft, and past the exact rows (docs/batching.md). k=1 (2-row passes) was dropped in session 18 for
# the suite's time: passes of up to 7 rows are bit-identical to one-row passes (test_engine.py's exact-rows test),
# and with fixed k=4 the n-gram drafter proposes shorter drafts where its matches are shorter.
@pytest.mark.parametrize("k", [4, 8])
def test_greedy_lossless_gemma3_ngram(gemma3_path, gemma3_plain_refs, k):
    plain, refs = gemma3_plain_refs
    spec = Engine(gemma3_path, DraftConfig(source="ngram", tokens=k, adaptive=False), EngineConfig(n_ctx=1024, n_threads=2))
    verdicts = []
    for text in GEMMA3_NGRAM_TEXTS:
        prompt, ref = refs[text]
        got = spec.generate(prompt, max_tokens=48, sampling=GREEDY)
        got.text()
        verdicts.append(check_greedy_lossless(plain, prompt, ref, got.result))
        assert got.result.stats.draft_proposed > 0
    spec.close()
    print(f"gemma3 270M ngram k={k}: {verdicts}")
    # Each divergence was checked above to be one llama.cpp's rounding explains. They are not rare on this
    # model (exact one-token ties; batch shapes move a top-2 gap by up to ~0.6), but not every run has one.
    assert verdicts.count("equal") >= 1


@pytest.mark.slow
def test_greedy_lossless_gemma3_self_draft(gemma3_path):
    plain = _plain(gemma3_path, n_ctx=512)
    spec = Engine(gemma3_path, DraftConfig(source="model", tokens=4, model_path=gemma3_path, adaptive=False), EngineConfig(n_ctx=512, n_threads=2))
    prompt = plain.tokenize("Here is a list of fruits: apple, banana, cherry,")
    ref = plain.generate(prompt, max_tokens=32, sampling=GREEDY)
    ref.text()
    got = spec.generate(prompt, max_tokens=32, sampling=GREEDY)
    got.text()
    verdict = check_greedy_lossless(plain, prompt, ref.result, got.result)
    print("gemma3 270M self-draft:", verdict)  # "equal", or a near-tie whose gap < NEAR_TIE was asserted inside
    assert got.result.stats.acceptance_rate > 0.8


def test_the_checks_reject_divergences_that_float_error_cannot_explain(tiny_model):
    """The excuses have power: a divergence to a token clearly below the top (greedy), or to a
    token whose slice edge is far from the position's uniform (sampled), fails the check."""
    plain = _plain(tiny_model)
    prompt = plain.tokenize(TINY_PROMPTS[0])
    j = 3
    ref = plain.generate(prompt, max_tokens=8, sampling=GREEDY)
    ref.text()
    logits = next_logits(plain, prompt + ref.result.tokens[:j])
    below = next(int(t) for t in np.argsort(-logits) if logits.max() - logits[t] > NEAR_TIE)
    wrong = replace(ref.result, tokens=ref.result.tokens[:j] + [below] + ref.result.tokens[j + 1 :])
    with pytest.raises(AssertionError, match="not a near-tie"):
        check_greedy_lossless(plain, prompt, ref.result, wrong)

    p, j = SamplingParams(temperature=1.0, seed=0), 1
    sref = plain.generate(prompt, max_tokens=8, sampling=p)
    sref.text()
    dist = warp(next_logits(plain, prompt + sref.result.tokens[:j]), p)
    u = TokenSampler(p).uniform(j)
    edges = np.cumsum(dist.probs) / dist.probs.sum()
    assert np.min(np.abs(edges - u)) < 0.01  # here "u near any edge" would excuse every token: edges crowd
    ids = dist.ids.tolist()
    chosen = ids.index(sref.result.tokens[j])
    # a token whose slice is separated from the chosen one by clearly more than float error
    far = [i for i in range(len(ids)) if abs(i - chosen) >= 2 and max(abs(u - edges[min(i, chosen)]),
                                                                          abs(u - edges[max(i, chosen) - 1])) > 2 * edge_tolerance(1.0)]
    assert far, "fixture: need a distribution with more than a few slices"
    wrong = replace(sref.result, tokens=sref.result.tokens[:j] + [ids[far[0]]] + sref.result.tokens[j + 1 :])
    with pytest.raises(AssertionError, match="a bug"):
        check_sampled_coupling(plain, prompt, p, sref.result, wrong)


# -- sampling: the output distribution must be the target's --------------------------------


@pytest.mark.parametrize("k,adaptive", [(1, False), (4, False), (8, True)])
def test_sampled_ngram_reproduces_plain_sampling_token_for_token(tiny_model, k, adaptive):
    """One uniform per output position: with the same seed, drafting changes the speed, not the text."""
    plain = _plain(tiny_model)
    spec = Engine(tiny_model, DraftConfig(source="ngram", tokens=k, adaptive=adaptive), EngineConfig(n_ctx=512, n_threads=2))
    params = SamplingParams(temperature=0.5, top_k=40, top_p=0.95)
    accepted = rejected = 0
    for seed in range(6):
        for text in TINY_PROMPTS:
            p = SamplingParams(params.temperature, params.top_k, params.top_p, params.min_p, seed)
            prompt = plain.tokenize(text)
            ref = plain.generate(prompt, max_tokens=40, sampling=p)
            ref.text()
            if adaptive:  # start from flat costs so timing, not a prior, steers k as measurements come in
                spec.costs.seed({b: 1e-4 for b in range(1, k + 2)})
            got = spec.generate(prompt, max_tokens=40, sampling=p)
            got.text()
            assert check_sampled_coupling(plain, prompt, p, ref.result, got.result) == "equal"
            s = got.result.stats
            accepted += s.draft_accepted
            rejected += s.draft_proposed - s.draft_accepted
    assert accepted > 20 and rejected > 20  # both branches of the verification ran


@pytest.mark.slow
def test_sampled_ngram_reproduces_plain_sampling_gemma3(gemma3_path):
    plain = _plain(gemma3_path, n_ctx=1024)
    # The default draft source and length (16): when sampling, the controller drafts at most MAX_SAMPLED = 4 tokens, so
    # passes have <= 5 rows, whose logits llama.cpp computes exactly as one-token passes (from 8 rows on they differ by
    # up to ~1 logit: docs/batching.md), so the coupling is tested, not the numerics.
    assert DraftLengthController.MAX_SAMPLED <= 4
    spec = Engine(gemma3_path, DraftConfig(source="ngram", tokens=16), EngineConfig(n_ctx=1024, n_threads=2))
    prompt = plain.tokenize("def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n")
    verdicts, accepted = [], 0
    for seed in range(3):
        p = SamplingParams(temperature=1.0, top_k=64, top_p=0.95, seed=seed)
        ref = plain.generate(prompt, max_tokens=64, sampling=p)
        ref.text()
        got = spec.generate(prompt, max_tokens=64, sampling=p)
        got.text()
        verdicts.append(check_sampled_coupling(plain, prompt, p, ref.result, got.result))
        accepted += got.result.stats.draft_accepted
    print("gemma3 270M sampled n-gram:", verdicts, "accepted drafts:", accepted)
    assert verdicts.count("equal") >= 2  # a boundary divergence (edge asserted inside) stays a rare event
    assert accepted > 0


T1 = SamplingParams(temperature=1.0)
N_SAMPLES = 3000
PROMPT = [1, 4, 5, 6, 4, 5, 6, 4, 5]  # <s> a b c a b c a b : n-gram lookup proposes "c a"


@pytest.fixture(scope="module")
def exact(small_vocab_model):
    eng = _plain(small_vocab_model, n_ctx=64)
    dist = exact_continuations(eng, PROMPT, 2, T1)
    eng.close()
    assert abs(sum(dist.values()) - 1) < 1e-6
    return dist


def _spec(model, drafter=None, source="model", k=2):
    return Engine(model, DraftConfig(source=source, tokens=k, model_path=drafter, adaptive=False), EngineConfig(n_ctx=64, n_threads=1))


def test_plain_sampling_matches_exact_distribution(small_vocab_model, exact):
    counts = sample_outcomes(_plain(small_vocab_model, 64), PROMPT, 2, T1, N_SAMPLES)
    stat, p, dof = chi_square_pvalue(counts, exact)
    assert p > 1e-3, (stat, dof)


@pytest.mark.parametrize("source", ["ngram", "model"])
def test_speculative_sampling_matches_exact_distribution(small_vocab_model, small_vocab_drafter, exact, source):
    eng = _spec(small_vocab_model, small_vocab_drafter if source == "model" else None, source)
    counts = sample_outcomes(eng, PROMPT, 2, T1, N_SAMPLES)
    stat, p, dof = chi_square_pvalue(counts, exact)
    print(f"{source}: chi2={stat:.1f} dof={dof} p={p:.3g}")
    assert p > 1e-3, (stat, dof)


def _wrong_accept_all(target, draft, token, rng):
    return True


def _wrong_resample_from_target(target, draft, rejected):
    return target


@pytest.mark.parametrize("wrong", ["accept_all", "resample_target"])
def test_chi_square_catches_a_wrong_rule(small_vocab_model, small_vocab_drafter, exact, monkeypatch, wrong):
    """The test above has power: the same sample size rejects known-wrong acceptance rules."""
    if wrong == "accept_all":
        monkeypatch.setattr(speculative, "accept_draft", _wrong_accept_all)
    else:
        monkeypatch.setattr(speculative, "residual", _wrong_resample_from_target)
    eng = _spec(small_vocab_model, small_vocab_drafter)
    counts = sample_outcomes(eng, PROMPT, 2, T1, N_SAMPLES)
    stat, p, dof = chi_square_pvalue(counts, exact)
    assert p < 1e-4, f"wrong rule {wrong} not detected: chi2={stat:.1f} dof={dof} p={p:.3g}"


def test_rejection_sampling_accepts_more_than_sample_and_match(small_vocab_model, exact):
    """Self-drafting at T=1: rejection sampling accepts ~every draft; sample-and-match only sum(p^2)."""
    eng = _spec(small_vocab_model, small_vocab_model, k=1)
    accepted = proposed = 0
    for seed in range(400):
        g = eng.generate(PROMPT, max_tokens=2, sampling=SamplingParams(temperature=1.0, seed=seed))
        g.text()
        accepted += g.stats.draft_accepted
        proposed += g.stats.draft_proposed
    first = Counter()
    for outcome_, p in exact.items():
        first[outcome_[0]] += p
    sample_and_match = sum(p * p for p in first.values())
    rs = accepted / proposed
    print(f"rejection sampling acceptance {rs:.3f} vs sample-and-match {sample_and_match:.3f}")
    assert rs > 0.97
    assert rs > sample_and_match + 0.2
