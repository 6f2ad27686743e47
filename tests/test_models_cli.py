"""The model commands through the real CLI in a subprocess: stdout results, one-line errors, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma4_factory import write_gemma4_pair
from gguf_factory import char_vocab, write_llama_gguf
from hub_server import EXIT_USAGE, assert_one_line_error, gemma_env, run_gemma


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli-gguf")
    vocab = char_vocab()
    other_vocab = vocab[:10] + ["X" + t for t in vocab[10:]]
    target4, assistant4 = write_gemma4_pair(d / "g4")
    _, bad_assistant = write_gemma4_pair(d / "g4bad", assistant_overrides={"embedding_length_out": 48})
    junk = d / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04 definitely a zip file" * 10)
    trunc = d / "trunc.gguf"
    trunc.write_bytes(target4.read_bytes()[:5000])
    return {
        "target": write_llama_gguf(d / "t.gguf", seed=21),
        "draft": write_llama_gguf(d / "d.gguf", seed=22, n_layer=1),
        "alien": write_llama_gguf(d / "alien.gguf", seed=23, vocab=other_vocab),
        "g4": target4, "mtp": assistant4, "mtp_bad": bad_assistant, "junk": junk, "trunc": trunc,
    }


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    return gemma_env(tmp_path / "models")


def test_create_list_show_rm_roundtrip(env, ggufs, tmp_path):
    assert run_gemma(env, "list").stdout.split() == ["NAME", "ID", "SIZE", "DRAFTER", "MODIFIED"]
    made = run_gemma(env, "create", "g4:tiny", "--target", str(ggufs["g4"]), "--draft", str(ggufs["mtp"]), "--draft-tokens", "3")
    assert made.returncode == 0 and "g4:tiny" in made.stdout and made.stderr == "", made.stderr
    assert run_gemma(env, "create", "plain", "--target", str(ggufs["target"])).returncode == 0

    listed = json.loads(run_gemma(env, "list", "--json").stdout)
    by_name = {m["name"]: m for m in listed}
    assert by_name["g4:tiny"]["draft_source"] == "mtp" and by_name["plain:latest"]["draft_source"] == "ngram"
    table = run_gemma(env, "ls").stdout
    assert "g4:tiny" in table and "mtp (" in table and by_name["g4:tiny"]["id"] in table

    # tuning recorded by `bench --tune` (in another process) shows up in `show`
    code = "from gemma_cli.registry.manage import record_tuned; record_tuned('g4:tiny', 'code', 5, 'mtp')"
    import subprocess
    import sys
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0

    shown = run_gemma(env, "show", "g4:tiny")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    for needle in ("Architecture  gemma4", "gemma4-assistant (mtp)", "shares the target's KV cache (no KV of its own)",
                   "compatible (same token list)", "Chat template yes", "Draft length  3", "code=5 (mtp)"):
        assert needle in text, (needle, text)
    info = json.loads(run_gemma(env, "show", "g4:tiny", "--json").stdout)
    assert info["target"]["architecture"] == "gemma4" and info["drafter"]["architecture"] == "gemma4-assistant"
    assert info["target"]["embedding_length"] == info["drafter"]["embedding_length_out"]
    assert info["target"]["parameters"] > 0 and info["target"]["context_length"]
    assert info["tuned"]["code"]["draft_tokens"] == 5

    gone = run_gemma(env, "rm", "g4:tiny", "plain")
    assert gone.returncode == 0 and "deleted g4:tiny" in gone.stdout
    assert json.loads(run_gemma(env, "list", "--json").stdout) == []
    assert not list((tmp_path / "models" / "blobs").glob("sha256-*"))


def test_one_file_as_target_and_drafter_counts_once(env, ggufs):
    """`create --target X --draft X` stores one blob: list, list --json and create's line count it once."""
    size = ggufs["target"].stat().st_size
    made = run_gemma(env, "create", "twin", "--target", str(ggufs["target"]), "--draft", str(ggufs["target"]))
    assert made.returncode == 0, made.stderr
    from gemma_cli.cli.output import size_text

    assert made.stdout.strip().endswith(f", {size_text(size)}"), made.stdout
    [entry] = json.loads(run_gemma(env, "list", "--json").stdout)
    assert entry["size"] == entry["drafter_size"] == size and entry["target"] == entry["drafter_digest"]
    row = next(line for line in run_gemma(env, "list").stdout.splitlines() if line.startswith("twin:latest"))
    assert row.count(size_text(size)) == 2, row  # SIZE, and the drafter's own size in DRAFTER
    assert size_text(2 * size) not in row


def test_create_refuses_incompatible_pairs(env, ggufs, tmp_path):
    proc = run_gemma(env, "create", "mix", "--target", str(ggufs["target"]), "--draft", str(ggufs["alien"]))
    assert_one_line_error(proc, "cannot draft", "token 10 differs")
    proc = run_gemma(env, "create", "mix", "--target", str(ggufs["g4"]), "--draft", str(ggufs["mtp_bad"]))
    assert_one_line_error(proc, "embedding_length_out 48")
    assert not (tmp_path / "models" / "manifests").exists() or not list((tmp_path / "models" / "manifests").rglob("*.json"))
    assert run_gemma(env, "create", "ok", "--target", str(ggufs["target"]), "--draft", str(ggufs["draft"])).returncode == 0


@pytest.mark.parametrize("which, needle", [("junk", "not a GGUF file"), ("trunc", "truncated")])
def test_create_rejects_bad_files(env, ggufs, which, needle):
    assert_one_line_error(run_gemma(env, "create", "bad", "--target", str(ggufs[which])), needle)


def test_bad_names_and_missing_models(env, ggufs):
    assert_one_line_error(run_gemma(env, "create", "../escape", "--target", str(ggufs["target"])), "invalid model name", code=EXIT_USAGE)
    assert_one_line_error(run_gemma(env, "create", "x:a/b", "--target", str(ggufs["target"])), "invalid model name", code=EXIT_USAGE)
    assert_one_line_error(run_gemma(env, "show", "gemma4:e4b"), "gemma pull gemma4:e4b")
    assert_one_line_error(run_gemma(env, "show", "gemma4:e4"), "did you mean")
    assert_one_line_error(run_gemma(env, "rm", "nothing"), "not in the store")
    assert_one_line_error(run_gemma(env, "create", "x", "--target", "hf://only-owner"), "invalid hugging face uri", code=EXIT_USAGE)


def test_verify_and_load_detect_corruption(env, ggufs, tmp_path):
    assert run_gemma(env, "create", "a", "--target", str(ggufs["target"]), "--draft", str(ggufs["draft"])).returncode == 0
    ok = run_gemma(env, "verify")
    assert ok.returncode == 0 and ok.stdout.count("OK") == 2
    manifest = json.loads((tmp_path / "models" / "manifests" / "a" / "latest.json").read_text())
    blob = tmp_path / "models" / "blobs" / ("sha256-" + manifest["drafter"]["digest"].split(":")[1])
    with blob.open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\xde\xad\xbe\xef")
    bad = run_gemma(env, "verify", "a")
    assert_one_line_error(bad, "1 of 2 blobs failed", "drafter: corrupt")
    assert "CORRUPT" in bad.stdout
    assert_one_line_error(run_gemma(env, "show", "a"), "corrupted")
    with blob.open("r+b") as fh:
        fh.truncate(10)
    assert_one_line_error(run_gemma(env, "show", "a"), "truncated")


@pytest.mark.slow
def test_offline_default_pull_and_show(env):
    env = dict(env, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    pulled = run_gemma(env, "pull", "gemma3:270m")
    assert pulled.returncode == 0 and "no download" in pulled.stdout, pulled.stderr
    again = run_gemma(env, "pull", "gemma3:270m")
    assert "up to date" in again.stdout
    shown = run_gemma(env, "show", "gemma3:270m")
    assert shown.returncode == 0 and "Architecture  gemma3" in shown.stdout and "Quantization  Q4_K_M" in shown.stdout
    assert "gemma3:270m" in run_gemma(env, "list").stdout


@pytest.mark.parametrize("extra, ok", [(100, True), (-100, True), (200, False), (-200, False)])
def test_vocabulary_rule_in_both_directions(env, tmp_path, extra, ok):
    """Sizes within 128 of each other (either model the larger) and identical texts from id 5 on."""
    base = char_vocab()
    more = base + [f"extra{i}" for i in range(abs(extra))]
    t_vocab, d_vocab = (base, more) if extra > 0 else (more, base)
    d_vocab = ["<u>", "<b>", "</b>", "<x>", "<y>"] + d_vocab[5:]  # ids 0-4 may differ
    target = write_llama_gguf(tmp_path / "vt.gguf", seed=31, vocab=t_vocab)
    drafter = write_llama_gguf(tmp_path / "vd.gguf", seed=32, n_layer=1, vocab=d_vocab)
    proc = run_gemma(env, "create", "pair", "--target", str(target), "--draft", str(drafter))
    if ok:
        assert proc.returncode == 0, proc.stderr
        assert json.loads(run_gemma(env, "list", "--json").stdout)[0]["draft_source"] == "model"
    else:
        assert_one_line_error(proc, "cannot draft", str(len(t_vocab)), str(len(d_vocab)))
        assert not list((tmp_path / "models").glob("manifests/*/*.json"))
