"""POST /api/pull through `gemma serve` against the local test Hub: streamed progress, then the model runs."""

from __future__ import annotations

import httpx
import pytest

from gguf_factory import write_llama_gguf
from hub_server import HubServer, write_catalog
from serve_helpers import ServerProcess, ndjson

REPO = "test-org/tiny-GGUF"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("serve-pull")
    target = write_llama_gguf(d / "t.gguf", seed=5, n_embd=64, n_ff=128)
    drafter = write_llama_gguf(d / "d.gguf", seed=6, n_layer=1)
    catalog = write_catalog(d / "catalog.json", {
        "tiny:pair": {"target": (REPO, "t.gguf"), "drafter": (REPO, "d.gguf"), "draft_source": "model", "draft_tokens": 3},
        "tiny:solo": {"target": (REPO, "t.gguf"), "draft_source": "ngram"},
        "bad:gated": {"target": ("gated-org/model", "t.gguf")},
    })
    with HubServer() as hub:
        hub.add(REPO, "t.gguf", target.read_bytes())
        hub.add(REPO, "d.gguf", drafter.read_bytes())
        hub.add("gated-org/model", "t.gguf", target.read_bytes())
        hub.state.gated.add("gated-org/model")
        with ServerProcess(d / "models", "--threads", "1", endpoint=hub.endpoint, catalog=catalog) as srv:
            yield srv, hub


def test_ollama_client_pull_streams_progress_then_generates_with_the_drafter(setup):
    import ollama

    server, hub = setup
    client = ollama.Client(host=server.url)
    events = list(client.pull("tiny:pair", stream=True))
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    pulling = [e for e in events if e.status.startswith("pulling tiny:pair")]
    assert {e.status for e in pulling} == {"pulling tiny:pair target", "pulling tiny:pair drafter"}
    target_events = [e for e in pulling if e.status.endswith("target")]
    assert target_events[-1].completed == target_events[-1].total == len(hub.state.files[(REPO, "t.gguf")])
    assert "tiny:pair" in {m.model for m in client.list().models}
    again = client.pull("tiny:pair")  # non-streaming, nothing left to fetch
    assert again.status == "success"

    r = httpx.post(server.url + "/api/generate", json={"model": "tiny:pair", "prompt": "Hello", "stream": False,
                                                       "options": {"temperature": 0, "num_predict": 12}}).json()
    assert r["draft_source"] == "model" and r["draft_max"] == 3 and r["draft_proposed"] > 0
    plain = httpx.post(server.url + "/api/generate", json={"model": "tiny:pair", "prompt": "Hello", "stream": False,
                                                           "options": {"temperature": 0, "num_predict": 12, "draft": "none"}}).json()
    assert plain["response"] == r["response"] and plain["draft_proposed"] == 0  # lossless: same text


def test_pull_errors(setup):
    server, _ = setup
    r = httpx.post(server.url + "/api/pull", json={"model": "bad:gated"})
    lines = ndjson(r.content)  # the failure comes after the headers: reported in-band, as Ollama does
    assert r.status_code == 200 and "error" in lines[-1] and "gated" in lines[-1]["error"].lower()
    r = httpx.post(server.url + "/api/pull", json={"model": "bad:gated", "stream": False})
    assert r.status_code == 502 and "gated" in r.json()["error"].lower()
    r = httpx.post(server.url + "/api/pull", json={"model": "nothing:here"})
    assert r.status_code == 404 and "unknown model" in r.json()["error"]
