"""A real HTTP server on 127.0.0.1 that imitates the Hugging Face Hub's file resolution.

`HEAD|GET /{owner}/{repo}/resolve/{revision}/{file}` answers like the Hub does
for LFS files: X-Repo-Commit, X-Linked-Etag (the sha256), X-Linked-Size, ETag,
Content-Length, Accept-Ranges, `Range: bytes=N-` -> 206 + Content-Range, 416
past the end, and X-Error-Code (RepoNotFound, EntryNotFound, GatedRepo) with
401/403/404. It counts the bytes it serves, records every request, and can
misbehave on purpose: drop a connection after N bytes, stall after N bytes
until released, ignore Range, or throttle.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_PATH = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class HubState:
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)  # repos answering 403 GatedRepo
    private: set[str] = field(default_factory=set)  # repos answering 401 RepoNotFound
    forbidden: set[str] = field(default_factory=set)  # repos answering a bare 403
    drop_after: dict[str, int] = field(default_factory=dict)  # file -> bytes, once
    stall_after: dict[str, int] = field(default_factory=dict)  # file -> bytes, hang until release(), then drop
    ignore_range: bool = False
    extra_bytes: dict[str, int] = field(default_factory=dict)  # file -> bytes sent past its size on GET (and counted)
    get_status: dict[str, int] = field(default_factory=dict)  # file -> an error status for GET (HEAD answers fine)
    redirect_loop: set[str] = field(default_factory=set)  # files whose GET redirects to itself, forever
    throttle: float = 0.0  # seconds to sleep per 4 KiB chunk
    not_lfs: set[str] = field(default_factory=set)  # files served as regular git files: a git-sha1 ETag, no X-Linked-*
    bytes_served: dict[str, int] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _error(self, status: int, code: str | None) -> None:
        body = b'{"error": "' + (code or "error").encode() + b'"}'
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        st = self.state
        with st.lock:
            st.requests.append(Request(self.command, self.path, self.headers.get("Range"), self.headers.get("Authorization")))
        m = _PATH.match(self.path.split("?")[0])
        if not m:
            return self._error(404, None)
        repo, file = m["repo"], m["file"]
        if repo in st.gated:
            return self._error(403, "GatedRepo")
        if repo in st.private:
            return self._error(401, "RepoNotFound")
        if repo in st.forbidden:
            return self._error(403, None)
        if not any(r == repo for r, _ in st.files):
            return self._error(404, "RepoNotFound")
        data = st.files.get((repo, file))
        if data is None:
            return self._error(404, "EntryNotFound")
        if self.command == "GET" and file in st.get_status:
            return self._error(st.get_status[file], None)
        if self.command == "GET" and file in st.redirect_loop:
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        sha = hashlib.sha256(data).hexdigest()
        start = 0
        rng = self.headers.get("Range")
        if rng and not st.ignore_range:
            mm = re.match(r"bytes=(\d+)-$", rng)
            if not mm:
                return self._error(416, None)
            start = int(mm.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        if file in st.not_lfs:
            self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        else:
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"{sha}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        extra = st.extra_bytes.get(file, 0) if not head else 0
        self.send_header("Content-Length", str(len(data) - start + extra))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if head:
            return
        self._body(file, data + b"\0" * extra, start)

    def _body(self, file: str, data: bytes, start: int) -> None:
        st = self.state
        with st.lock:
            drop = st.drop_after.pop(file, None)
        stall = st.stall_after.get(file)
        pos = start
        chunk = 4096
        while pos < len(data):
            end = min(pos + chunk, len(data))
            if drop is not None and end > start + drop:
                end = start + drop
            if stall is not None and not st.released.is_set() and end > stall:
                end = max(stall, pos)
            if end > pos:
                try:
                    self.wfile.write(data[pos:end])
                    self.wfile.flush()
                except OSError:
                    return
                with st.lock:
                    st.bytes_served[file] = st.bytes_served.get(file, 0) + (end - pos)
                pos = end
            if drop is not None and pos >= start + drop:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if stall is not None and not st.released.is_set() and pos >= stall:
                # Hang until released, then drop: the client this transfer stalled on is
                # gone by then, and writing on would only fill a dead socket's buffer.
                st.released.wait(30)
                self.close_connection = True
                return
            if st.throttle:
                time.sleep(st.throttle)


class HubServer:
    """Start with `with HubServer() as hub:`; `hub.endpoint` goes into HF_ENDPOINT."""

    def __init__(self) -> None:
        self.state = HubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, repo: str, file: str, data: bytes) -> str:
        """Publish a file; returns its sha256."""
        self.state.files[(repo, file)] = data
        return hashlib.sha256(data).hexdigest()

    def served(self, file: str) -> int:
        return self.state.bytes_served.get(file, 0)

    def gets(self, file: str) -> list[Request]:
        return [r for r in self.state.requests if r.method == "GET" and r.path.endswith("/" + file)]

    def release(self) -> None:
        self.state.released.set()

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()


# -- helpers shared by the store/pull/CLI tests ------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def write_catalog(path: Path, models: dict, default_tags: dict | None = None) -> Path:
    """A GEMMA_CATALOG file: {name: {"target": (repo, file), "drafter": (repo, file) | None, ...}}."""
    out = {}
    for name, spec in models.items():
        entry = dict(spec)
        entry["target"] = {"repo": spec["target"][0], "file": spec["target"][1]}
        if spec.get("drafter"):
            entry["drafter"] = {"repo": spec["drafter"][0], "file": spec["drafter"][1]}
        out[name] = entry
    path.write_text(json.dumps({"schema": 1, "default_tags": default_tags or {}, "models": out}))
    return path


def gemma_env(models: Path, endpoint: str | None = None, catalog: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GEMMA_"))}
    env.update({"GEMMA_MODELS": str(models), "HF_HUB_DISABLE_TELEMETRY": "1", "NO_COLOR": "1",
                "HF_HOME": str(models.parent / "hf-home")})
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    if catalog:
        env["GEMMA_CATALOG"] = str(catalog)
    env.update(extra)
    return env


def gemma_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gemma_cli", *args]


def run_gemma(env: dict[str, str], *args: str, timeout: float = 60, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(gemma_cmd(*args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec)


EXIT_RUNTIME, EXIT_USAGE = 1, 2  # README: 1 runtime error, 2 usage error


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int = EXIT_RUNTIME) -> str:
    """The documented exit `code` (1 runtime, 2 usage), exactly one 'Error:' line on stderr,
    no traceback; returns the line."""
    assert proc.returncode == code, (f"exit {proc.returncode}, expected {code}", proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]
