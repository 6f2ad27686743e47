"""`gemma serve`'s defences and error contract: Host and Origin checks, body limit, JSON errors, access log."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import httpx
import pytest

from gemma_cli.errors import UsageError
from gemma_cli.server.settings import DEFAULT_PORT, parse_duration, parse_host
from hub_server import gemma_env, run_gemma
from serve_helpers import ServerProcess, tiny_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("serve-sec")
    return tiny_store(d)


@pytest.fixture(scope="module")
def server(store: Path):
    with ServerProcess(store, "--threads", "1", GEMMA_ORIGINS="https://app.example.com, https://*.trusted.dev",
                       GEMMA_MAX_BODY="4096") as srv:
        yield srv


def test_startup_says_loopback(server):
    assert server.url.startswith("http://127.0.0.1:")
    assert "loopback only" in server.log[0]


@pytest.mark.parametrize("host, ok", [
    ("localhost", True), ("127.0.0.1:11436", True), ("[::1]:80", True), ("LOCALHOST.", True),
    ("evil.example.com", False), ("192.168.1.10:11436", False), ("127.0.0.1.nip.io", False),
])
def test_host_header_checked_against_dns_rebinding(server, host, ok):
    r = httpx.get(server.url + "/api/version", headers={"Host": host})
    if ok:
        assert r.status_code == 200
    else:
        assert r.status_code == 403 and "not a loopback name" in r.json()["error"]


@pytest.mark.parametrize("origin, ok", [
    ("http://localhost:3000", True), ("http://127.0.0.1:8080", True), ("https://app.example.com", True),
    ("https://ui.trusted.dev", True), ("vscode-webview://1a2b", True), ("app://obsidian.md", True),
    ("https://evil.com", False), ("null", False),
    ("https://app.example.com.evil.com", False), ("http://localhost.evil.com", False),
])
def test_cross_origin_requests_need_the_allowlist(server, origin, ok):
    r = httpx.get(server.url + "/api/tags", headers={"Origin": origin})
    if ok:
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    else:
        assert r.status_code == 403 and "GEMMA_ORIGINS" in r.json()["error"]
        assert "access-control-allow-origin" not in r.headers
    pre = httpx.options(server.url + "/api/chat", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
    assert pre.status_code == (204 if ok else 403)
    if ok:
        assert "POST" in pre.headers["access-control-allow-methods"]


def test_body_limit_413(server):
    big = json.dumps({"model": "tiny", "prompt": "a" * 5000}).encode()
    r = httpx.post(server.url + "/api/generate", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "GEMMA_MAX_BODY" in r.json()["error"]

    def chunks():  # no Content-Length: the limit applies while reading
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    r = httpx.post(server.url + "/api/generate", content=chunks())
    assert r.status_code == 413 and "GEMMA_MAX_BODY" in r.json()["error"]


@pytest.mark.parametrize("method, path, body, status, needle", [
    ("POST", "/api/generate", b"{not json", 400, "invalid JSON"),
    ("POST", "/api/generate", b"[1, 2]", 400, "must be a JSON object"),
    ("POST", "/api/generate", b"", 400, "missing request body"),
    ("POST", "/api/generate", {"prompt": "x"}, 400, "model is required"),
    ("POST", "/api/generate", {"model": "nope:1b", "prompt": "x"}, 404, "unknown model"),
    ("POST", "/api/generate", {"model": "gemma4:e4b", "prompt": "x"}, 404, "not pulled yet"),
    ("POST", "/api/generate", {"model": "../../etc/passwd", "prompt": "x"}, 400, "invalid model name"),
    ("POST", "/api/generate", {"model": "/tmp/x.gguf", "prompt": "x"}, 400, "store models only"),
    ("POST", "/api/generate", {"model": "Bad Name!", "prompt": "x"}, 400, "invalid model name"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "x", "options": {"temperature": "hot"}}, 400, "must be a number"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "x", "options": {"top_k": -1}}, 400, "top_k"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "x", "options": {"num_predict": 0}}, 400, "num_predict"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "x", "options": {"num_ctx": 0}}, 400, "num_ctx"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "x", "options": {"draft": "magic"}}, 400, "options.draft must be one of"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "x", "options": {"draft": "mtp"}}, 400, "no drafter"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "x", "options": {"draft_tokens": 0}}, 400, "between 1 and 32"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "x", "options": {"stop": [1]}}, 400, "options.stop"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "x", "keep_alive": "soon"}, 400, "keep_alive"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "x", "stream": "yes"}, 400, "stream must be true or false"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "x", "format": "json"}, 400, "format"),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "x" * 3000, "options": {"num_ctx": 64}}, 400, "but the context holds"),
    ("POST", "/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": 5}]}, 400, "content must be a string"),
    ("POST", "/api/chat", {"model": "tiny", "messages": "hi"}, 400, "messages must be a list"),
    ("POST", "/api/show", {"model": "nope"}, 404, "unknown model"),
    ("POST", "/api/generate", {"model": "nope:1b", "keep_alive": 0}, 404, "unknown model"),  # unloading it, as `ollama stop`
    ("DELETE", "/api/delete", {"model": "nope"}, 404, "not in the store"),
    ("POST", "/api/pull", {"model": "nope"}, 404, "unknown model"),
    ("POST", "/api/generate", b'{"model": "tiny", "prompt": "a\\ud800b"}', 400, "unpaired UTF-16 surrogate"),
    ("POST", "/api/chat", b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff"}]}', 400, "surrogate"),
    ("POST", "/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stop": "\\uD800"}',
     400, "surrogate"),
    ("GET", "/api/nothing", None, 404, "no such endpoint"),
    ("GET", "/api/generate", None, 405, "not allowed"),
])
def test_every_error_is_json_with_its_status(server, method, path, body, status, needle):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    r = httpx.request(method, server.url + path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    if path.startswith("/v1/"):  # OpenAI's error object, which the openai client reads
        assert needle in error["message"] and error["type"] == "invalid_request_error", r.json()
    else:  # Ollama's string
        assert needle in error, r.json()
    assert r.json()["exit_code"] in (1, 2)


@pytest.mark.parametrize("path, body, needle", [
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream_options": true}',
     "stream_options must be an object"),
    ("/v1/completions", b'{"model": "tiny", "prompt": "hi", "stream_options": [1]}', "stream_options must be an object"),
    ("/api/generate", b'{"model": "tiny", "x": ' + b"[" * 1900 + b"]" * 1900 + b"}", "nested too deeply"),
])
def test_malformed_bodies_are_400_not_500(server, path, body, needle):
    r = httpx.post(server.url + path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert needle in (error["message"] if isinstance(error, dict) else error)


def test_middleware_refusals_take_each_api_family_s_error_shape(server):
    r = httpx.get(server.url + "/v1/models", headers={"Host": "evil.example.com"})
    assert r.status_code == 403 and "not a loopback name" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "permission_error" and r.json()["exit_code"] == 1
    r = httpx.get(server.url + "/api/tags", headers={"Host": "evil.example.com"})
    assert r.status_code == 403 and "not a loopback name" in r.json()["error"] and r.json()["exit_code"] == 1
    big = json.dumps({"model": "tiny", "prompt": "a" * 5000}).encode()
    r = httpx.post(server.url + "/v1/completions", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "GEMMA_MAX_BODY" in r.json()["error"]["message"] and r.json()["exit_code"] == 2


def test_server_survives_errors_and_logs_one_line_per_request(server):
    before = len(server.log)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    httpx.post(server.url + "/api/generate", content=b"{bad")
    httpx.post(server.url + "/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
    server.wait_for(lambda: len(server.log) >= before + 3)
    lines = server.log[before:]
    lines = lines[next(i for i, line in enumerate(lines) if "/health" in line):]  # after an earlier test's late line
    assert len(lines) == 3
    assert lines[0].startswith('127.0.0.1 "GET /health" 200 ')
    assert lines[1].startswith('127.0.0.1 "POST /api/generate" 400 ')
    assert lines[2].startswith('127.0.0.1 "POST /api/generate" 200 ') and lines[2].endswith("ms")
    assert not any("Traceback" in line for line in server.log)


def test_a_paired_surrogate_escape_is_text_and_a_huge_keep_alive_means_forever(server):
    emoji = httpx.post(server.url + "/api/generate", content=b'{"model": "tiny", "prompt": "\\ud83d\\ude00 hi", "stream": false, '
                       b'"options": {"num_predict": 2}}')
    assert emoji.status_code == 200, emoji.text
    # a keep_alive past any date used to break /api/ps and `gemma stop` (OverflowError) with the model loaded
    for keep in ("99999999999h", 1e308):
        r = httpx.post(server.url + "/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False, "keep_alive": keep,
                                                          "options": {"num_predict": 2}})
        assert r.status_code == 200, r.text
        ps = httpx.get(server.url + "/api/ps")
        assert ps.status_code == 200, ps.text
        assert [m["expires_at"][:4] for m in ps.json()["models"]] == ["2318"]  # Ollama's "never"
    stop = run_gemma(gemma_env(Path("/nonexistent"), GEMMA_HOST=server.host), "stop", "tiny")
    assert stop.returncode == 0, stop.stderr
    assert httpx.get(server.url + "/api/ps").json()["models"] == []


def test_port_in_use_is_one_line(store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_gemma(gemma_env(store, GEMMA_HOST=f"127.0.0.1:{port}"), "serve", timeout=30)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: cannot listen on 127.0.0.1:")


def test_parse_host_and_duration():
    assert parse_host(None) == ("127.0.0.1", DEFAULT_PORT)
    assert parse_host("0.0.0.0") == ("0.0.0.0", DEFAULT_PORT)
    assert parse_host(":8000") == ("127.0.0.1", 8000)
    assert parse_host("http://localhost:9/") == ("localhost", 9)
    assert parse_host("[::1]:7") == ("::1", 7)
    assert parse_host("::1") == ("::1", DEFAULT_PORT)
    for bad in ("host:port", "h:70000", "[::1"):
        with pytest.raises(UsageError):
            parse_host(bad)
    for bad in ("::1:11436", "1:2:3", ":::"):  # were a ValueError, reported as a bug in gemma-cli (probe, session 18)
        with pytest.raises(UsageError, match=r"in brackets, e\.g\. \[::1\]:11436"):
            parse_host(bad)
    assert parse_duration("5m") == 300 and parse_duration("1h30m") == 5400 and parse_duration("250ms") == 0.25
    assert parse_duration(0) == 0 and parse_duration("0") == 0 and parse_duration(42) == 42
    assert math.isinf(parse_duration(-1)) and math.isinf(parse_duration("-1m"))
    assert math.isinf(parse_duration("99999999999h")) and math.isinf(parse_duration(1e12)) and parse_duration("8760h") == 31536000
    for bad in ("soon", "5 m", "", True, None, [1]):
        with pytest.raises(UsageError):
            parse_duration(bad)
