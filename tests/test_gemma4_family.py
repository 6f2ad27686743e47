"""Every Gemma 4 family shape, scaled down, through the real llama.cpp MTP path (issue 17).

Shapes (tests/gemma4_factory.FAMILY): E2B/E4B (per-layer embeddings, KV-shared
trailing layers with 2x FFN, soft-capped logits), 26B-A4B (router + experts
beside the dense shared expert, fewer KV heads and K-as-V on full layers),
12B/31B dense (5:1 SWA/full, different head sizes and KV heads per kind).
For each: `gemma create` accepts the pair, greedy MTP output equals plain
output for draft lengths 1..6 (near-tie rule), sampled output matches the
exact target distribution (chi-square), no KV leak after many rejections,
and broken variants are refused from the header with one line, never an abort.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from gemma4_factory import FAMILY, write_gemma4_pair
from gemma_cli.compat import check_gemma4_target, check_mtp_pair
from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
from gemma_cli.engine.sampling import SamplingParams
from gemma_cli.errors import IncompatibleModelsError
from hub_server import assert_one_line_error, gemma_env, run_gemma
from lossless import check_greedy_lossless, chi_square_pvalue, exact_continuations, sample_outcomes

GREEDY = SamplingParams(temperature=0.0)
T1 = SamplingParams(temperature=1.0)
PROMPTS = ["Hello world", "The quick brown fox"]
SHAPES = list(FAMILY)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    base = tmp_path_factory.mktemp("family")
    return {name: write_gemma4_pair(base / name, spec) for name, spec in FAMILY.items()}


def _engine(target: Path, assistant: Path | None, k: int = 3, n_ctx: int = 512) -> Engine:
    draft = DraftConfig(source="mtp", tokens=k, model_path=assistant, adaptive=False) if assistant else DraftConfig(source="none")
    return Engine(target, draft, EngineConfig(n_ctx=n_ctx, n_threads=1))


def _stats_consistent(s) -> None:
    assert s.draft_accepted <= s.draft_proposed
    assert s.generated_tokens == s.emitted_from_draft + s.emitted_from_target


@pytest.mark.parametrize("shape", SHAPES)
def test_create_accepts_the_pair(pairs, shape, tmp_path):
    target, assistant = pairs[shape]
    check_mtp_pair(target, assistant)
    check_gemma4_target(target)
    env = gemma_env(tmp_path / "models")
    made = run_gemma(env, "create", f"fam-{shape}:tiny", "--target", str(target), "--draft", str(assistant))
    assert made.returncode == 0, made.stderr
    shown = run_gemma(env, "show", f"fam-{shape}:tiny")
    assert shown.returncode == 0 and "mtp" in shown.stdout.lower(), shown.stdout + shown.stderr
    assert ("Experts       8 per layer, 2 per token" in shown.stdout) == (shape == "26b-a4b"), shown.stdout
    assert "Memory        about" in shown.stdout


@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_mtp_equals_plain_for_every_draft_length(pairs, shape):
    target, assistant = pairs[shape]
    plain, spec = _engine(target, None), _engine(target, assistant, k=1)
    verdicts, proposed, accepted = [], 0, 0
    for text in PROMPTS:
        prompt = plain.tokenize(text)
        ref = plain.generate(prompt, max_tokens=32, sampling=GREEDY)
        ref.text()
        for k in range(1, 7):
            spec.set_draft(DraftConfig(source="mtp", tokens=k, model_path=assistant, adaptive=False))
            got = spec.generate(prompt, max_tokens=32, sampling=GREEDY)
            got.text()
            _stats_consistent(got.result.stats)
            proposed += got.result.stats.draft_proposed
            accepted += got.result.stats.draft_accepted
            verdicts.append(check_greedy_lossless(plain, prompt, ref.result, got.result))
    plain.close(), spec.close()
    near = [v for v in verdicts if v != "equal"]
    print(f"{shape}: {len(verdicts) - len(near)}/{len(verdicts)} equal; near-ties {near}; acceptance {accepted / proposed:.2f}")
    assert len(near) <= len(verdicts) // 4, near
    assert 0.2 < accepted / proposed < 0.99  # drafts accepted and rejected: rollback exercised


@pytest.mark.parametrize("shape", SHAPES)
def test_no_kv_leak_after_many_rejections(pairs, shape):
    target, assistant = pairs[shape]
    eng, plain = _engine(target, assistant, k=4), _engine(target, None)
    prompt = eng.tokenize("The quick brown fox")
    g = eng.generate(prompt, max_tokens=120, sampling=GREEDY)
    g.text()
    s = g.result.stats
    assert s.draft_proposed - s.draft_accepted > 10, "expected many rejected drafts"
    ctx = eng.ctx
    assert ctx.pos_max() + 1 == ctx.n_past == eng.cached_tokens
    emitted = prompt + g.result.tokens
    assert len(emitted) - 1 <= ctx.n_past <= len(emitted) - 1 + 4
    more = eng.generate(emitted, max_tokens=20, sampling=GREEDY)
    ref = plain.generate(emitted, max_tokens=20, sampling=GREEDY)
    more.text(), ref.text()
    check_greedy_lossless(plain, emitted, ref.result, more.result)
    assert ctx.pos_max() + 1 == ctx.n_past == eng.cached_tokens
    eng.close(), plain.close()


# -- sampling: the output distribution is the target's, on every architecture path ------------

N_SAMPLES = 1200
LENGTH = 3


@pytest.mark.parametrize("shape", SHAPES)
def test_mtp_sampling_matches_exact_target_distribution(shape, tmp_path):
    """12-token vocabulary, soft planted structure: continuations enumerable, drafts often rejected."""
    spec = replace(FAMILY[shape], n_vocab=12, sharpness=3.0)
    target, assistant = write_gemma4_pair(tmp_path, spec)
    prompt = [1, 5, 6, 7, 8]
    plain = _engine(target, None, n_ctx=64)
    exact = exact_continuations(plain, prompt, LENGTH, T1)
    plain.close()
    assert abs(sum(exact.values()) - 1) < 1e-6
    eng = _engine(target, assistant, k=2, n_ctx=64)
    counts = sample_outcomes(eng, prompt, LENGTH, T1, N_SAMPLES)
    stat, p, dof = chi_square_pvalue(counts, exact)
    accepted = proposed = 0
    for seed in range(10):
        g = eng.generate(prompt, max_tokens=16, sampling=replace(T1, seed=seed))
        g.text()
        accepted += g.result.stats.draft_accepted
        proposed += g.result.stats.draft_proposed
    eng.close()
    print(f"{shape}: chi2={stat:.1f} dof={dof} p={p:.3g}; sampled acceptance {accepted}/{proposed}")
    assert dof >= 5
    assert p > 1e-3, (stat, dof)
    assert 0 < accepted < proposed  # rejection sampling did real work


# -- broken variants: refused from the header, one line, never an abort -----------------------

# name: (shape, write_gemma4_pair keywords, needle, target-only fault)
BROKEN = {
    "e2b_missing_ple_proj": ("e2b", {"drop_tensors": ["blk.3.proj.weight"]}, "blk.3.proj.weight", True),
    "e2b_ple_width": ("e2b", {"target_overrides": {"embedding_length_per_layer_input": 4}}, "per_layer_token_embd", True),
    "e2b_all_kv_shared": ("e2b", {"target_overrides": {"attention.shared_kv_layers": 9}}, "at least 2", True),
    "e2b_masked_embd_assistant": ("e2b", {"spec": replace(FAMILY["e2b"], a_centroids=16)}, "masked_embd", False),
    "e4b_shared_kv_misaligned": ("e4b", {"target_overrides": {"attention.shared_kv_layers": 5}}, "would reuse layer", True),
    "26b_used_over_count": ("26b-a4b", {"target_overrides": {"expert_used_count": 16}}, "exceeds expert_count", True),
    "26b_wrong_expert_count": ("26b-a4b", {"target_overrides": {"expert_count": 16}}, "expert_count 16", True),
    "26b_missing_expert": ("26b-a4b", {"drop_tensors": ["blk.2.ffn_up_exps.weight"]}, "ffn_up_exps", True),
    "12b_missing_attn_k": ("12b", {"drop_tensors": ["blk.1.attn_k.weight"]}, "blk.1.attn_k.weight", True),
    "31b_width": ("31b", {"assistant_overrides": {"embedding_length_out": 48}}, "embedding_length_out", False),
}


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    base = tmp_path_factory.mktemp("family-broken")
    out = {}
    for name, (shape, kw, _, _) in BROKEN.items():
        kw = dict(kw)
        out[name] = write_gemma4_pair(base / name, kw.pop("spec", FAMILY[shape]), **kw)
    return out


@pytest.mark.parametrize("name", list(BROKEN))
def test_header_check_refuses_broken_variant(broken, name):
    target, assistant = broken[name]
    _, _, needle, target_only = BROKEN[name]
    with pytest.raises(IncompatibleModelsError) as err:
        check_mtp_pair(target, assistant)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg, msg
    if target_only:  # plain runs of the target alone are refused too
        with pytest.raises(IncompatibleModelsError, match=needle.replace(".", r"\.")):
            check_gemma4_target(target)


def test_broken_variants_refused_without_abort_by_engine_and_create(broken, tmp_path):
    """Through the real Engine in a child (an abort would show as a signal), and `gemma create`."""
    cases = {name: [str(t), str(a)] for name, (t, a) in broken.items()}
    script = textwrap.dedent(
        """
        import json, sys
        from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
        from gemma_cli.errors import GemmaError
        out = {}
        for name, (t, a) in json.loads(sys.argv[1]).items():
            for mode, draft in (("mtp", DraftConfig(source="mtp", tokens=3, model_path=a)), ("plain", DraftConfig(source="none"))):
                try:
                    Engine(t, draft, EngineConfig(n_ctx=256, n_threads=1)).close()
                    out[name + ":" + mode] = "accepted"
                except GemmaError as e:
                    out[name + ":" + mode] = type(e).__name__ + ": " + str(e)
        print(json.dumps(out))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, f"child died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (_, _, needle, target_only) in BROKEN.items():
        got = result[name + ":mtp"]
        assert got.startswith("IncompatibleModelsError") and needle in got, (name, got)
        plain = result[name + ":plain"]
        if target_only:
            assert plain.startswith("IncompatibleModelsError") and needle in plain, (name, plain)
        else:
            assert plain == "accepted", (name, plain)
    env = gemma_env(tmp_path / "models")
    for name in ("26b_used_over_count", "e2b_masked_embd_assistant"):
        t, a = broken[name]
        assert_one_line_error(run_gemma(env, "create", "broken:x", "--target", str(t), "--draft", str(a)), BROKEN[name][2])
