"""Gemma 4 MTP drafting on synthetic, architecture-faithful gemma4 + gemma4-assistant pairs.

Real llama.cpp, real MTP context sharing the target's KV cache; only the
weights are synthetic (tests/gemma4_factory.py).
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from gemma4_factory import TINY, write_gemma4_pair
from gemma_cli.compat import check_mtp_pair
from gemma_cli.engine import generate, speculative
from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
from gemma_cli.engine.sampling import SamplingParams
from gemma_cli.errors import IncompatibleModelsError
from gguf_factory import write_llama_gguf
from lossless import assert_few_near_ties, check_greedy_lossless, chi_square_pvalue, exact_continuations, sample_outcomes

GREEDY = SamplingParams(temperature=0.0)
PROMPTS = ["Hello world", "abcabc", "The quick brown fox", "x=1; y=2;", "zz top"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    return write_gemma4_pair(tmp_path_factory.mktemp("g4"))


def _engine(target: Path, assistant: Path | None, k: int = 3, n_ctx: int = 512, threads: int = 1) -> Engine:
    draft = DraftConfig(source="mtp", tokens=k, model_path=assistant, adaptive=False) if assistant else DraftConfig(source="none")
    return Engine(target, draft, EngineConfig(n_ctx=n_ctx, n_threads=threads))


def _check_stats(stats) -> None:
    assert stats.draft_accepted <= stats.draft_proposed
    assert stats.generated_tokens == stats.emitted_from_draft + stats.emitted_from_target
    assert stats.emitted_from_draft <= stats.draft_accepted


def test_pair_loads_and_drafts(pair):
    target, assistant = pair
    check_mtp_pair(target, assistant)  # the fixture pair is valid
    with _engine(target, assistant) as eng:
        assert eng.drafter.name == "mtp"
        g = eng.generate("Hello", max_tokens=32, sampling=GREEDY)
        g.text()
        s = g.result.stats
        assert len(g.result.tokens) == 32
        assert s.draft_proposed > 0 and s.draft_accepted > 0
        assert s.tokens_per_pass > 1.5  # the planted structure makes MTP drafts useful
        _check_stats(s)


def test_greedy_mtp_equals_plain_for_every_draft_length(pair):
    target, assistant = pair
    plain = _engine(target, None)
    spec = _engine(target, assistant, k=1)
    verdicts, proposed, accepted = [], 0, 0
    for text in PROMPTS:
        prompt = plain.tokenize(text)
        ref = plain.generate(prompt, max_tokens=40, sampling=GREEDY)
        ref.text()
        for k in range(1, 7):
            spec.set_draft(DraftConfig(source="mtp", tokens=k, model_path=assistant, adaptive=False))
            got = spec.generate(prompt, max_tokens=40, sampling=GREEDY)
            got.text()
            _check_stats(got.result.stats)
            proposed += got.result.stats.draft_proposed
            accepted += got.result.stats.draft_accepted
            # equal, or a divergence on a near-tie top-2 logit gap (asserted inside)
            verdicts.append(check_greedy_lossless(plain, prompt, ref.result, got.result))
    print(f"MTP greedy: {verdicts.count('equal')}/{len(verdicts)} equal; acceptance {accepted / proposed:.2f}")
    assert_few_near_ties(verdicts)
    assert 0.3 < accepted / proposed < 0.98  # drafts both accepted and rejected: rollback is exercised


def test_no_kv_leak_after_many_rejections(pair):
    target, assistant = pair
    eng = _engine(target, assistant, k=4)
    plain = _engine(target, None)
    prompt = eng.tokenize("The quick brown fox")
    g = eng.generate(prompt, max_tokens=200, sampling=GREEDY)
    g.text()
    s = g.result.stats
    assert s.draft_proposed - s.draft_accepted > 10, "expected many rejected drafts"
    ctx = eng.ctx
    assert ctx.pos_max() + 1 == ctx.n_past == eng.cached_tokens
    emitted = prompt + g.result.tokens
    # the KV holds every accepted token but the pending one; a step may have run past max_tokens
    assert len(emitted) - 1 <= ctx.n_past <= len(emitted) - 1 + 4
    assert eng._cached[: len(emitted) - 1] == emitted[: len(emitted) - 1]
    # what the cache holds is right: continuing from it equals plain decoding from scratch
    more = eng.generate(emitted, max_tokens=30, sampling=GREEDY)
    more.text()
    ref = plain.generate(emitted, max_tokens=30, sampling=GREEDY)
    ref.text()
    assert check_greedy_lossless(plain, emitted, ref.result, more.result) == "equal"
    assert ctx.pos_max() + 1 == ctx.n_past == eng.cached_tokens


def test_sampled_generation_then_greedy_still_exact(pair):
    """Sampling with rejections leaves no stale hidden row or KV behind."""
    target, assistant = pair
    eng, plain = _engine(target, assistant, k=3), _engine(target, None)
    for seed in range(5):
        g = eng.generate("abc", max_tokens=30, sampling=SamplingParams(temperature=1.0, seed=seed))
        g.text()
        _check_stats(g.result.stats)
        assert eng.ctx.pos_max() + 1 == eng.ctx.n_past
    prompt = eng.tokenize("zz top")
    got, ref = eng.generate(prompt, max_tokens=30), plain.generate(prompt, max_tokens=30)
    got.text(), ref.text()
    check_greedy_lossless(plain, prompt, ref.result, got.result)


# -- refusing broken pairs, before llama.cpp can abort ------------------------------------

BROKEN = {
    "embedding_length_out": ({"assistant_overrides": {"embedding_length_out": 48}}, "embedding_length_out"),
    "no_nextn_layers": ({"assistant_overrides": {"nextn_predict_layers": None}}, "nextn_predict_layers"),
    "head_count_kv": ({"assistant_overrides": {"attention.head_count_kv": 2}}, "head_count_kv"),
    "target_pattern": ({"spec": replace(TINY, swa_pattern=(True, False, False, True))}, "[SWA, full]"),
    "target_no_swa": ({"spec": replace(TINY, swa_pattern=(False,) * 4)}, "[SWA, full]"),
    "one_layer_assistant": ({"spec": replace(TINY, a_n_layer=1, a_swa_pattern=(True,))}, "at least 2 layers"),
    "assistant_no_swa": ({"spec": replace(TINY, a_swa_pattern=(False, False))}, "sliding-window"),
}


@pytest.fixture(scope="module")
def broken_pairs(tmp_path_factory, pair) -> dict[str, tuple[Path, Path, str]]:
    base = tmp_path_factory.mktemp("broken")
    out: dict[str, tuple[Path, Path, str]] = {}
    for name, (kw, needle) in BROKEN.items():
        t, a = write_gemma4_pair(base / name, kw.get("spec", TINY), assistant_overrides=kw.get("assistant_overrides"))
        out[name] = (t, a, needle)
    other_vocab = write_gemma4_pair(base / "vocab", replace(TINY, n_vocab=120))[1]
    out["vocabulary"] = (pair[0], other_vocab, "different vocabularies")
    llama = write_llama_gguf(base / "llama.gguf", seed=5)
    out["not_an_assistant"] = (pair[0], llama, "not a Gemma 4 MTP assistant")
    out["target_not_gemma4"] = (llama, pair[1], "the target is 'llama'")
    return out


@pytest.mark.parametrize("name", [*BROKEN, "vocabulary", "not_an_assistant", "target_not_gemma4"])
def test_check_refuses_broken_pair_with_clear_message(broken_pairs, name):
    t, a, needle = broken_pairs[name]
    with pytest.raises(IncompatibleModelsError) as err:
        check_mtp_pair(t, a)
    msg = str(err.value)
    assert needle in msg and a.name in msg and "\n" not in msg, msg


def test_engine_refuses_broken_pairs_without_aborting(broken_pairs):
    """Through the real Engine, in a child process: an abort in llama.cpp would show as a signal.

    `target_no_swa` is left out: such a target aborts llama.cpp on its own
    (GGML_ASSERT(is_swa_any) when its context is created), before any drafter
    exists; only a check before the target loads (check_mtp_pair) stops it.
    """
    cases = {name: [str(t), str(a)] for name, (t, a, _) in broken_pairs.items() if name != "target_no_swa"}
    script = textwrap.dedent(
        """
        import json, sys
        from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
        from gemma_cli.errors import GemmaError
        out = {}
        for name, (t, a) in json.loads(sys.argv[1]).items():
            try:
                Engine(t, DraftConfig(source="mtp", tokens=3, model_path=a), EngineConfig(n_ctx=256, n_threads=1))
                out[name] = "accepted"
            except GemmaError as e:
                out[name] = type(e).__name__ + ": " + str(e)
        print(json.dumps(out))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, f"child died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # Until Engine calls check_mtp_pair before loading the assistant, a drafter
    # that llama.cpp itself refuses to load surfaces as ModelFileError (still
    # clean: no abort). Once it does, every refusal is IncompatibleModelsError.
    preload = "check_mtp_pair" in inspect.getsource(generate)
    for name, (_, _, needle) in broken_pairs.items():
        if name not in cases:
            continue
        print(name, "->", result[name])
        if not preload and result[name].startswith("ModelFileError"):
            continue
        assert result[name].startswith("IncompatibleModelsError") and needle in result[name], (name, result[name])


# -- sampling: the output distribution must be the target's ---------------------------------

T1 = SamplingParams(temperature=1.0)
N_SAMPLES = 2500
LENGTH = 3  # the first token comes from a plain pass, tokens 2-3 from MTP drafts + rejection sampling


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory) -> tuple[Path, Path]:
    """12-token vocabulary, soft planted structure: continuations enumerable, drafts often rejected."""
    spec = replace(TINY, n_vocab=12, sharpness=3.0, noise=0.8, seed=7)
    return write_gemma4_pair(tmp_path_factory.mktemp("g4small"), spec)


@pytest.fixture(scope="module")
def small_prompt(small_pair) -> list[int]:
    return [1, 5, 6, 7, 8]


@pytest.fixture(scope="module")
def exact(small_pair, small_prompt):
    eng = _engine(small_pair[0], None, n_ctx=64, threads=1)
    dist = exact_continuations(eng, small_prompt, LENGTH, T1)
    eng.close()
    assert abs(sum(dist.values()) - 1) < 1e-6
    return dist


def test_mtp_sampling_matches_exact_target_distribution(small_pair, small_prompt, exact):
    eng = _engine(*small_pair, k=2, n_ctx=64, threads=1)
    counts = sample_outcomes(eng, small_prompt, LENGTH, T1, N_SAMPLES)
    stat, p, dof = chi_square_pvalue(counts, exact)
    print(f"MTP sampling: chi2={stat:.1f} dof={dof} p={p:.3g}")
    assert dof >= 8
    assert p > 1e-3, (stat, dof)
    # the drafts took part: without rejection sampling doing real work this test would prove little
    accepted = proposed = 0
    for seed in range(20):
        g = eng.generate(small_prompt, max_tokens=20, sampling=replace(T1, seed=seed))
        g.text()
        accepted += g.result.stats.draft_accepted
        proposed += g.result.stats.draft_proposed
    print(f"MTP sampled acceptance {accepted}/{proposed}")
    assert 0 < accepted < proposed


def _accept_all(target, draft, token, rng):
    return True


def test_chi_square_rejects_a_wrong_rule_with_mtp(small_pair, small_prompt, exact, monkeypatch):
    """Same sample size, a known-wrong acceptance rule: the test must notice."""
    monkeypatch.setattr(speculative, "accept_draft", _accept_all)
    eng = _engine(*small_pair, k=2, n_ctx=64, threads=1)
    counts = sample_outcomes(eng, small_prompt, LENGTH, T1, N_SAMPLES)
    stat, p, dof = chi_square_pvalue(counts, exact)
    print(f"accept-all rule: chi2={stat:.1f} dof={dof} p={p:.3g}")
    assert p < 1e-4, (stat, dof)


def test_switching_to_mtp_keeps_a_reused_prompt_prefix_exact(pair):
    """Regression: linking the assistant's context to a target context that already holds KV cells spoils
    them (the reused prefix then gave other first tokens); the engine starts such a switch from an empty cache."""
    target, assistant = pair
    with _engine(target, None) as eng:
        prompt = eng.tokenize("The quick brown fox")
        ref = eng.generate(prompt, max_tokens=12, sampling=GREEDY)
        ref.text()
        eng.set_draft(DraftConfig(source="mtp", tokens=3, model_path=assistant, adaptive=False))
        got = eng.generate(prompt, max_tokens=12, sampling=GREEDY)
        got.text()
        assert got.result.tokens == ref.result.tokens
        assert got.result.stats.draft_proposed > 0


@pytest.mark.parametrize("source,k", [("ngram", 8), ("mtp", 4)])
def test_rollbacks_far_past_the_sliding_window_stay_exact(pair, source, k):
    """llama.cpp hands a sequence's cells that fell out of its sliding window (16 here) to new tokens;
    rejected drafts then move the window back. 300 tokens with fixed long drafts (most rejected) must
    still equal plain decoding token for token."""
    target, assistant = pair
    plain = _engine(target, None, n_ctx=1024)
    spec = Engine(target, DraftConfig(source=source, tokens=k, adaptive=False, model_path=assistant if source == "mtp" else None),
                  EngineConfig(n_ctx=1024, n_threads=1))
    rejected = 0
    for text in PROMPTS[:3]:
        prompt = plain.tokenize(text)
        ref = plain.generate(prompt, max_tokens=300, sampling=GREEDY)
        ref.text()
        got = spec.generate(prompt, max_tokens=300, sampling=GREEDY)
        got.text()
        assert check_greedy_lossless(plain, prompt, ref.result, got.result) == "equal"
        rejected += got.result.stats.draft_proposed - got.result.stats.draft_accepted
    assert rejected > 200
    spec.close()
    plain.close()
