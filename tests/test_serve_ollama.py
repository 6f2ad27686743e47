"""`gemma serve`'s Ollama API through a real server process: the official ollama client and raw HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from gguf_factory import padded_copy, write_llama_gguf
from hub_server import gemma_env, run_gemma
from serve_helpers import ServerProcess, ndjson, register, tiny_store

PROMPT = "Tell me a story"
GREEDY = {"temperature": 0, "num_predict": 24}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("serve-ollama")
    tiny_store(d)
    register(d / "models", "base", write_llama_gguf(d / "base.gguf", seed=5, chat_template=None))
    return d / "models"


def engine_text(gguf: Path, prompt: str, n: int, **kwargs) -> str:
    """Greedy text from the engine in this process: what `gemma run` computes, without its start-up."""
    from gemma_cli.engine import DraftConfig, Engine

    with Engine(gguf, DraftConfig("none")) as engine:
        return engine.generate(engine.prompt_tokens(prompt, **kwargs), max_tokens=n).text()


@pytest.fixture(scope="module")
def server(store: Path):
    with ServerProcess(store, "--threads", "1") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    import ollama

    return ollama.Client(host=server.url)


@pytest.fixture(scope="module")
def solo(store: Path) -> str:
    """What `gemma run` prints for PROMPT, greedy, 24 tokens."""
    proc = run_gemma(gemma_env(store), "run", "tiny", PROMPT, "--temperature", "0", "-n", "24", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) >= 10
    return proc.stdout


def test_generate_streams_ndjson_and_equals_gemma_run(server, solo):
    r = httpx.post(server.url + "/api/generate", json={"model": "tiny", "prompt": PROMPT, "options": GREEDY})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = ndjson(r.content)
    assert all(not line["done"] for line in lines[:-1]) and len(lines) > 2
    final = lines[-1]
    assert "".join(line["response"] for line in lines) == solo
    assert final["done"] is True and final["done_reason"] == "length" and final["model"] == "tiny:latest"
    assert final["eval_count"] == 24 and final["prompt_eval_count"] > 0
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] >= 0, key
    assert final["total_duration"] >= final["eval_duration"] > 0
    # the draft statistics: ngram drafting is the tiny store model's default
    assert final["draft_source"] == "ngram" and final["draft_max"] == 16
    assert 0 <= final["draft_accepted"] <= final["draft_proposed"]
    assert final["tokens_per_pass"] >= 1.0


def test_ollama_client_generate_and_chat(client, solo):
    one = client.generate(model="tiny", prompt=PROMPT, options=GREEDY)
    assert one.response == solo and one.done and one.done_reason == "length" and one.eval_count == 24
    parts = list(client.generate(model="tiny", prompt=PROMPT, options=GREEDY, stream=True))
    assert "".join(p.response for p in parts) == solo and parts[-1].done

    messages = [{"role": "user", "content": PROMPT}]
    reply = client.chat(model="tiny", messages=messages, options=GREEDY)
    assert reply.message.role == "assistant" and reply.message.content == solo  # same template, same prompt
    streamed = list(client.chat(model="tiny", messages=messages, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in streamed) == solo and streamed[-1].done_reason == "length"


def test_system_raw_and_stop(client, store, solo):
    tiny = store.parent / "tiny.gguf"
    assert engine_text(tiny, PROMPT, 24) == solo  # the in-process reference agrees with `gemma run`
    for kwargs in ({"system": "Be brief."}, {"raw": True}):
        got = client.generate(model="tiny", prompt=PROMPT, options={"temperature": 0, "num_predict": 16}, **kwargs)
        assert got.response == engine_text(tiny, PROMPT, 16, **kwargs) != solo[: len(got.response)], kwargs
    # a base model without a chat template continues the text
    expect = engine_text(store.parent / "base.gguf", "abc", 12)
    assert client.generate(model="base", prompt="abc", options={"temperature": 0, "num_predict": 12}).response == expect
    # stop strings end the text before them
    full = client.generate(model="tiny", prompt=PROMPT, options=GREEDY).response
    stop = full[5:7]
    cut = client.generate(model="tiny", prompt=PROMPT, options={**GREEDY, "stop": [stop]})
    assert cut.response == full[: full.index(stop)] and cut.done_reason == "stop"


def test_seeded_sampling_repeats_and_draft_options_do_not_change_greedy_text(client, server, solo):
    opts = {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "seed": 7, "num_predict": 20}
    a = client.generate(model="tiny", prompt=PROMPT, options=opts).response
    b = client.generate(model="tiny", prompt=PROMPT, options=opts).response
    assert a == b and a
    assert client.generate(model="tiny", prompt=PROMPT, options={**opts, "seed": -1}).done  # Ollama's "random"
    for draft, k in (("none", None), ("ngram", 3), ("ngram", 32)):
        opts = {**GREEDY, "draft": draft} | ({"draft_tokens": k} if k else {})
        got = httpx.post(server.url + "/api/generate", json={"model": "tiny", "prompt": PROMPT, "options": opts,
                                                              "stream": False}).json()  # the ollama client drops extra fields
        assert got["response"] == solo and got["draft_source"] == draft
        assert got["draft_max"] == (0 if draft == "none" else k)


def test_list_show_ps_version(client, server):
    names = {m.model for m in client.list().models}
    assert names == {"tiny:latest", "base:latest"}
    tiny = next(m for m in client.list().models if m.model == "tiny:latest")
    assert tiny.details.format == "gguf" and tiny.details.family == "llama" and tiny.size > 0 and len(tiny.digest) == 64
    shown = client.show("tiny")
    assert shown.details.family == "llama" and "start_of_turn" in shown.template
    assert shown.modelinfo["general.architecture"] == "llama"
    client.generate(model="tiny", prompt="hi", options={"num_predict": 2}, keep_alive="1h")
    ps = client.ps().models
    assert [m.model for m in ps] == ["tiny:latest"] and ps[0].context_length == 4096 and ps[0].size > 0
    assert ps[0].details.family == "llama" and ps[0].details.quantization_level == "F32"
    # the parameter count Ollama clients show: the same in tags, ps and show (was "" in tags and ps)
    assert shown.details.parameter_size and tiny.details.parameter_size == ps[0].details.parameter_size == shown.details.parameter_size
    assert httpx.get(server.url + "/api/version").json()["version"]


def test_keep_alive_zero_unloads_and_empty_prompt_loads(server):
    ps = lambda: [m["name"] for m in httpx.get(server.url + "/api/ps").json()["models"]]  # noqa: E731
    r = httpx.post(server.url + "/api/generate", json={"model": "base", "prompt": "ab", "stream": False, "keep_alive": 0,
                                                         "options": {"num_predict": 3}})
    assert r.status_code == 200 and r.json()["done"]
    assert "base:latest" not in ps()  # unloaded before the response ended
    loaded = httpx.post(server.url + "/api/generate", json={"model": "base"}).json()
    assert loaded["done_reason"] == "load" and loaded["response"] == "" and "base:latest" in ps()
    unloaded = httpx.post(server.url + "/api/chat", json={"model": "base", "keep_alive": "0s"}).json()
    assert unloaded["done_reason"] == "unload" and "base:latest" not in ps()
    # keep_alive as seconds: expires about then
    httpx.post(server.url + "/api/generate", json={"model": "base", "keep_alive": 90})
    entry = next(m for m in httpx.get(server.url + "/api/ps").json()["models"] if m["name"] == "base:latest")
    from datetime import datetime, timezone

    left = (datetime.fromisoformat(entry["expires_at"]) - datetime.now(timezone.utc)).total_seconds()
    assert 80 < left <= 90


def test_gemma_ps_and_stop_commands(server, store):
    env = gemma_env(store, GEMMA_HOST=server.host)
    httpx.post(server.url + "/api/generate", json={"model": "tiny", "keep_alive": -1})
    table = run_gemma(env, "ps")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "SIZE", "CONTEXT", "DRAFT", "UNTIL"]
    assert any(r.startswith("tiny:latest") and "Forever" in r and "ngram" in r for r in rows), table.stdout
    assert json.loads(run_gemma(env, "ps", "--json").stdout)[0]["name"] in ("tiny:latest", "base:latest")
    stopped = run_gemma(env, "stop", "tiny")
    assert stopped.returncode == 0 and stopped.stderr == "", stopped.stderr
    assert "tiny:latest" not in run_gemma(env, "ps").stdout
    again = run_gemma(env, "stop", "tiny")
    assert again.returncode == 1 and "not loaded" in again.stderr and "Traceback" not in again.stderr
    gone = run_gemma(gemma_env(store, GEMMA_HOST="127.0.0.1:1"), "ps")
    assert gone.returncode == 1 and "cannot reach gemma serve" in gone.stderr and "Traceback" not in gone.stderr


def test_delete_removes_from_store(server, store, tmp_path):
    register(store, "doomed", write_llama_gguf(tmp_path / "doomed.gguf", seed=9))
    assert httpx.post(server.url + "/api/generate", json={"model": "doomed", "prompt": "x", "stream": False,
                                                          "options": {"num_predict": 1}}).status_code == 200
    r = httpx.request("DELETE", server.url + "/api/delete", json={"model": "doomed"})
    assert r.status_code == 200
    assert "doomed:latest" not in {m["name"] for m in httpx.get(server.url + "/api/tags").json()["models"]}
    assert "doomed:latest" not in {m["name"] for m in httpx.get(server.url + "/api/ps").json()["models"]}
    again = httpx.request("DELETE", server.url + "/api/delete", json={"model": "doomed"})
    assert again.status_code == 404 and "not in the store" in again.json()["error"]


def test_one_file_as_target_and_drafter_is_one_size_in_tags_and_ps(server, store, tmp_path):
    from gemma_cli.registry.create import create
    from gemma_cli.store.layout import Layout

    twin = write_llama_gguf(tmp_path / "twin.gguf", seed=12)
    create("twin", str(twin), str(twin), layout=Layout(store))
    size = twin.stat().st_size
    assert next(m for m in httpx.get(server.url + "/api/tags").json()["models"] if m["name"] == "twin:latest")["size"] == size
    assert httpx.post(server.url + "/api/generate", json={"model": "twin", "keep_alive": -1}).status_code == 200
    try:
        entry = next(m for m in httpx.get(server.url + "/api/ps").json()["models"] if m["name"] == "twin:latest")
        assert entry["size"] == size and entry["draft_source"] == "model"
    finally:
        httpx.post(server.url + "/api/generate", json={"model": "twin", "keep_alive": 0})
        httpx.request("DELETE", server.url + "/api/delete", json={"model": "twin"})


def test_num_ctx_reloads_once_per_size(server):
    def gen(num_ctx: int) -> dict:
        body = {"model": "base", "prompt": "ab", "stream": False, "options": {"num_predict": 2, "num_ctx": num_ctx}}
        return httpx.post(server.url + "/api/generate", json=body).json()

    first, again = gen(300), gen(300)  # llama.cpp rounds 300 up; the same request must not reload
    assert first["load_duration"] > 0 and again["load_duration"] == 0
    entry = next(m for m in httpx.get(server.url + "/api/ps").json()["models"] if m["name"] == "base:latest")
    assert entry["context_length"] >= 300
    assert gen(1024)["load_duration"] > 0


def test_raw_sends_the_prompt_verbatim_and_ignores_system_as_ollama_does(server):
    def prompt_tokens(**extra) -> int:
        body = {"model": "tiny", "prompt": PROMPT, "stream": False, "raw": True, "x_gemma": True,
                "options": {"num_predict": 1}, **extra}
        r = httpx.post(server.url + "/api/generate", json=body)
        assert r.status_code == 200, r.text
        return r.json()["x_gemma"]["stats"]["prompt_tokens"]

    assert prompt_tokens(system="You are a pirate.") == prompt_tokens()


def test_a_request_num_ctx_beyond_the_trained_context_is_capped_and_logged(server, store, tmp_path):
    """A client's num_ctx sizes the KV cache: a million tokens of a model trained on 8k is capped at 8k (as
    Ollama does), so one request cannot make the server hold gigabytes for positions the model never saw."""
    from gemma_cli.registry.create import create
    from gemma_cli.store.layout import Layout

    create("long", str(write_llama_gguf(tmp_path / "long.gguf", seed=13, n_ctx=8192, chat_template=None)),
           layout=Layout(store))
    body = {"model": "long", "prompt": "ab", "stream": False, "keep_alive": -1, "options": {"num_predict": 2}}
    try:
        huge = httpx.post(server.url + "/api/generate", json={**body, "options": {"num_predict": 2, "num_ctx": 1_000_000}})
        assert huge.status_code == 200 and huge.json()["eval_count"] >= 1  # sampled at Ollama's 0.8: may end at once
        entry = next(m for m in httpx.get(server.url + "/api/ps").json()["models"] if m["name"] == "long:latest")
        assert entry["context_length"] == 8192
        assert any("long:latest: num_ctx 1000000 is more than it was trained on (8192)" in line for line in server.log), server.log[-3:]
        # asked again, the capped size is the loaded one: no reload; below the cap, num_ctx is taken as asked
        again = httpx.post(server.url + "/api/generate", json={**body, "options": {"num_predict": 2, "num_ctx": 999_999}})
        assert again.json()["load_duration"] == 0
        small = httpx.post(server.url + "/api/generate", json={**body, "options": {"num_predict": 2, "num_ctx": 1024}})
        assert small.json()["load_duration"] > 0
        entry = next(m for m in httpx.get(server.url + "/api/ps").json()["models"] if m["name"] == "long:latest")
        assert entry["context_length"] == 1024
    finally:
        httpx.post(server.url + "/api/generate", json={"model": "long", "keep_alive": 0})
        httpx.request("DELETE", server.url + "/api/delete", json={"model": "long"})


def test_gemma_client_module(server, solo):
    """gemma_cli.client.Client, which `gemma ps`/`stop` (and client mode) build on."""
    from gemma_cli.client import Client, ServerError
    from gemma_cli.errors import ModelNotFoundError

    c = Client.from_env(server.host)
    assert c.version() and {m["name"] for m in c.tags()} >= {"tiny:latest"}
    parts = list(c.generate({"model": "tiny", "prompt": PROMPT, "options": GREEDY}))
    assert "".join(p["response"] for p in parts) == solo and parts[-1]["done"] and "draft_source" in parts[-1]
    chat = list(c.chat({"model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "options": GREEDY}))
    assert "".join(p["message"]["content"] for p in chat) == solo
    assert c.show("tiny")["details"]["family"] == "llama"
    assert c.load("tiny", keep_alive="1m")["done_reason"] == "load" and "tiny:latest" in {m["name"] for m in c.ps()}
    assert c.stop("tiny")["done_reason"] == "unload" and "tiny:latest" not in {m["name"] for m in c.ps()}
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        list(c.generate({"model": "nope", "prompt": "x"}))
    with pytest.raises(ServerError, match="temperature") as info:
        c.request("POST", "/api/generate", {"model": "tiny", "prompt": "x", "options": {"temperature": -1}})
    assert info.value.status == 400
    with pytest.raises(ServerError, match="cannot reach gemma serve"):
        Client.from_env("127.0.0.1:1", timeout=5).version()


def test_a_request_whose_drafter_would_not_fit_is_refused_and_the_model_serves_on(tmp_path):
    """A request's `draft` that loads a drafter model beside the running target is checked for the RAM it adds
    (GEMMA_MEMORY_AVAILABLE stands in for the free RAM): refused with the estimate, and the next request is served."""
    import ollama

    from gemma_cli.memory import estimate_memory
    from gemma_cli.registry.create import create
    from gemma_cli.store.layout import Layout

    target = write_llama_gguf(tmp_path / "t.gguf", seed=1)
    drafter = padded_copy(target, tmp_path / "padded.gguf", 320 << 20)  # the same model, 320 MiB more to map
    models = tmp_path / "models"
    create("padded", str(target), str(drafter), layout=Layout(models))
    room = estimate_memory(target, n_ctx=256).ram + (16 << 20)  # the target fits, the drafter beside it does not
    with ServerProcess(models, "--threads", "1", GEMMA_MEMORY_AVAILABLE=str(room)) as srv:
        client = ollama.Client(host=srv.url)
        opts = {**GREEDY, "num_ctx": 256}
        first = client.generate(model="padded", prompt=PROMPT, options={**opts, "draft": "ngram"})
        with pytest.raises(ollama.ResponseError, match=r"the drafter needs about 0\.3\d GiB more") as refused:
            client.generate(model="padded", prompt=PROMPT, options={**opts, "draft": "model"})
        assert refused.value.status_code == 500
        again = httpx.post(srv.url + "/api/generate", json={"model": "padded", "prompt": PROMPT, "stream": False,
                                                            "options": {**opts, "draft": "ngram"}}).json()
        assert again["response"] == first["response"] and again["draft_source"] == "ngram"


@pytest.mark.parametrize("extra, needle", [
    ({"logprobs": True}, "logprobs"), ({"top_logprobs": 3}, "logprobs"), ({"tools": [{"type": "function"}]}, "tools"),
    ({"format": "json"}, "format"), ({"images": ["aGk="]}, "images"), ({"think": True}, "thinking"),
])
def test_what_the_server_cannot_honour_is_a_400_on_the_ollama_api_too(server, extra, needle):
    """docs/serve.md: refused with a reason, never silently ignored (logprobs was ignored here while /v1 refused it)."""
    for path, body in (("/api/generate", {"prompt": "x"}), ("/api/chat", {"messages": [{"role": "user", "content": "x"}]})):
        r = httpx.post(server.url + path, json={"model": "tiny", "stream": False, **body, **extra})
        assert r.status_code == 400 and needle in r.json()["error"], (path, r.text)
