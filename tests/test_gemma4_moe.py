"""The 26B-A4B MoE shape through the real CLI (issue 17, item 3): `show` explains the draft-length advice,
and `gemma bench` runs plain against MTP on the synthetic MoE pair.

Timing is benchmarks/moe_draft_length.py's job (the measured draft length in the catalog comes from it);
these tests assert what the CLI prints and that the bench's figures are consistent, never speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma4_factory import FAMILY, write_gemma4_pair
from gemma_cli.registry.catalog import load_catalog
from hub_server import HubServer, gemma_env, run_gemma

REPO = "ggml-org/gemma-4-26B-A4B-it-GGUF"


@pytest.fixture(scope="module")
def moe_pair(tmp_path_factory) -> tuple[Path, Path]:
    return write_gemma4_pair(tmp_path_factory.mktemp("moe"), FAMILY["26b-a4b"])


def test_catalog_draft_length_for_26b_is_measured_and_explained():
    for name in ("gemma4:26b", "gemma4:26b-q8_0", "gemma4:26b-q4_k_m"):
        entry = load_catalog().lookup(name)
        assert entry.draft_source == "mtp"
        assert "benchmarks/moe_draft_length.py" in entry.draft_advice, name
        assert f"k={entry.draft_tokens}" in entry.draft_advice, name
        assert "gemma bench" in entry.draft_advice and "--tune" in entry.draft_advice, name
        assert not any(u.startswith("draft_tokens: 2 follows the seeds") for u in entry.unconfirmed), name


def test_show_explains_the_moe_draft_advice(moe_pair, tmp_path):
    target, assistant = moe_pair
    entry = load_catalog().lookup("gemma4:26b")
    with HubServer() as hub:
        hub.add(REPO, entry.target.file, target.read_bytes())
        hub.add(REPO, entry.drafter.file, assistant.read_bytes())
        env = gemma_env(tmp_path / "models", hub.endpoint, GEMMA_CACHE=str(tmp_path / "cache"))
        pulled = run_gemma(env, "pull", "gemma4:26b", "-q")
        assert pulled.returncode == 0, pulled.stderr
    shown = run_gemma(env, "show", "gemma4:26b")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"Draft length  {entry.draft_tokens} (recommended)" in lines, shown.stdout
    advice = [line for line in lines if line.startswith("Draft advice  ")]
    assert advice == [f"Draft advice  {entry.draft_advice}"], shown.stdout
    assert "Experts       8 per layer, 2 per token" in shown.stdout
    assert "gemma bench gemma4:26b --tune" in shown.stdout
    as_json = json.loads(run_gemma(env, "show", "gemma4:26b", "--json").stdout)
    assert as_json["draft_advice"] == entry.draft_advice and as_json["draft_tokens"] == entry.draft_tokens


def test_show_of_a_custom_pair_has_no_catalog_advice(moe_pair, tmp_path):
    target, assistant = moe_pair
    env = gemma_env(tmp_path / "models", GEMMA_CACHE=str(tmp_path / "cache"))
    assert run_gemma(env, "create", "mymoe:tiny", "--target", str(target), "--draft", str(assistant), "-q").returncode == 0
    shown = run_gemma(env, "show", "mymoe:tiny")
    assert shown.returncode == 0, shown.stderr
    assert "Draft advice" not in shown.stdout
    assert "Experts       8 per layer, 2 per token" in shown.stdout


def test_bench_runs_plain_against_mtp_on_the_moe_pair(moe_pair, tmp_path):
    target, assistant = moe_pair
    env = gemma_env(tmp_path / "models", GEMMA_CACHE=str(tmp_path / "cache"))
    assert run_gemma(env, "create", "moe:tiny", "--target", str(target), "--draft", str(assistant), "-q").returncode == 0
    done = run_gemma(env, "bench", "moe:tiny", "-w", "prose", "--draft-tokens", "1,3", "--runs", "2", "-n", "24",
                     "--threads", "1", "--ctx", "512", "--json", timeout=240)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    (w,) = data["workloads"]
    plain = w["plain"]
    assert plain["generated_tokens"] == 2 * 24 and plain["draft_proposed"] == 0
    assert [v["label"] for v in w["speculative"]] == ["mtp k<=1", "mtp k<=3"]
    for v in w["speculative"]:
        assert v["draft_source"] == "mtp" and len(v["ratios"]) == 2
        assert v["generated_tokens"] == 2 * 24
        assert 0 <= v["draft_accepted"] <= v["draft_proposed"]
        # every pass emits the target's own token, plus at most k accepted draft tokens
        assert v["target_passes"] <= v["generated_tokens"] <= v["target_passes"] * (1 + v["draft_tokens"])
        assert v["speedup"] > 0 and v["tokens_per_s"] > 0
