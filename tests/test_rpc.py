"""ggml RPC: real `gemma rpc-worker` processes on loopback ports, real clients.

A split model must print exactly what the local run prints (greedy), the
workers must really hold the weights, and every failure must be one line.
Skipped only when this llama.cpp build has no RPC backend.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gemma_cli.engine.rpc import supports_rpc, traffic
from gemma_cli.engine.rpc_placement import (
    _ranges,
    layers_on_workers,
    parse_tensor_split,
    with_local_tail,
)
from gemma_cli.errors import UsageError

pytestmark = pytest.mark.skipif(not supports_rpc(), reason="llama.cpp built without RPC (CMAKE_ARGS=-DGGML_RPC=on)")

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
GEMMA = [sys.executable, "-m", "gemma_cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """A `gemma rpc-worker` subprocess; ready once it printed its serving line."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.log = tmp / f"worker-{self.port}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(GEMMA + ["rpc-worker", "--port", str(self.port), "--threads", "1"], stdout=out, stderr=subprocess.STDOUT, env=ENV)
        deadline = time.monotonic() + 30
        while "gemma rpc-worker: serving" not in self.log.read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rpc")
    pair = [Worker(tmp), Worker(tmp)]
    yield pair
    for w in pair:
        assert w.stop() == 0, w.log.read_text()  # SIGTERM: a clean stop
        assert "gemma rpc-worker: stopped" in w.log.read_text()


def gemma(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(GEMMA + list(args), capture_output=True, text=True, env=ENV, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_split_arithmetic():
    assert parse_tensor_split("2,1,1", 2) == [2.0, 1.0, 1.0]
    with pytest.raises(UsageError, match="needs 3 values"):
        parse_tensor_split("1,1", 2)
    with pytest.raises(UsageError, match="give the workers"):
        parse_tensor_split("0,0,1", 2)
    for bad in ("nan,1", "inf,1", "1e39,1", "-1,1"):  # nan and inf were 'a bug in gemma-cli', 1e39 a failed load (probe)
        with pytest.raises(UsageError, match="numbers from 0 to 1e6"):
            parse_tensor_split(bad, 1)
    assert layers_on_workers(26, [1, 1, 1]) == 18  # 27 layers (26 + output), two thirds remote
    assert layers_on_workers(26, [1, 0]) == 27
    assert layers_on_workers(2, [1, 1000]) == 1  # the workers get at least one layer
    assert _ranges([0, 1, 2, 5, 6, 26], 26) == "layers 0-2, 5-6, output norm"
    assert with_local_tail(26, 18, [1.0, 1.0], 2) == (21, [8.75, 8.75, 3.5])  # 18 layers remote, 24-25 + output here


def test_tiny_model_through_two_workers_prints_the_local_text(workers, tiny_model):
    rpc = ",".join(w.address for w in workers)
    common = [str(tiny_model), "Hello there", "-t", "0", "-n", "40", "--threads", "1"]
    local = gemma("run", *common, "--draft", "none")
    assert local.returncode == 0, local.stderr
    for draft in ("none", "ngram"):
        split = gemma("run", *common, "--draft", draft, "--rpc", rpc, "--verbose")
        assert split.returncode == 0, split.stderr
        assert split.stdout == local.stdout
        placement = [ln for ln in split.stderr.splitlines() if ln.startswith("placement: ")]
        assert [ln.split(":", 1)[1].split(":")[0].strip() for ln in placement[:1]] == ["this machine"]
        assert all(any(w.address in ln for ln in placement) for w in workers)


def test_gemma3_270m_split_matches_local_and_workers_hold_weights(workers, gemma3_path):
    from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
    from gemma_cli.engine.sampling import SamplingParams

    prompt, greedy = "The three primary colors are", SamplingParams(temperature=0.0)
    before = [w.rss() for w in workers]
    local = Engine(gemma3_path, DraftConfig(source="none"), EngineConfig(n_ctx=512, n_threads=1))
    try:
        ref = local.generate(local.tokenize(prompt), max_tokens=24, sampling=greedy)
        ref_text = ref.text()
    finally:
        local.close()
    rpc = ",".join(w.address for w in workers)
    eng = Engine(gemma3_path, DraftConfig(source="ngram", tokens=8), EngineConfig(n_ctx=512, n_threads=1, rpc=rpc))
    try:
        endpoints = [w.endpoint for w in eng.placement.workers]
        sent0 = traffic(endpoints)
        g = eng.generate(eng.tokenize(prompt), max_tokens=24, sampling=greedy)
        assert g.text() == ref_text
        sent = {k: v - sent0[k] for k, v in traffic(endpoints).items()}
        # The output projection stays local: hidden states cross the wire, not 262k logits (1 MiB) per row.
        assert 0 < sent["bytes_sent"] + sent["bytes_received"] < 24 * 256 * 1024, sent
        assert g.result.stats.draft_proposed > 0  # n-gram drafting ran over RPC, losslessly
        places = eng.placement.summary()
        for w, rss0 in zip(workers, before, strict=True):
            held_mib = places[w.address]["model"]
            assert held_mib > 5, places
            assert w.rss() - rss0 > 0.5 * held_mib * 2**20, (w.address, held_mib)
        # A worker serves one client at a time: a second gemma gets one line, in bounded time.
        t0 = time.monotonic()
        busy = gemma("run", str(gemma3_path), "hi", "-n", "2", "--rpc", workers[0].address, timeout=60)
        assert busy.returncode == 1 and time.monotonic() - t0 < 30
        assert "did not answer" in one_error_line(busy)
    finally:
        eng.close()
    split = gemma("run", str(gemma3_path), prompt, "-t", "0", "-n", "24", "--threads", "1", "--draft", "ngram", "--rpc", rpc)
    assert split.returncode == 0, split.stderr
    assert split.stdout == ref_text


def test_refused_connection_is_one_line():
    t0 = time.monotonic()
    proc = gemma("run", "hi", "-n", "2", "--rpc", f"127.0.0.1:{free_port()}")
    assert proc.returncode == 1 and time.monotonic() - t0 < 30
    assert "connection refused" in one_error_line(proc)


def test_worker_killed_mid_generation_is_one_line(tmp_path, gemma3_path):
    worker = Worker(tmp_path)
    cmd = GEMMA + ["run", str(gemma3_path), "The three primary colors are", "-t", "0", "-n", "2000", "--ctx", "4096"]
    client = subprocess.Popen(cmd + ["--threads", "1", "--draft", "none", "--rpc", worker.address],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        os.set_blocking(client.stdout.fileno(), True)
        assert client.stdout.read(8)  # generation is under way
        worker.proc.kill()
        t0 = time.monotonic()
        out, err = client.communicate(timeout=30)
        assert time.monotonic() - t0 < 20
    finally:
        if client.poll() is None:
            client.kill()
        worker.stop()
    line = one_error_line(subprocess.CompletedProcess(cmd, client.returncode, out, err))
    assert client.returncode == 1
    assert f"lost the connection to RPC worker {worker.address}" in line


def test_frozen_worker_second_ctrl_c_ends_the_client(tmp_path, gemma3_path):
    """A stopped worker keeps its socket open (no error ever comes); Ctrl-C twice must still end the client."""
    worker = Worker(tmp_path)
    cmd = GEMMA + ["run", str(gemma3_path), "The three primary colors are", "-t", "0", "-n", "2000"]
    client = subprocess.Popen(cmd + ["--threads", "1", "--draft", "none", "--rpc", worker.address],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert client.stdout.read(8)
        worker.proc.send_signal(signal.SIGSTOP)
        time.sleep(1.5)  # the client is now blocked inside ggml, waiting for the worker
        client.send_signal(signal.SIGINT)
        time.sleep(1.5)
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=15)
    finally:
        if client.poll() is None:
            client.kill()
        worker.proc.send_signal(signal.SIGCONT)
        worker.stop()
    assert client.returncode == 130, err
    assert "press Ctrl-C again to quit" in err
    assert err.strip().splitlines()[-1] == "Error: interrupted while waiting for an RPC worker that does not answer"


def test_doctor_finding_reports_the_build_and_the_gemma_rpc_workers(workers):
    from gemma_cli.engine.llama import capabilities
    from gemma_cli.engine.rpc_protocol import doctor_finding

    assert capabilities()["rpc"] is True  # what doctor's llama.cpp probe passes on
    status, summary, hint = doctor_finding(True, ",".join(w.address for w in workers))
    assert status == "ok" and hint is None and all(w.address in summary for w in workers)
    status, summary, hint = doctor_finding(True, f"{workers[0].address},127.0.0.1:{free_port()}")
    assert status == "warn" and "connection refused" in summary and "gemma rpc-worker" in hint
    status, _, hint = doctor_finding(False, None)
    assert status == "info" and "-DGGML_RPC=on" in hint


def test_worker_refuses_a_public_address_without_allow_remote():
    proc = gemma("rpc-worker", "--host", "0.0.0.0", "--port", str(free_port()))
    assert proc.returncode == 2
    assert "--allow-remote" in one_error_line(proc)


def test_bad_rpc_options_are_usage_errors(tiny_model):
    for args in (["--rpc", "[::1]:5"], ["--rpc", "127.0.0.1:x"], ["--tensor-split", "1,1"], ["--rpc", "127.0.0.1:5", "--gpu-layers", "3"]):
        proc = gemma("run", str(tiny_model), "hi", "-n", "2", *args)
        assert proc.returncode == 2, args
        one_error_line(proc)


def test_build_without_rpc_gives_one_line(monkeypatch, tiny_model, capsys):
    """What a build without -DGGML_RPC=on says (llama_supports_rpc() answering False)."""
    import llama_cpp

    from gemma_cli.cli import app

    monkeypatch.setattr(llama_cpp, "llama_supports_rpc", lambda: False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(SystemExit) as exit_info:
        app.main(["run", str(tiny_model), "hi", "-n", "2", "--rpc", "127.0.0.1:50052"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: this llama.cpp build has no RPC backend; rebuild") and "-DGGML_RPC=on" in err
    assert err.count("\n") == 1, err  # the hint rides on the one error line


def test_bench_reports_tokens_per_pass_and_round_trips_per_token(workers, tiny_model, tmp_path, capsys):
    from gemma_cli.cli.commands.bench import render_tables

    prompt = tmp_path / "prompt.txt"
    prompt.write_text("abcabcabcabcabc")
    rpc = ",".join(w.address for w in workers)
    proc = gemma("bench", str(tiny_model), "-w", str(prompt), "--runs", "1", "-n", "24", "--threads", "1",
                 "--draft", "ngram", "--draft-tokens", "4", "--rpc", rpc, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [w["address"] for w in data["rpc"]["workers"]] == [w.address for w in workers]
    assert all(0 < w["round_trip_ms"] < 1000 for w in data["rpc"]["workers"])
    (w,) = data["workloads"]
    plain, (spec,) = w["plain"], w["speculative"]
    assert plain["tokens_per_pass"] == 1.0 and plain["round_trips_per_token"] == 2.0  # one pass per token, two workers
    assert spec["round_trips_per_token"] == pytest.approx(2 * spec["target_passes"] / spec["generated_tokens"])
    assert spec["round_trips_per_token"] == pytest.approx(2 / spec["tokens_per_pass"])
    render_tables(data)
    out = capsys.readouterr().out
    assert "round trips/token" in out and f"{plain['round_trips_per_token']:.2f}/{spec['round_trips_per_token']:.2f}" in out


def test_mtp_over_rpc_keeps_the_layers_the_assistant_reads_here_and_matches_plain(workers, tmp_path):
    """The assistant attends to the target's last two layers' KV: those stay local, the rest is split, the text is plain's."""
    from gemma4_factory import write_gemma4_pair
    from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig
    from gemma_cli.engine.sampling import SamplingParams

    target, assistant = write_gemma4_pair(tmp_path)
    greedy, prompts = SamplingParams(temperature=0.0), ["Hello world", "The quick brown fox"]
    with Engine(target, DraftConfig(source="none"), EngineConfig(n_ctx=512, n_threads=1)) as local:
        refs = [local.generate(local.tokenize(p), max_tokens=30, sampling=greedy).text() for p in prompts]
    rpc = ",".join(w.address for w in workers)
    mtp = DraftConfig(source="mtp", tokens=3, model_path=assistant, adaptive=False)
    with Engine(target, mtp, EngineConfig(n_ctx=512, n_threads=1, rpc=rpc)) as eng:
        for prompt, ref in zip(prompts, refs, strict=True):
            g = eng.generate(eng.tokenize(prompt), max_tokens=30, sampling=greedy)
            assert g.text() == ref
            assert g.result.stats.tokens_per_pass > 1.5  # the assistant really drafted
        places, n = eng.placement.summary(), eng.placement.n_layer
        assert {n - 2, n - 1, n} <= set(places["this machine"]["layers"])
        assert all(places[w.address]["layers"] for w in workers)
    with Engine(target, DraftConfig(source="none"), EngineConfig(n_ctx=512, n_threads=1, rpc=rpc)) as plain_split:
        with pytest.raises(UsageError, match="--draft mtp"):
            plain_split.set_draft(mtp)
