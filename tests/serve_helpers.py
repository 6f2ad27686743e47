"""A real `gemma serve` subprocess on 127.0.0.1 at a port the OS picks, for the server tests."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

from hub_server import ROOT, gemma_cmd, gemma_env

STARTUP = re.compile(r"listening on (http://\S+)")


class ServerProcess:
    """`with ServerProcess(models_dir, GEMMA_MAX_QUEUE="1") as srv:` -> srv.url; stderr lines in srv.log."""

    def __init__(self, models: Path, *args: str, endpoint: str | None = None, catalog: Path | None = None, **env: str) -> None:
        self.env = gemma_env(models, endpoint, catalog, GEMMA_HOST="127.0.0.1:0", **env)
        self.args = args
        self.log: list[str] = []
        self.url = ""
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ServerProcess":
        self.proc = subprocess.Popen(gemma_cmd("serve", *self.args), env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        started = threading.Event()

        def drain() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line.rstrip("\n"))
                m = STARTUP.search(line)
                if m and not self.url:
                    self.url = m.group(1)
                    started.set()
            started.set()

        threading.Thread(target=drain, daemon=True).start()
        if not started.wait(30) or not self.url:
            self.__exit__()
            raise RuntimeError("gemma serve did not start: " + "\n".join(self.log))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def wait_for(self, predicate, timeout: float = 10.0, every: float = 0.02) -> float:
        """Seconds until predicate() is true; AssertionError after `timeout`."""
        t0 = time.perf_counter()
        while not predicate():
            if time.perf_counter() - t0 > timeout:
                raise AssertionError(f"condition not met within {timeout}s")
            time.sleep(every)
        return time.perf_counter() - t0


def register(models: Path, name: str, gguf: Path) -> None:
    """`gemma create NAME --target GGUF` into the store at `models` (in-process: fast)."""
    from gemma_cli.registry.create import create
    from gemma_cli.store.layout import Layout

    create(name, str(gguf), layout=Layout(models))


def tiny_store(base: Path) -> Path:
    """A store under `base` holding the tiny synthetic model as "tiny" (seed 1), as most server tests use."""
    from gguf_factory import write_llama_gguf

    register(base / "models", "tiny", write_llama_gguf(base / "tiny.gguf", seed=1))
    return base / "models"


def ndjson(raw: bytes) -> list[dict]:
    """Parse NDJSON, asserting the framing: one JSON object per newline-terminated line."""
    text = raw.decode()
    assert text.endswith("\n"), text[-200:]
    return [json.loads(line) for line in text[:-1].split("\n")]


def sse(raw: bytes) -> list:
    """Parse an SSE body, asserting the framing: `data: ...` events split by blank lines, ending [DONE]."""
    text = raw.decode()
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    events = text[:-2].split("\n\n")
    out = []
    for event in events:
        assert event.startswith("data: ") and "\n" not in event, event
        payload = event[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def batched_total(url: str, model: str) -> float:
    """The server's count of requests for `model` (e.g. "g4:latest") that ran in a batch: proof a test's
    concurrent requests really shared one."""
    import httpx

    m = re.search(r'^gemma_batched_requests_total\{model="' + re.escape(model) + r'"\} ([0-9.e+]+)$',
                  httpx.get(url + "/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


def hold_stream(url: str, body: dict, seen: threading.Event, stop: threading.Event) -> None:
    """Stream a long /api/generate, setting `seen` once lines flow, until `stop` is set: a request that keeps
    the model busy while a test sends others (run it in a thread)."""
    import httpx

    with httpx.Client(timeout=60) as c, c.stream("POST", url + "/api/generate", json=body) as r:
        for _ in r.iter_lines():
            seen.set()
            if stop.is_set():
                break
