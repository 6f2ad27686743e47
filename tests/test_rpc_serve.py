"""`gemma serve --rpc`: a real server whose model is split across real `gemma rpc-worker` processes.

Greedy text through the official openai client must equal the local `gemma run`;
a lost or unreachable worker must give one JSON error (502) in bounded time,
and the server must stay up. Skipped only when this llama.cpp build has no RPC.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from gemma_cli.engine.rpc import supports_rpc
from hub_server import gemma_env, run_gemma
from serve_helpers import ServerProcess, tiny_store
from test_rpc import Worker, free_port

pytestmark = pytest.mark.skipif(not supports_rpc(), reason="llama.cpp built without RPC (CMAKE_ARGS=-DGGML_RPC=on)")

PROMPT = "Hello there"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("serve-rpc")
    return tiny_store(d)


def test_split_server_answers_the_local_text_and_survives_a_lost_worker(tmp_path, store):
    import openai

    solo = run_gemma(gemma_env(store), "run", "tiny", PROMPT, "-t", "0", "-n", "20", "--threads", "1", "--draft", "none")
    assert solo.returncode == 0 and solo.stdout, solo.stderr
    workers = [Worker(tmp_path), Worker(tmp_path)]
    try:
        rpc = ",".join(w.address for w in workers)
        with ServerProcess(store, "--threads", "1", "--rpc", rpc) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
            for draft in ("none", "ngram"):
                r = client.completions.create(model="tiny", prompt=PROMPT, temperature=0, max_tokens=20, extra_body={"draft": draft})
                assert r.choices[0].text == solo.stdout, draft
            assert all("Accepted client connection" in w.log.read_text() for w in workers)  # both really served
            workers[1].proc.kill()
            workers[1].proc.wait()
            t0 = time.monotonic()
            with pytest.raises(openai.APIStatusError) as lost:
                client.completions.create(model="tiny", prompt=PROMPT, temperature=0, max_tokens=20)
            assert time.monotonic() - t0 < 20
            assert lost.value.status_code == 502
            assert f"lost the connection to RPC worker {workers[1].address}" in lost.value.message  # OpenAI's error object
            assert lost.value.response.json()["error"]["type"] == "api_error"
            again = httpx.post(srv.url + "/api/generate", json={"model": "tiny", "prompt": PROMPT, "stream": False}, timeout=20)
            assert again.status_code == 502 and "cannot reconnect" in again.json()["error"]
            assert httpx.get(srv.url + "/health", timeout=5).status_code == 200  # the server itself lives on
            assert srv.proc.poll() is None
        assert srv.proc.returncode == 0  # and stops cleanly, though a thread is parked inside ggml
        assert any(line.startswith("gemma serve: lost the connection to RPC worker") for line in srv.log)
        assert not any("Traceback" in line for line in srv.log)
    finally:
        for w in workers:
            w.stop()


def test_unreachable_worker_is_a_json_error_and_bad_options_are_usage_errors(store):
    with ServerProcess(store, "--threads", "1", "--rpc", f"127.0.0.1:{free_port()}") as srv:
        t0 = time.monotonic()
        r = httpx.post(srv.url + "/api/generate", json={"model": "tiny", "prompt": PROMPT, "stream": False}, timeout=20)
        assert r.status_code == 502 and "connection refused" in r.json()["error"] and time.monotonic() - t0 < 10
    env = gemma_env(store)
    for args in (["--tensor-split", "1,1"], ["--rpc", "127.0.0.1:x"], ["--rpc", "127.0.0.1:5", "--tensor-split", "1"],
                 ["--rpc", "127.0.0.1:5", "--max-loaded", "2"]):
        proc = run_gemma(env, "serve", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("Error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
