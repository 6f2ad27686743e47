"""`gemma bench` through the real CLI on a tiny synthetic GGUF (real llama.cpp inference).

Timings are never asserted (the wall clock here is coarse and shared); the
figures must be present, consistent with each other and within their ranges.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gguf_factory import write_llama_gguf

# Repetitive text: the n-gram drafter finds matches, so acceptance is exercised.
WORKLOAD = "abc def abc def abc def ghi abc def abc def abc def ghi abc def abc " * 3


@pytest.fixture(scope="module")
def bench_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny model (its vocabulary has byte fallback, so any workload text tokenizes)."""
    return write_llama_gguf(tmp_path_factory.mktemp("bench") / "bench-tiny.gguf", seed=5)


@pytest.fixture()
def workload_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompt.txt"
    path.write_text(WORKLOAD)
    return path


def gemma(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gemma_cli", *args], capture_output=True, text=True, timeout=timeout, env=full_env, stdin=subprocess.DEVNULL
    )


def assert_sane_variant(v: dict, runs: int) -> None:
    assert v["tokens_per_s"] > 0
    assert len(v["tokens_per_s_runs"]) == runs and all(r > 0 for r in v["tokens_per_s_runs"])
    assert 0.0 <= v["acceptance_rate"] <= 1.0
    assert v["draft_accepted"] <= v["draft_proposed"]
    assert v["generated_tokens"] > runs  # every run produced tokens to time
    assert v["tokens_per_pass"] >= 1.0
    # Emitted tokens per pass <= accepted drafts + 1 (the length limit can cut an accepted draft).
    assert v["mean_accepted_length"] >= v["tokens_per_pass"] - 1.0 - 1e-9
    assert len(v["runs"]) == runs
    for r in v["runs"]:  # the first token comes within the run; our CPU per step fits in its wall time
        assert 0 <= r["ttft_s"] <= r["wall_s"]
        assert r["overhead_ms_per_step"] is not None
        assert 0 <= r["overhead_ms_per_step"] * r["target_passes"] / 1000 <= r["wall_s"] + 0.05
    assert min(r["ttft_s"] for r in v["runs"]) <= v["ttft_s"] <= max(r["ttft_s"] for r in v["runs"])  # a median
    assert v["target_passes"] == sum(r["target_passes"] for r in v["runs"])


def test_bench_json_has_every_figure(bench_model: Path, workload_file: Path) -> None:
    runs = 2
    proc = gemma(
        "bench", str(bench_model), "--workload", str(workload_file), "--draft", "ngram", "--draft-tokens", "2,5",
        "--runs", str(runs), "--max-tokens", "48", "--threads", "1", "--ctx", "1024", "--json",
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["model"] == bench_model.name and data["runs"] == runs and data["max_tokens"] == 48
    assert data["machine"]["threads"] == 1 and data["machine"]["cpu"]
    (w,) = data["workloads"]
    assert w["workload"] == workload_file.name and w["kind"] == "default"
    assert w["prompt_tokens"] > len(WORKLOAD) // 2
    assert w["peak_rss_bytes"] > 10 * 2**20
    plain = w["plain"]
    assert plain["draft_source"] == "none" and plain["draft_proposed"] == 0 and plain["tokens_per_pass"] == 1.0
    assert_sane_variant(plain, runs)
    assert [(v["draft_source"], v["draft_tokens"]) for v in w["speculative"]] == [("ngram", 2), ("ngram", 5)]
    for v in w["speculative"]:
        assert_sane_variant(v, runs)
        assert len(v["ratios"]) == runs and all(r > 0 for r in v["ratios"])
        assert v["speedup_min"] <= v["speedup"] <= v["speedup_max"]
        assert v["mean_accepted_length"] <= v["draft_tokens"]
    # The repetitive prompt gives the n-gram drafter something to propose and accept.
    assert sum(v["draft_accepted"] for v in w["speculative"]) > 0


def test_sampled_bench_gives_both_sides_the_same_seed_and_the_same_text(bench_model: Path, workload_file: Path) -> None:
    runs = 2
    proc = gemma(
        "bench", str(bench_model), "--workload", str(workload_file), "--draft", "ngram", "--draft-tokens", "4",
        "--temperature", "0.7", "--top-k", "20", "--runs", str(runs), "--max-tokens", "40", "--threads", "1", "--ctx", "1024", "--json",
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["sampling"] == {"temperature": 0.7, "top_k": 20, "top_p": 0.95}
    (w,) = data["workloads"]
    (v,) = w["speculative"]
    assert_sane_variant(v, runs)
    assert v["draft_proposed"] > 0
    # Deterministic drafts and one uniform per position: drafting changes the speed, not the text.
    assert v["same_output_as_plain"] is True


def test_bench_table_for_a_builtin_workload(bench_model: Path) -> None:
    proc = gemma("bench", str(bench_model), "-w", "chat", "--runs", "1", "--max-tokens", "16", "--threads", "1", "--ctx", "1024")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "chat (" in out and "speedup" in out and "ngram k<=" in out
    assert "\x1b[" not in out  # NO_COLOR and a pipe: plain bytes


@pytest.mark.parametrize(
    "content, message",
    [(None, "workload file not found"), ("", "workload file is empty"), ("  \n\t\n", "workload file is empty"), (b"\xff\xfe\x00", "not UTF-8")],
)
def test_bad_workload_file_is_one_clear_line(bench_model: Path, tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "work.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    proc = gemma("bench", str(bench_model), "--workload", str(path), "--runs", "1")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workload", "poetry"], "unknown workload 'poetry'"),
        (["--draft-tokens", "2,x"], "comma-separated integers"),
        (["--draft-tokens", "0"], "between 1 and 32"),
        (["--runs", "0"], "--runs must be at least 1"),
        (["--top-k", "10"], "add --temperature"),
        (["-t", "-1"], "temperature must be a finite number >= 0"),
        (["--draft", "none"], "--draft none leaves nothing to compare"),  # printed a 1.17x 'speedup' of plain over plain
    ],
)
def test_bad_options_are_usage_errors(bench_model: Path, args: list[str], message: str) -> None:
    proc = gemma("bench", str(bench_model), *args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_tune_needs_a_stored_model(bench_model: Path, workload_file: Path) -> None:
    proc = gemma("bench", str(bench_model), "-w", str(workload_file), "--tune", "--runs", "1")
    assert proc.returncode == 2
    assert "gemma create" in proc.stderr and "Traceback" not in proc.stderr


def test_tune_writes_the_manifest_and_run_uses_it(
    bench_model: Path, workload_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"GEMMA_MODELS": str(tmp_path / "models")}
    created = gemma("create", "benchtiny", "--target", str(bench_model), "--quiet", env=env)
    assert created.returncode == 0, created.stderr

    def run_draft_max() -> int:
        proc = gemma("run", "benchtiny", "abc def abc", "--format", "json", "--max-tokens", "4", "--temperature", "0", "--ctx", "512", env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["draft_max"]

    before = run_draft_max()
    proc = gemma(
        "bench", "benchtiny", "-w", str(workload_file), "--tune", "--draft-tokens", "2,5,9",
        "--runs", "1", "--max-tokens", "24", "--threads", "1", "--ctx", "1024", "--json", "--force", env=env,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    (choice,) = data["tuned"]
    (w,) = data["workloads"]
    measured = {(v["draft_source"], v["draft_tokens"]): v["speedup"] for v in w["speculative"]}
    assert set(measured) == {("ngram", 2), ("ngram", 5), ("ngram", 9)}
    # the recorded choice is the measured best (ties to the shorter draft)
    best = max(measured, key=lambda c: (round(measured[c], 3), -c[1]))
    assert (choice["kind"], choice["draft_source"], choice["draft_tokens"]) == ("default", *best)
    assert choice["speedup"] == measured[best]
    tuned_k = best[1]

    from gemma_cli.registry.catalog import load_catalog
    from gemma_cli.store.store import load

    monkeypatch.setenv("GEMMA_MODELS", env["GEMMA_MODELS"])
    manifest = load(load_catalog().ref("benchtiny"))
    assert manifest is not None
    assert manifest.tuned["default"]["draft_tokens"] == tuned_k and manifest.tuned["default"]["draft_source"] == "ngram"
    assert run_draft_max() == tuned_k != before  # before: the catalog's n-gram default (16), never in the sweep


def test_tuning_builtins_also_sets_the_default_run_uses(bench_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` cannot classify a prompt, so tuning built-in workloads also records `default`."""
    env = {"GEMMA_MODELS": str(tmp_path / "models")}
    assert gemma("create", "benchtiny2", "--target", str(bench_model), "--quiet", env=env).returncode == 0
    proc = gemma(
        "bench", "benchtiny2", "-w", "chat", "--tune", "--draft-tokens", "3,6", "--runs", "1", "--max-tokens", "16",
        "--threads", "1", "--ctx", "1024", "--json", "--force", env=env,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    measured = {v["draft_tokens"]: v["speedup"] for v in data["workloads"][0]["speculative"]}
    k = max(measured, key=lambda c: (round(measured[c], 3), -c))  # the measured best of the two
    tuned = {t["kind"]: (t["draft_source"], t["draft_tokens"]) for t in data["tuned"]}
    assert tuned == {"chat": ("ngram", k), "default": ("ngram", k)}

    from gemma_cli.registry.catalog import load_catalog
    from gemma_cli.store.store import load

    monkeypatch.setenv("GEMMA_MODELS", env["GEMMA_MODELS"])
    manifest = load(load_catalog().ref("benchtiny2"))
    assert manifest is not None and set(manifest.tuned) == {"chat", "default"}
    out = gemma("run", "benchtiny2", "hello", "--format", "json", "--max-tokens", "2", "--temperature", "0", "--ctx", "512", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["draft_max"] == k


def test_benchmark_script_runs_end_to_end(bench_model: Path, tmp_path: Path) -> None:
    """benchmarks/performance.py (the README table) on the tiny model: every variant and the guard measured."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "performance.py"
    out = tmp_path / "table.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--model", str(bench_model), "--workloads", "chat", "--guard-workloads", "prose",
         "--runs", "1", "--max-tokens", "12", "--threads", "1", "--no-mtp", "--json", str(out)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Python overhead per step outside llama_decode" in proc.stdout and "runtime guard" in proc.stdout
    data = json.loads(out.read_text())
    (w,) = data["workloads"]
    assert [v["draft_source"] for v in w["speculative"]] == ["ngram", "model"]
    for v in w["speculative"]:
        assert v["ratios"] and all(r > 0 for r in v["ratios"]) and 0.0 <= v["acceptance_rate"] <= 1.0
    (g,) = data["guard"]["workloads"]
    assert g["workload"] == "prose" and data["guard"]["sampling"]["temperature"] == 1.0
    assert [v["draft_source"] for v in g["speculative"]] == ["ngram"] and g["speculative"][0]["ratios"][0] > 0
    assert data["mtp_synthetic"] is None
    assert set(data["guard"]["one_shot_ratios"]) == {"prose"} and data["guard"]["one_shot_ratios"]["prose"][0] > 0
    assert "one-shot" in proc.stdout
