"""`gemma serve`'s OpenAI API through a real server process: the official openai client and raw SSE."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from hub_server import gemma_env, run_gemma
from serve_helpers import ServerProcess, sse, tiny_store

PROMPT = "Write a haiku"
DRAFT_KEYS = {"draft_source", "draft_max", "draft_proposed", "draft_accepted", "acceptance_rate", "tokens_per_pass"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("serve-openai")
    return tiny_store(d)


@pytest.fixture(scope="module")
def server(store: Path):
    with ServerProcess(store, "--threads", "1") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def solo(store: Path) -> str:
    proc = run_gemma(gemma_env(store), "run", "tiny", PROMPT, "--temperature", "0", "-n", "20", "--threads", "1")
    assert proc.returncode == 0 and proc.stdout, proc.stderr
    return proc.stdout


def _x(obj) -> dict:
    extra = obj.model_extra or {}
    assert DRAFT_KEYS <= set(extra["x_gemma"]), extra
    return extra["x_gemma"]


def test_chat_completion_equals_gemma_run(client, solo):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=20)
    assert r.object == "chat.completion" and r.model == "tiny:latest"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == solo and choice.finish_reason == "length"
    assert r.usage.completion_tokens == 20 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    x = _x(r)
    assert x["draft_source"] == "ngram" and 0 <= x["draft_accepted"] <= x["draft_proposed"] and x["tokens_per_pass"] >= 1
    assert x["time_to_first_token_s"] >= x["load_s"] > 0  # the module's first request loaded the model
    # a client re-sending the conversation plus a new turn evaluates only the new tokens
    follow = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": solo}, {"role": "user", "content": "More"}]
    r2 = client.chat.completions.create(model="tiny", messages=follow, temperature=0, max_tokens=5)
    assert _x(r2)["prompt_cached_tokens"] >= r.usage.prompt_tokens + r.usage.completion_tokens - 1


def test_chat_streaming_with_usage(client, solo):
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}], temperature=0,
                                                 max_tokens=20, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == solo
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length" and _x(finals[0])["draft_source"] == "ngram"
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 20 and _x(last)
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_and_models(client, solo):
    r = client.completions.create(model="tiny", prompt=PROMPT, temperature=0, max_tokens=20)
    assert r.choices[0].text == solo and r.usage.completion_tokens == 20 and _x(r)
    parts = list(client.completions.create(model="tiny", prompt=PROMPT, temperature=0, max_tokens=20, stream=True))
    assert "".join(p.choices[0].text for p in parts) == solo and parts[-1].choices[0].finish_reason == "length"
    assert [m.id for m in client.models.list().data] == ["tiny:latest"]
    assert client.models.retrieve("tiny").id == "tiny:latest"
    import openai

    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    # the client shows the server's message (OpenAI's error object), not only "Error code: 404"
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert "unknown model" in caught.value.message and caught.value.type == "not_found_error"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                       extra_body={"draft_tokens": 99})
    assert "between 1 and 32" in bad.value.message and bad.value.type == "invalid_request_error"


def test_stop_and_extensions(client, server, solo):
    stop = solo[6:8]
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=20,
                                       stop=[stop], extra_body={"draft": "none"})
    assert r.choices[0].message.content == solo[: solo.index(stop)] and r.choices[0].finish_reason == "stop"
    assert _x(r)["draft_source"] == "none" and _x(r)["draft_proposed"] == 0
    sampled = [client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, seed=-5).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]  # any int64 seed is a seed, negative ones too
    # content given as a list of text parts, as newer clients send it
    parts = [{"type": "text", "text": PROMPT[:5]}, {"type": "text", "text": PROMPT[5:]}]
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": parts}], temperature=0, max_tokens=20)
    assert r.choices[0].message.content == solo


def test_raw_sse_framing(server, solo):
    body = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": 20, "stream": True}
    r = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.content)
    assert events[-1] == "[DONE]" and "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == solo
    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": PROMPT, "temperature": 0, "max_tokens": 5,
                                                         "stream": True})
    assert sse(r.content)[-1] == "[DONE]"


@pytest.mark.parametrize("body, status, needle", [
    ({"model": "tiny", "messages": []}, 400, "messages must be a non-empty list"),
    ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400, "role must be one of"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n must be 1"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_p": 1.5}, 400, "top_p"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens must be positive"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "draft_tokens": 99}, 400, "between 1 and 32"),
    ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "unknown model"),
    ({"messages": [{"role": "user", "content": "x"}]}, 400, "model is required"),
    # what the server cannot honour is refused, not ignored (probe, session 18)
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, 400, "logprobs"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, 400, "tool_choice"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "presence_penalty": 2.0}, 400, "presence_penalty"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "frequency_penalty": -1}, 400, "frequency_penalty"),
    ({"model": "tiny", "messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                                    {"role": "user", "content": "x"}]}, 400, "tool_calls"),
])
def test_errors_are_json_with_status(server, body, status, needle):
    r = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert r.status_code == status and needle in r.json()["error"]["message"], r.text


def test_penalties_of_zero_and_tool_choice_none_are_accepted(server):
    """Clients send these by default: only a real penalty, or a tool choice, is refused."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "presence_penalty": 0,
            "frequency_penalty": 0.0, "tool_choice": "none"}
    assert httpx.post(server.url + "/v1/chat/completions", json=body).status_code == 200
