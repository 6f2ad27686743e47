"""`gemma pull` against a real local HTTP server that imitates the Hub (HF_ENDPOINT)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gemma4_factory import write_gemma4_pair
from gguf_factory import write_llama_gguf
from hub_server import (
    EXIT_RUNTIME,
    EXIT_USAGE,
    ROOT,
    HubServer,
    assert_one_line_error,
    gemma_cmd,
    gemma_env,
    run_gemma,
    write_catalog,
)

REPO = "test-org/tiny-GGUF"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("hubfiles")
    big = write_llama_gguf(d / "big.gguf", seed=5, n_embd=128, n_ff=512, n_layer=3)
    draft = write_llama_gguf(d / "draft.gguf", seed=6, n_layer=1)
    target4, assistant4 = write_gemma4_pair(d / "g4")
    return {
        "big.gguf": big.read_bytes(),
        "draft.gguf": draft.read_bytes(),
        "g4-target.gguf": target4.read_bytes(),
        "mtp-g4-Q8_0.gguf": assistant4.read_bytes(),
        "junk.gguf": b"<html>this is not a model</html>" * 100,
    }


@pytest.fixture()
def hub(files: dict[str, bytes]):
    with HubServer() as server:
        for name, data in files.items():
            server.add(REPO, name, data)
        server.add("gated-org/model", "big.gguf", files["big.gguf"])
        server.state.gated.add("gated-org/model")
        server.add("private-org/model", "big.gguf", files["big.gguf"])
        server.state.private.add("private-org/model")
        server.add("forbidden-org/model", "big.gguf", files["big.gguf"])
        server.state.forbidden.add("forbidden-org/model")
        yield server


@pytest.fixture()
def catalog(tmp_path: Path) -> Path:
    return write_catalog(tmp_path / "catalog.json", {
        "tiny:big": {"target": (REPO, "big.gguf"), "drafter": (REPO, "draft.gguf"), "draft_source": "model", "draft_tokens": 3},
        "tiny:solo": {"target": (REPO, "big.gguf"), "draft_source": "ngram", "aliases": ["tiny:solo-q4"]},
        "g4:mtp": {"target": (REPO, "g4-target.gguf"), "drafter": (REPO, "mtp-g4-Q8_0.gguf"), "draft_tokens": 2},
        "bad:junk": {"target": (REPO, "junk.gguf")},
        "bad:gated": {"target": ("gated-org/model", "big.gguf")},
        "bad:private": {"target": ("private-org/model", "big.gguf")},
        "bad:forbidden": {"target": ("forbidden-org/model", "big.gguf")},
        "bad:missing-file": {"target": (REPO, "nope.gguf")},
        "bad:missing-repo": {"target": ("nobody/nothing", "big.gguf")},
    }, default_tags={"tiny": "big"})


@pytest.fixture()
def env(tmp_path: Path, hub: HubServer, catalog: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    e = gemma_env(tmp_path / "models", hub.endpoint, catalog)
    for key in ("GEMMA_MODELS", "HF_ENDPOINT", "GEMMA_CATALOG", "HF_HOME"):
        monkeypatch.setenv(key, e[key])
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return e


def _manifest(models: Path, family: str, tag: str) -> dict:
    return json.loads((models / "manifests" / family / f"{tag}.json").read_text())


def test_pull_pair_verifies_and_repull_downloads_nothing(env, hub, files, tmp_path):
    from gemma_cli.registry.pull import pull
    from gemma_cli.registry.resolve import resolve_model

    result = pull("tiny")  # default tag from the catalog
    assert result.downloaded == len(files["big.gguf"]) + len(files["draft.gguf"])
    pair = resolve_model("tiny:big")
    assert pair.target.read_bytes() == files["big.gguf"]
    assert pair.drafter is not None and pair.drafter.read_bytes() == files["draft.gguf"]
    assert pair.draft_source == "model" and pair.draft_tokens == 3
    served = hub.served("big.gguf")
    again = pull("tiny:big")
    assert again.downloaded == 0 and again.up_to_date
    assert hub.served("big.gguf") == served  # HEAD only, no body
    # a second model sharing the target blob fetches nothing either
    assert pull("tiny:solo").downloaded == 0
    assert hub.served("big.gguf") == served
    assert not list((tmp_path / "models" / "blobs").glob("*.partial"))


def test_an_alias_and_family_latest_run_the_model_pull_stored(env, hub):
    """`run tiny:solo-q4` (an alias) pulls `tiny:solo` and then runs it (it used to pull, then say 'not pulled yet'),
    and `tiny:latest` is the family's default tag, as Ollama reads `gemma3:latest`; each model is listed once."""
    run = run_gemma(env, "run", "tiny:solo-q4", "ab", "-n", "4")
    assert run.returncode == 0, run.stderr
    assert "pulling it now" in run.stderr
    assert run_gemma(env, "pull", "tiny:latest").returncode == 0
    names = [m["name"] for m in json.loads(run_gemma(env, "list", "--json").stdout)]
    assert sorted(names) == ["tiny:big", "tiny:solo"]
    for name, canonical in (("tiny:solo-q4", "tiny:solo"), ("tiny:latest", "tiny:big"), ("tiny", "tiny:big")):
        shown = run_gemma(env, "show", name)
        assert shown.returncode == 0 and canonical in shown.stdout.splitlines()[0], (name, shown.stdout, shown.stderr)
    assert sorted(m["name"] for m in json.loads(run_gemma(env, "list", "--json").stdout)) == names
    gone = run_gemma(env, "rm", "tiny:solo", "tiny:solo", "tiny:solo-q4")  # one model, named thrice
    assert gone.returncode == 0 and gone.stdout.count("deleted") == 1, gone.stdout
    assert_one_line_error(run_gemma(env, "show", ""), "empty model name", code=EXIT_USAGE)


def test_pull_mtp_pair_detects_gemma4_assistant(env, hub):
    from gemma_cli.registry.pull import pull
    from gemma_cli.registry.resolve import resolve_model

    pull("g4:mtp")
    pair = resolve_model("g4:mtp")
    assert pair.draft_source == "mtp" and pair.draft_tokens == 2


def test_dropped_connection_resumes_within_one_pull(env, hub, files):
    from gemma_cli.registry.pull import pull

    size = len(files["big.gguf"])
    hub.state.drop_after["big.gguf"] = size // 3
    pull("tiny:solo")
    gets = hub.gets("big.gguf")
    assert len(gets) == 2 and gets[1].range == f"bytes={size // 3}-"
    assert hub.served("big.gguf") == size


def test_server_ignoring_range_restarts_cleanly(env, hub, files, tmp_path):
    import hashlib

    from gemma_cli.registry.pull import pull

    data = files["big.gguf"]
    sha = hashlib.sha256(data).hexdigest()
    blobs = tmp_path / "models" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"sha256-{sha}.partial").write_bytes(data[:1000])
    hub.state.ignore_range = True
    pull("tiny:solo")
    assert (blobs / f"sha256-{sha}").read_bytes() == data


def test_corrupt_partial_is_discarded_then_repulled(env, hub, files, tmp_path):
    import hashlib

    data = files["big.gguf"]
    sha = hashlib.sha256(data).hexdigest()
    blobs = tmp_path / "models" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"sha256-{sha}.partial").write_bytes(b"\0" * len(data))  # right size, wrong bytes
    proc = run_gemma(env, "pull", "tiny:solo")
    assert_one_line_error(proc, "sha256")
    assert not (tmp_path / "models" / "manifests" / "tiny" / "solo.json").exists()
    assert run_gemma(env, "pull", "tiny:solo").returncode == 0


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_pull_resumes_and_serves_each_byte_once(env, hub, files, tmp_path, sig):
    import hashlib

    data = files["big.gguf"]
    stall = len(data) // 2
    partial = tmp_path / "models" / "blobs" / f"sha256-{hashlib.sha256(data).hexdigest()}.partial"
    hub.state.stall_after["big.gguf"] = stall
    proc = subprocess.Popen(gemma_cmd("pull", "tiny:solo"), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: partial.exists() and partial.stat().st_size >= stall)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "Traceback" not in err
    assert partial.stat().st_size == stall  # kept for the next run
    assert not (tmp_path / "models" / "manifests" / "tiny" / "solo.json").exists()
    hub.release()
    done = run_gemma(env, "pull", "tiny:solo")
    assert done.returncode == 0, done.stderr
    assert hub.gets("big.gguf")[-1].range == f"bytes={stall}-"
    # every byte once across both runs
    assert hub.served("big.gguf") == len(data)
    assert not partial.exists()


def _blocked_on_a_lock(pid: int) -> bool:
    """The process sleeps in the kernel's file-lock wait (Linux /proc), i.e. the lock is contended."""
    try:
        return "lock" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def _overlapping_pulls(env, hub, data: bytes, tmp_path: Path, first: str, second: str) -> list[subprocess.Popen]:
    """Start `first`, hold its download of big.gguf half way, start `second`, see it wait on a lock."""
    import hashlib

    partial = tmp_path / "models" / "blobs" / f"sha256-{hashlib.sha256(data).hexdigest()}.partial"
    hub.state.stall_after["big.gguf"] = len(data) // 2
    procs = [subprocess.Popen(gemma_cmd("pull", first), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)]
    try:
        _wait_for(lambda: partial.exists() and partial.stat().st_size >= len(data) // 2)
        procs.append(subprocess.Popen(gemma_cmd("pull", second), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
        _wait_for(lambda: _blocked_on_a_lock(procs[1].pid))  # the second pull waits for the first: they overlap
        assert procs[1].poll() is None and len(hub.gets("big.gguf")) == 1  # and it has not fetched anything
    finally:
        hub.release()
    return procs


def test_concurrent_pulls_of_one_model_download_once(env, hub, files, tmp_path):
    procs = _overlapping_pulls(env, hub, files["big.gguf"], tmp_path, "tiny:big", "tiny:big")
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert hub.served("big.gguf") == len(files["big.gguf"])
    assert hub.served("draft.gguf") == len(files["draft.gguf"])
    assert "up to date" in outs[1][0]  # the second found the model complete once the first was done
    manifest = _manifest(tmp_path / "models", "tiny", "big")
    blob = tmp_path / "models" / "blobs" / ("sha256-" + manifest["target"]["digest"].split(":")[1])
    assert blob.read_bytes() == files["big.gguf"]


def test_concurrent_pulls_of_two_models_sharing_a_blob_fetch_it_once(env, hub, files, tmp_path):
    procs = _overlapping_pulls(env, hub, files["big.gguf"], tmp_path, "tiny:big", "tiny:solo")
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert hub.served("big.gguf") == len(files["big.gguf"])  # one download for both models
    big, solo = _manifest(tmp_path / "models", "tiny", "big"), _manifest(tmp_path / "models", "tiny", "solo")
    assert big["target"]["digest"] == solo["target"]["digest"]
    assert "tiny:solo: pulled (0 B downloaded)" in outs[1][0], outs[1]  # it waited, then found the blob in the store


def test_progress_bars_only_on_a_terminal_and_never_with_quiet(env, hub, tmp_path):
    import pexpect

    hub.state.throttle = 0.0005
    piped = run_gemma(env, "pull", "tiny:solo")
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr  # not a terminal: no bars
    assert piped.stdout.count("\n") == 1 and "tiny:solo: pulled" in piped.stdout
    for quiet in (False, True):
        shutil.rmtree(tmp_path / "models")
        child = pexpect.spawn(gemma_cmd()[0], gemma_cmd("pull", "tiny:solo", *(["--quiet"] if quiet else []))[1:],
                              env=env, cwd=str(ROOT), encoding="utf-8", timeout=60, dimensions=(24, 120))
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
        shown = child.before
        assert "tiny:solo: pulled" in shown
        assert ("tiny:solo target" in shown and "MB/s" in shown) is not quiet, shown  # the bar: its label and speed


@pytest.mark.parametrize("name, needles, code", [
    ("bad:gated", ["gated", "hf auth login"], EXIT_RUNTIME),
    ("bad:private", ["not found", "log in"], EXIT_RUNTIME),
    ("bad:forbidden", ["403", "log in"], EXIT_RUNTIME),
    ("bad:missing-file", ["nope.gguf", "not found"], EXIT_RUNTIME),
    ("bad:missing-repo", ["nobody/nothing", "not found"], EXIT_RUNTIME),
    ("bad:junk", ["not a valid gguf"], EXIT_RUNTIME),
    ("tiny:nonexistent", ["unknown model", "tiny:big"], EXIT_RUNTIME),
    ("../../etc/passwd", ["invalid model name"], EXIT_USAGE),
    ("tiny:../x", ["invalid model name"], EXIT_USAGE),
    ("a\\b", ["invalid model name"], EXIT_USAGE),
])
def test_pull_errors_are_one_line(env, name, needles, code, tmp_path):
    proc = run_gemma(env, "pull", name)
    assert_one_line_error(proc, *needles, code=code)
    assert not list((tmp_path / "models").glob("manifests/*/*.json"))


def test_unreachable_hub_and_offline_mode(env, tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    down = dict(env, HF_ENDPOINT=f"http://127.0.0.1:{port}")
    assert_one_line_error(run_gemma(down, "pull", "tiny:big"), "cannot reach", "HF_HUB_OFFLINE")
    offline = dict(env, HF_HUB_OFFLINE="1")
    assert_one_line_error(run_gemma(offline, "pull", "tiny:big"), "offline mode")


def test_pull_of_complete_model_works_offline(env):
    assert run_gemma(env, "pull", "tiny:solo").returncode == 0
    proc = run_gemma(dict(env, HF_HUB_OFFLINE="1"), "pull", "tiny:solo")
    assert proc.returncode == 0 and "up to date" in proc.stdout


def test_disk_full_keeps_partial_and_writes_no_manifest(env, hub, files, tmp_path):
    import resource

    limit = len(files["big.gguf"]) // 2

    def small_disk() -> None:  # file size limit: writes past it fail with EFBIG, like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = run_gemma(env, "pull", "tiny:solo", preexec=small_disk)
    assert_one_line_error(proc, "no space left", "resume")
    partials = list((tmp_path / "models" / "blobs").glob("*.partial"))
    assert len(partials) == 1 and 0 < partials[0].stat().st_size <= limit
    assert not (tmp_path / "models" / "manifests" / "tiny" / "solo.json").exists()
    kept = partials[0].stat().st_size
    before = hub.served("big.gguf")
    assert run_gemma(env, "pull", "tiny:solo").returncode == 0  # space is back: resumes
    assert hub.gets("big.gguf")[-1].range == f"bytes={kept}-"
    assert hub.served("big.gguf") - before == len(files["big.gguf"]) - kept


def test_a_file_that_changes_during_the_download_ends_in_one_line_not_a_loop(env, hub, files, monkeypatch):
    """The Hub's file replaced by a smaller one between the HEAD and the GET: the body ended short, the resume got a
    416, the partial was dropped and the whole file fetched again, for ever (4.7 GB in 30 s for a 3.3 MB model;
    probe, session 18), as every full GET brought bytes and reset the stall count."""
    from hub_server import _Handler

    smaller = files["draft.gguf"]
    assert len(smaller) < len(files["big.gguf"])
    serve = _Handler._serve

    def swap_after_head(self, head: bool) -> None:
        serve(self, head)
        if head:
            self.state.files[(REPO, "big.gguf")] = smaller

    monkeypatch.setattr(_Handler, "_serve", swap_after_head)
    proc = run_gemma(env, "pull", "tiny:solo", timeout=60)
    assert_one_line_error(proc, "changed on the server during the download", "run the command again")
    assert len(hub.gets("big.gguf")) < 20


def test_a_refused_hf_pair_names_its_files_and_keeps_none_of_its_downloads(env, hub, tmp_path):
    """The refusal named blob hashes (`drafter sha256-3f6c… cannot draft for sha256-c2f6…`) and left both downloads
    in the store, listed nowhere (probe, session 18)."""
    proc = run_gemma(env, "create", "mine", "--target", f"hf://{REPO}/big.gguf", "--draft", f"hf://{REPO}/g4-target.gguf")
    assert_one_line_error(proc, "drafter g4-target.gguf cannot draft for big.gguf")
    blobs = tmp_path / "models" / "blobs"
    assert not list(blobs.glob("sha256-*")), list(blobs.iterdir())
    # a blob that was there before (another model's) is never taken out
    assert run_gemma(env, "pull", "tiny:solo").returncode == 0
    kept = sorted(p.name for p in blobs.glob("sha256-*") if p.suffix != ".partial")
    proc = run_gemma(env, "create", "mine", "--target", f"hf://{REPO}/big.gguf", "--draft", f"hf://{REPO}/g4-target.gguf")
    assert proc.returncode == 1
    assert sorted(p.name for p in blobs.glob("sha256-*") if p.suffix != ".partial") == kept


def test_a_busy_hub_is_waited_out_as_its_retry_after_asks_a_few_times(env, hub, files, monkeypatch):
    """One 429 (or a 503 on the HEAD) ended the pull at once (probe, session 18); now it waits as Retry-After says, a
    bounded number of times, then says the Hub is busy."""
    from hub_server import _Handler

    serve, answered = _Handler._serve, {"HEAD": 0, "GET": 0}

    def busy(self, head: bool, *, times: int) -> None:
        kind = "HEAD" if head else "GET"
        if answered[kind] < times:
            answered[kind] += 1
            self.send_response(503 if head else 429)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        serve(self, head)

    monkeypatch.setattr(_Handler, "_serve", lambda self, head: busy(self, head, times=2))
    assert run_gemma(env, "pull", "tiny:solo", timeout=60).returncode == 0
    assert answered == {"HEAD": 2, "GET": 2}
    answered.update(HEAD=0, GET=0)
    monkeypatch.setattr(_Handler, "_serve", lambda self, head: busy(self, head, times=1000))
    proc = run_gemma(env, "pull", "tiny:big", timeout=60)
    assert_one_line_error(proc, "HTTP 503", "try again later")
    assert answered["HEAD"] == 4  # the first try and three waits


def test_a_file_without_a_sha256_is_not_downloaded_again_at_the_same_commit(env, hub, files):
    """A file the Hub serves without an LFS sha256 (a regular git file, or a mirror that leaves the header out) was
    downloaded again by every pull (probe, session 18); the stored copy of the same commit is that file."""
    hub.state.not_lfs.add("big.gguf")
    first = run_gemma(env, "pull", "tiny:solo")
    assert first.returncode == 0 and "downloaded" in first.stdout, first.stdout
    served = hub.served("big.gguf")
    again = run_gemma(env, "pull", "tiny:solo")
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout
    assert hub.served("big.gguf") == served
    assert run_gemma(env, "pull", "tiny:big").returncode == 0  # another model sharing the file fetches only its drafter
    assert hub.served("big.gguf") == served


def test_create_on_a_full_disk_says_nothing_was_kept_and_keeps_nothing(env, files, tmp_path):
    import resource

    source = tmp_path / "local.gguf"
    source.write_bytes(files["big.gguf"])
    limit = len(files["big.gguf"]) // 2

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = run_gemma(env, "create", "mine", "--target", str(source), preexec=small_disk)
    assert_one_line_error(proc, "no space left", "nothing was kept")
    assert "resume" not in proc.stderr
    blobs = tmp_path / "models" / "blobs"
    assert not [p for p in blobs.iterdir() if p.stat().st_size] if blobs.exists() else True


def test_create_from_hf_uris_and_a_pinned_revision(env, hub, files, tmp_path):
    target, draft = f"hf://{REPO}/big.gguf@v1.0", f"hf://{REPO}/draft.gguf"
    made = run_gemma(env, "create", "mine", "--target", target, "--draft", draft, "--quiet")
    assert made.returncode == 0 and made.stderr == "", made.stderr
    paths = [r.path.split("?")[0] for r in hub.state.requests]
    assert f"/{REPO}/resolve/v1.0/big.gguf" in paths  # the pinned revision is what was asked for
    assert f"/{REPO}/resolve/main/draft.gguf" in paths  # no revision: main
    m = _manifest(tmp_path / "models", "mine", "latest")
    blobs = tmp_path / "models" / "blobs"
    assert (blobs / ("sha256-" + m["target"]["digest"].split(":")[1])).read_bytes() == files["big.gguf"]
    assert (blobs / ("sha256-" + m["drafter"]["digest"].split(":")[1])).read_bytes() == files["draft.gguf"]
    assert m["draft_source"] == "model" and m["target"]["filename"] == "big.gguf"
    served = hub.served("big.gguf")
    again = run_gemma(env, "create", "mine2", "--target", f"hf://{REPO}/big.gguf", "--quiet")
    assert again.returncode == 0, again.stderr
    assert hub.served("big.gguf") == served  # already in the store: checked, not downloaded again
    assert_one_line_error(run_gemma(env, "create", "bad", "--target", f"hf://{REPO}/nope.gguf"), "nope.gguf", "not found")


def test_a_hub_that_misbehaves_on_get_is_one_line_and_never_loops(env, hub, files, tmp_path):
    """Third careless-user sweep: a body longer than its announced size looped forever (the partial grew past
    the size, was deleted, downloaded again); a 500 on GET read 'cannot write ….partial: None'; a redirect loop
    was 'a bug'."""
    import threading

    from gemma_cli.registry.pull import pull
    from gemma_cli.registry.resolve import resolve_model

    hub.state.extra_bytes["big.gguf"] = 1 << 20  # the file, then 1 MiB more, all inside Content-Length
    done = threading.Event()
    threading.Thread(target=lambda: (pull("tiny:solo"), done.set()), daemon=True).start()
    assert done.wait(60), "pull did not finish"
    assert resolve_model("tiny:solo").target.read_bytes() == files["big.gguf"]
    hub.state.extra_bytes.clear()

    hub.state.get_status["draft.gguf"] = 500
    assert_one_line_error(run_gemma(env, "pull", "tiny:big"), "the Hub answered HTTP 500 for test-org/tiny-GGUF/draft.gguf")
    hub.state.get_status.clear()
    hub.state.redirect_loop.add("draft.gguf")
    assert_one_line_error(run_gemma(env, "pull", "tiny:big"), "redirected test-org/tiny-GGUF/draft.gguf in a loop")


def test_a_connection_that_breaks_off_is_not_called_unreachable():
    import httpx2

    from gemma_cli.registry.hub import hub_error

    err = hub_error(httpx2.RemoteProtocolError("peer closed connection without sending complete message body"), "o/r", "x.gguf")
    assert err is not None and "broke off during a request for o/r/x.gguf" in str(err) and "cannot reach" not in str(err)
    err = hub_error(httpx2.ConnectError("[Errno 111] Connection refused"), "o/r", "x.gguf")
    assert err is not None and "cannot reach" in str(err)
