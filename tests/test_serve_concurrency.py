"""`gemma serve` under concurrent clients: exact solo outputs, disconnects, the queue, LRU, keep-alive, metrics.

These run with GEMMA_NUM_PARALLEL=1 (one request at a time per model, the others queued); shared
batches with several requests at once are tested in test_serve_batching.py."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gguf_factory import write_llama_gguf
from serve_helpers import ServerProcess, register, tiny_store

# A generation that runs for many seconds: greedy "Hello" settles into a loop without an end-of-text
# token on this tiny model, so it runs until the server's 16k context is full.
LONG_PROMPT = "Hello"
LONG = {"temperature": 0, "draft": "none"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("serve-conc")
    tiny_store(d)
    register(d / "models", "other", write_llama_gguf(d / "other.gguf", seed=3))
    return d / "models"


@pytest.fixture(scope="module")
def server(store: Path):
    with ServerProcess(store, "--ctx", "16384", "--threads", "1", GEMMA_MAX_QUEUE="3", GEMMA_MAX_LOADED_MODELS="1",
                       GEMMA_NUM_PARALLEL="1") as srv:
        yield srv


def _ps(server) -> dict[str, dict]:
    return {m["name"]: m for m in httpx.get(server.url + "/api/ps").json()["models"]}


def _generate(server, prompt: str, n: int = 30) -> str:
    r = httpx.post(server.url + "/api/generate", json={"model": "tiny", "prompt": prompt, "stream": False,
                                                       "options": {"temperature": 0, "num_predict": n}}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["response"]


def _chat(server, prompt: str, n: int = 30) -> str:
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": prompt}],
                                                             "temperature": 0, "max_tokens": n, "stream": True}, timeout=60)
    assert r.status_code == 200, r.text
    text = ""
    for line in r.text.split("\n\n"):
        if line.startswith("data: {"):
            import json

            text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
    return text


class LongStream:
    """A long streaming generation held open from a thread until `close()`."""

    def __init__(self, server, model: str = "tiny") -> None:
        self.first = threading.Event()
        self.done = threading.Event()
        self.status = 0
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(server, model), daemon=True)
        self._thread.start()

    def _run(self, server, model: str) -> None:
        body = {"model": model, "prompt": LONG_PROMPT, "options": LONG}
        with httpx.Client(timeout=60) as c, c.stream("POST", server.url + "/api/generate", json=body) as r:
            self.status = r.status_code
            for _ in r.iter_lines():
                self.first.set()
                if self._release.is_set():
                    break
        self.first.set()
        self.done.set()

    def close(self) -> None:
        self._release.set()
        self.done.wait(30)


def test_four_concurrent_clients_each_get_their_solo_output(server):
    prompts = ["alpha", "bravo charlie", "delta echo foxtrot", "golf"]
    calls = [(p, _generate if i % 2 == 0 else _chat) for i, p in enumerate(prompts)]  # both APIs at once
    solo = [call(server, p, 120) for p, call in calls]
    assert len(set(solo)) == 4  # the prompts really give different texts
    start = threading.Barrier(4)

    def client(i: int) -> str:
        start.wait()
        p, call = calls[i]
        return call(server, p, 120)

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(client, range(4)))  # 1 running + 3 queued: all admitted (GEMMA_MAX_QUEUE=3)
    assert together == solo


def test_disconnect_frees_the_server_within_a_step(server):
    stream = LongStream(server)
    assert stream.first.wait(30) and stream.status == 200
    assert _ps(server)["tiny:latest"]["in_use"]
    t0 = time.perf_counter()
    stream.close()
    freed = server.wait_for(lambda: not _ps(server)["tiny:latest"]["in_use"], timeout=5)
    assert freed < 2.0
    t1 = time.perf_counter()
    assert _generate(server, "after", 5)
    assert time.perf_counter() - t1 < 5.0, "the next request waited for the abandoned generation"
    # a non-streaming client that gives up (timeout) is cancelled too
    body = {"model": "tiny", "prompt": LONG_PROMPT, "stream": False, "options": LONG}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/api/generate", json=body, timeout=1.0)
    server.wait_for(lambda: not _ps(server)["tiny:latest"]["in_use"], timeout=5)
    assert time.perf_counter() - t0 < 15


def test_queue_overflow_gives_503_and_the_queue_drains(server):
    running = LongStream(server)
    assert running.first.wait(30)
    queued = [LongStream(server) for _ in range(3)]  # they wait for the model: the queue is full
    server.wait_for(lambda: httpx.get(server.url + "/health").json()["queue_depth"] == 3)
    r = httpx.post(server.url + "/api/generate", json={"model": "tiny", "prompt": "x", "options": {"num_predict": 1}})
    assert r.status_code == 503 and "GEMMA_MAX_QUEUE" in r.json()["error"]
    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
    assert r.status_code == 503 and r.headers["content-type"] == "application/json"
    running.close()
    while queued:  # each gets the model in turn (in arrival order, unknown here) and gives it up when closed
        server.wait_for(lambda: any(s.first.is_set() for s in queued), timeout=30)
        stream = next(s for s in queued if s.first.is_set())
        assert stream.status == 200
        stream.close()
        queued.remove(stream)
    server.wait_for(lambda: not _ps(server)["tiny:latest"]["in_use"], timeout=5)
    assert httpx.get(server.url + "/health").json()["queue_depth"] == 0


def test_lru_unloads_idle_models_never_busy_ones(server):
    _generate(server, "x", 2)
    busy = LongStream(server, "tiny")
    assert busy.first.wait(30)
    result: dict[str, str] = {}
    waiter = threading.Thread(target=lambda: result.setdefault("text", httpx.post(
        server.url + "/api/generate", json={"model": "other", "prompt": "x", "stream": False, "options": {"num_predict": 3}},
        timeout=60).json()["response"]))
    waiter.start()
    time.sleep(0.5)
    assert list(_ps(server)) == ["tiny:latest"]  # the busy model stays; `other` waits for it
    busy.close()
    waiter.join(30)
    assert result.get("text") is not None
    assert list(_ps(server)) == ["other:latest"]  # one model at a time: tiny (now idle) was unloaded


def test_keep_alive_expiry_and_metrics(server):
    r = httpx.post(server.url + "/api/generate", json={"model": "tiny", "prompt": "x", "stream": False, "keep_alive": "1s",
                                                       "options": {"num_predict": 3}})
    assert r.status_code == 200 and "tiny:latest" in _ps(server)
    server.wait_for(lambda: "tiny:latest" not in _ps(server), timeout=5)
    text = httpx.get(server.url + "/metrics").text

    def value(pattern: str) -> float:
        m = re.search("^" + pattern + r" ([0-9.e+]+)$", text, re.M)
        assert m, pattern
        return float(m.group(1))

    assert value(r'gemma_generated_tokens_total\{model="tiny:latest"\}') > 30
    assert value(r'gemma_requests_total\{route="/api/generate",status="503"\}') >= 1
    assert value(r'gemma_requests_total\{route="/v1/chat/completions",status="200"\}') >= 4
    assert value(r'gemma_time_to_first_token_seconds_count\{model="tiny:latest"\}') >= 4
    assert value(r'gemma_tokens_per_second_count\{model="tiny:latest"\}') >= 4
    assert value("gemma_queue_depth") == 0 and value("gemma_loaded_models") == 0
    assert value(r'gemma_draft_proposed_tokens_total\{model="tiny:latest",source="ngram"\}') >= \
        value(r'gemma_draft_accepted_tokens_total\{model="tiny:latest",source="ngram"\}')
    assert "gemma_draft_accepted_by_position_total" in text


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_requests_that_waited_for_the_load_report_it_as_load_duration(store, parallel):
    """Ollama's load_duration: the load a request waited for, whether it loaded the model itself, queued behind
    the request that did (GEMMA_NUM_PARALLEL=1), or waited for that load to start its own (2)."""
    with ServerProcess(store, "--threads", "1", GEMMA_NUM_PARALLEL=parallel) as srv:
        body = {"model": "tiny", "prompt": "ab", "stream": False, "options": {"num_predict": 2}}

        def generate(_: int) -> dict:
            return httpx.post(srv.url + "/api/generate", json=body, timeout=60).json()

        with ThreadPoolExecutor(3) as pool:  # a fresh server's first load takes long enough for all three to wait
            finals = list(pool.map(generate, range(3)))
        assert all(0 < f["load_duration"] <= f["total_duration"] for f in finals), finals
        assert generate(0)["load_duration"] == 0  # loaded before it came: nothing to wait for


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_a_stream_cut_short_by_shutdown_ends_with_an_error_not_a_finish(store, api):
    """A client reading a reply while the server stops must learn the text is incomplete: an in-band error
    (Ollama: an {"error"} line; OpenAI: an SSE error event), not done_reason / finish_reason "stop"."""
    import json

    with ServerProcess(store, "--ctx", "16384", "--threads", "1", GEMMA_NUM_PARALLEL="1") as srv:
        if api == "ollama":
            path, body = "/api/generate", {"model": "tiny", "prompt": LONG_PROMPT, "options": LONG}
        else:
            path, body = "/v1/completions", {"model": "tiny", "prompt": LONG_PROMPT, "temperature": 0, "stream": True,
                                              "max_tokens": 16000, "draft": "none"}
        events: list[dict] = []
        with httpx.stream("POST", srv.url + path, json=body, timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if api == "openai":
                    if not line.startswith("data: {"):
                        continue
                    line = line[6:]
                if not line.strip():
                    continue
                events.append(json.loads(line))
                if len(events) == 3:
                    srv.proc.terminate()  # SIGTERM, as a service manager stops it
        assert len(events) > 3
        last = events[-1]
        if api == "ollama":
            assert "cut short" in last["error"] and not any(e.get("done") for e in events), last
        else:
            assert "cut short" in last["error"]["message"], last
            assert not any(c.get("finish_reason") for e in events[:-1] for c in e.get("choices", [])), events[-2]
