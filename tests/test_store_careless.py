"""Issue 14, the store and registry side: interrupted `create` leaves nothing, leftovers of killed
processes are swept by verify/doctor, catalog names cannot be hijacked, `pull` restores them,
and the messages that used to mislead (rm, verify, long names, odd --target, stalled pulls).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gguf_factory import write_llama_gguf
from hub_server import EXIT_USAGE, ROOT, HubServer, assert_one_line_error, gemma_cmd, gemma_env, run_gemma, write_catalog

REPO = "test-org/store-GGUF"


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("store-careless")
    big = write_llama_gguf(d / "big.gguf", seed=51)
    with big.open("r+b") as fh:  # a valid header followed by 1 GiB of (sparse) zeros: copying takes seconds
        fh.truncate(1 << 30)
    return {"a": write_llama_gguf(d / "a.gguf", seed=52), "b": write_llama_gguf(d / "b.gguf", seed=53), "big": big}


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    return gemma_env(tmp_path / "models", HF_HUB_OFFLINE="1")


def _wait_for(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _ingest_tmps(models: Path) -> list[Path]:
    blobs = models / "blobs"
    return sorted(blobs.glob(".ingest-*.tmp")) if blobs.is_dir() else []


def _start_create(env: dict[str, str], models: Path, src: Path) -> subprocess.Popen:
    """A `gemma create` caught in the middle of its copy, stopped (SIGSTOP) there: the caller
    signals it, then resumes it with SIGCONT, so the signal lands mid-copy however busy the machine."""
    proc = subprocess.Popen(gemma_cmd("create", "big", "--target", str(src)), env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: any(p.stat().st_size > (1 << 20) for p in _ingest_tmps(models) if p.exists()))
    proc.send_signal(signal.SIGSTOP)
    assert proc.poll() is None and _ingest_tmps(models), "the copy ended before the test could interrupt it"
    return proc


# -- 9. interrupted create ------------------------------------------------------------------------

@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_create_leaves_no_temp_file(env, ggufs, tmp_path, sig, code):
    models = tmp_path / "models"
    proc = _start_create(env, models, ggufs["big"])
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code and "Traceback" not in err, err
    assert _ingest_tmps(models) == []
    assert not (models / "manifests" / "big").exists()


def test_verify_and_doctor_sweep_what_a_killed_create_left(env, ggufs, tmp_path):
    models = tmp_path / "models"
    proc = _start_create(env, models, ggufs["big"])
    proc.kill()
    proc.wait(timeout=30)
    (left,) = _ingest_tmps(models)
    # a partial download untouched for 8 days is reported and kept; a fresh one is not even mentioned
    old = models / "blobs" / f"sha256-{'ab' * 32}.partial"
    old.write_bytes(b"x" * 1000)
    eight_days_ago = time.time() - 8 * 86400
    os.utime(old, (eight_days_ago, eight_days_ago))
    fresh = models / "blobs" / f"sha256-{'cd' * 32}.partial"
    fresh.write_bytes(b"y" * 10)

    verify = run_gemma(env, "verify")
    assert verify.returncode == 0, verify.stderr
    assert f"removed {left}" in verify.stderr and f"left by process {proc.pid}, which no longer runs" in verify.stderr
    assert not left.exists()
    assert f"found {old}" in verify.stderr and "untouched for 8 days" in verify.stderr and old.exists()
    assert str(fresh) not in verify.stderr and fresh.exists()

    proc = _start_create(env, models, ggufs["big"])
    proc.kill()
    proc.wait(timeout=30)
    (left,) = _ingest_tmps(models)
    doctor = run_gemma(env, "doctor", "--json", timeout=120)
    check = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "store")
    assert check["details"]["removed_temp_files"] == [str(left)] and not left.exists()
    assert "removed 1 temporary file(s) of killed processes" in check["summary"]
    assert check["status"] == "warn" and check["details"]["stale_partial"] == [str(old)]


# -- 5. catalog names ---------------------------------------------------------------------------

@pytest.fixture()
def hub(ggufs):
    with HubServer() as server:
        server.add(REPO, "a.gguf", ggufs["a"].read_bytes())
        yield server


def test_create_refuses_catalog_names_and_pull_restores_a_hijacked_one(ggufs, tmp_path, hub):
    catalog = write_catalog(tmp_path / "catalog.json", {"cat:one": {"target": (REPO, "a.gguf"), "draft_source": "ngram"}})
    env = gemma_env(tmp_path / "models", hub.endpoint, catalog)
    refused = run_gemma(env, "create", "cat:one", "--target", str(ggufs["b"]))
    assert refused.returncode == 2
    assert_one_line_error(refused, "cat:one is a catalog model's name", "choose another name, e.g. my-cat:one", code=EXIT_USAGE)
    refused_default = run_gemma(gemma_env(tmp_path / "m2"), "create", "gemma3:270m", "--target", str(ggufs["b"]))
    assert_one_line_error(refused_default, "gemma3:270m is a catalog model's name", code=EXIT_USAGE)
    # family:latest reads as the family's default tag only when no model of that name is stored: it stays yours to make
    own = gemma_env(tmp_path / "m3")
    assert run_gemma(own, "create", "gemma3:latest", "--target", str(ggufs["b"])).returncode == 0
    assert run_gemma(own, "show", "gemma3:latest").stdout.startswith("Model         gemma3:latest")
    assert run_gemma(own, "show", "gemma3").stdout.startswith("Model         gemma3:270m")

    assert run_gemma(env, "pull", "cat:one").returncode == 0
    # an older gemma-cli let `create` write over the catalog name: simulate that manifest
    assert run_gemma(env, "create", "mine", "--target", str(ggufs["b"])).returncode == 0
    manifests = tmp_path / "models" / "manifests"
    hijack = json.loads((manifests / "mine" / "latest.json").read_text())
    hijack["name"] = "cat:one"
    (manifests / "cat" / "one.json").write_text(json.dumps(hijack))

    restored = run_gemma(env, "pull", "cat:one")
    assert restored.returncode == 0, restored.stderr
    assert "up to date" not in restored.stdout and "pulled" in restored.stdout
    doc = json.loads((manifests / "cat" / "one.json").read_text())
    layers = json.dumps(doc)
    assert hashlib.sha256(ggufs["a"].read_bytes()).hexdigest() in layers
    assert hashlib.sha256(ggufs["b"].read_bytes()).hexdigest() not in layers
    assert "up to date" in run_gemma(env, "pull", "cat:one").stdout


# -- confusing messages ----------------------------------------------------------------------------

def test_rm_reports_only_the_bytes_it_freed(env, ggufs, tmp_path):
    assert run_gemma(env, "create", "one", "--target", str(ggufs["a"])).returncode == 0
    orphan = tmp_path / "models" / "blobs" / f"sha256-{'ef' * 32}"
    orphan.write_bytes(b"z" * 5_000_000)  # left by something else
    proc = run_gemma(env, "rm", "one")
    assert proc.returncode == 0, proc.stderr
    size = ggufs["a"].stat().st_size
    assert proc.stdout.splitlines()[-1] == f"freed {size / 1000:.1f} KB"
    assert not orphan.exists()  # still collected, just not counted


def test_verify_tells_the_truth_about_repairing_a_custom_model(env, ggufs, tmp_path):
    assert run_gemma(env, "create", "custom", "--target", str(ggufs["a"])).returncode == 0
    blob = tmp_path / "models" / "blobs" / f"sha256-{hashlib.sha256(ggufs['a'].read_bytes()).hexdigest()}"
    with blob.open("r+b") as fh:
        fh.truncate(1000)
    proc = run_gemma(env, "verify")
    line = assert_one_line_error(proc, "custom:latest is a custom model", f"gemma create custom:latest --target {ggufs['a']}")
    assert "gemma pull" not in line
    run = run_gemma(env, "run", "custom", "hi")
    assert "gemma pull" not in assert_one_line_error(run, "re-create it from its source")


def test_verify_says_how_to_repair_an_unreadable_custom_manifest(env, ggufs, tmp_path):
    assert run_gemma(env, "create", "custom", "--target", str(ggufs["a"])).returncode == 0
    (tmp_path / "models" / "manifests" / "custom" / "latest.json").write_text("{not json")
    line = assert_one_line_error(run_gemma(env, "verify"), "unreadable manifest", "gemma rm custom:latest",
                                 "gemma create custom:latest")
    assert "gemma pull" not in line  # a custom name cannot be pulled
    assert run_gemma(env, "rm", "custom").returncode == 0


def test_long_names_and_odd_targets_get_the_right_reason(env, tmp_path):
    long = run_gemma(env, "show", "a" * 250)
    assert_one_line_error(long, "250 characters", "at most 64 characters", code=EXIT_USAGE)
    assert "'/'" not in long.stderr
    for target, reason in ((str(tmp_path), "is a directory, not a GGUF file"), ("/dev/zero", "is a device, not a GGUF file"),
                           (str(tmp_path / "nope.gguf"), "model file not found")):
        assert_one_line_error(run_gemma(env, "create", "x", "--target", target), reason)


def test_a_stalled_transfer_is_retried_then_reported_as_stalled(ggufs, tmp_path, hub):
    data = ggufs["a"].read_bytes()
    hub.state.stall_after["a.gguf"] = len(data) // 2
    catalog = write_catalog(tmp_path / "catalog.json", {"cat:one": {"target": (REPO, "a.gguf"), "draft_source": "ngram"}})
    env = gemma_env(tmp_path / "models", hub.endpoint, catalog, GEMMA_STALL_TIMEOUT="0.5")
    start = time.monotonic()
    proc = run_gemma(env, "pull", "cat:one")
    took = time.monotonic() - start
    line = assert_one_line_error(proc, "stalled", "0.5 s without a byte", f"{len(data) // 2} of {len(data)} bytes are kept",
                                 "run the same command to resume")
    assert "cannot reach" not in line and took < 30
    assert len(hub.gets("a.gguf")) == 4  # the first try and three retries
    hub.release()
    assert run_gemma(env, "pull", "cat:one").returncode == 0


def test_an_interrupted_pull_says_how_to_resume(ggufs, tmp_path, hub):
    data = ggufs["a"].read_bytes()
    hub.state.stall_after["a.gguf"] = len(data) // 2
    catalog = write_catalog(tmp_path / "catalog.json", {"cat:one": {"target": (REPO, "a.gguf"), "draft_source": "ngram"}})
    # The SIGINT lands just as the client goes back to waiting for bytes. If it arrives between
    # CPython's last signal check and the poll() (a window a loaded machine widens by preempting the
    # client there), Python acts on it only when that poll returns: after the stall timeout, 30 s by
    # default, as long as communicate() waits. 5 s bounds that; a lost SIGINT still fails the test
    # (the pull would end "stalled", exit 1).
    env = gemma_env(tmp_path / "models", hub.endpoint, catalog, GEMMA_STALL_TIMEOUT="5")
    partial = tmp_path / "models" / "blobs" / f"sha256-{hashlib.sha256(data).hexdigest()}.partial"
    proc = subprocess.Popen(gemma_cmd("pull", "cat:one"), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: partial.exists() and partial.stat().st_size >= len(data) // 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted: what was downloaded is kept; run the same command to resume" in err


def test_the_progress_bar_of_an_interrupted_transfer_stays_where_it_stopped():
    from gemma_cli.cli.progress import RichProgress
    from gemma_cli.registry.pull import abort_progress

    with RichProgress() as progress:
        progress.start("cat:one target", 1000, 0)
        progress.advance(400)
        abort_progress(progress, "interrupted; run the same command to resume")
        task = progress._progress.tasks[-1]
    assert task.completed == 400 and task.description.endswith("interrupted; run the same command to resume")


# -- 17. bench --tune -------------------------------------------------------------------------------

def test_tune_does_not_record_results_it_cannot_trust(env, ggufs, tmp_path):
    assert run_gemma(env, "create", "tunee", "--target", str(ggufs["a"])).returncode == 0
    args = ["bench", "tunee", "-w", "chat", "--tune", "--draft-tokens", "3", "--runs", "1", "--max-tokens", "8",
            "--threads", "1", "--ctx", "512", "--json"]
    proc = run_gemma(env, *args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    tuned = json.loads(proc.stdout)["tuned"]
    assert tuned and all(t["timing_reliable"] is False and t["recorded"] is False for t in tuned)
    assert "not recorded: runs were shorter than 2 s" in proc.stderr
    manifest = json.loads((tmp_path / "models" / "manifests" / "tunee" / "latest.json").read_text())
    assert not manifest.get("tuned")
    forced = run_gemma(env, *args, "--force", timeout=300)
    assert forced.returncode == 0 and "recorded anyway (--force)" in forced.stderr
    manifest = json.loads((tmp_path / "models" / "manifests" / "tunee" / "latest.json").read_text())
    assert manifest["tuned"]["chat"]["draft_tokens"] == 3


# -- chat rendering ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cols", [40, 57, 80, 200])
def test_the_chat_summary_breaks_only_between_parts(cols, monkeypatch):
    import io

    from gemma_cli.cli.render import SEP, ReplyRenderer, summary_parts
    from gemma_cli.engine.types import LiveStats, StopReason

    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=(80, 24): os.terminal_size((cols, 24)))
    stats = LiveStats(draft_source="ngram", generated_tokens=1234, draft_proposed=5678, draft_accepted=4321,
                      prompt_tokens=98765, prompt_evaluated=12345, n_ctx=131072, n_past=111111, target_passes=999,
                      started=0.0, finished=10.0, ttft_s=0.25)
    err = io.StringIO()
    ReplyRenderer(io.StringIO(), err, live=True, color=False).summary(stats, StopReason.LENGTH)
    text = err.getvalue().rstrip("\n")
    assert "\n" not in text  # one line of text; the padding makes the terminal wrap
    rows = [text[i : i + cols] for i in range(0, len(text), cols)]
    parts = summary_parts(stats, StopReason.LENGTH)
    for row in rows:
        for piece in row.strip().split(SEP):
            assert any(piece in part for part in parts), (row, piece)
    assert [p for row in rows for p in row.strip().split(SEP)] == [p for part in parts for p in part.split(SEP)]


def test_after_ctrl_c_nothing_more_of_the_step_is_printed():
    import io

    from gemma_cli.cli.render import ReplyRenderer
    from gemma_cli.engine.types import LiveStats, Piece

    fired = []

    def pieces():
        yield Piece("Hello", 1, 0)
        fired.append(True)  # Ctrl-C arrives while the step is being verified
        yield Piece(" world and", 3, 2)
        yield Piece(" more", 1, 0)

    out = io.StringIO()
    shown = ReplyRenderer(out, io.StringIO(), live=False, color=False).stream(pieces(), LiveStats(), prompt_tokens=3,
                                                                               stopped=lambda: bool(fired))
    assert shown == "Hello" and out.getvalue() == "Hello\n"


def test_special_huge_or_copied_manifests_never_block_the_store_and_names_come_from_paths(env, ggufs, tmp_path):
    """A FIFO named like a manifest blocked `list`, `verify` and `rm` for ever; a link to /dev/zero read until the OOM
    killer came; JSON nested past Python's parser failed every command; a manifest copied by hand was listed under
    the name written inside it (probe, session 18)."""
    assert run_gemma(env, "create", "mine:v1", "--target", str(ggufs["a"])).returncode == 0
    folder = tmp_path / "models" / "manifests" / "mine"
    os.mkfifo(folder / "fifo.json")
    (folder / "zero.json").symlink_to("/dev/zero")
    (folder / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    shutil.copy(folder / "v1.json", folder / "v2.json")

    listed = run_gemma(env, "list", "--json", timeout=30)
    assert listed.returncode == 0, listed.stderr
    by_name = {m["name"]: m for m in json.loads(listed.stdout)}
    assert set(by_name) == {"mine:v1", "mine:v2", "mine:fifo", "mine:zero", "mine:deep"}
    for bad in ("mine:fifo", "mine:zero", "mine:deep"):
        assert by_name[bad].get("error"), by_name[bad]
    verify = run_gemma(env, "verify", timeout=30)
    assert verify.returncode == 1 and "UNREADABLE" in verify.stdout and "Traceback" not in verify.stderr
    assert "3 of 5 manifests failed verification" in verify.stderr and "2 more above" in verify.stderr  # not 'blobs'
    assert run_gemma(env, "show", "mine:v2", timeout=30).stdout.startswith("Model         mine:v2")
    for name in ("mine:fifo", "mine:zero", "mine:deep", "mine:v1"):
        assert run_gemma(env, "rm", name, timeout=30).returncode == 0, name
    assert [m["name"] for m in json.loads(run_gemma(env, "list", "--json").stdout)] == ["mine:v2"]
