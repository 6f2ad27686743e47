"""ASGI middleware in front of every route: access log, Host/Origin checks, body limit.

- DNS rebinding: while bound to loopback, a request whose Host header is not
  a loopback name (localhost, 127.x, ::1) is refused (403). A web page on an
  attacker's domain that re-resolves to 127.0.0.1 still sends its own Host.
- Cross-origin browser requests (an Origin header) are refused (403) unless
  the origin is loopback, a local app (app://, tauri://, vscode-webview://...)
  or listed in GEMMA_ORIGINS (like OLLAMA_ORIGINS; entries may use * wildcards). Allowed origins get CORS headers; preflight
  OPTIONS requests are answered here.
- Bodies over the limit get 413, by Content-Length up front or while reading.
- One access-log line per request on stderr, and the request counter by route.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import sys
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from gemma_cli.server.errors import BodyTooLarge, error_payload
from gemma_cli.server.settings import Settings

Scope = dict[str, Any]
ASGIApp = Callable[..., Any]

# Origins of local desktop apps and editor webviews, not web sites (Ollama allows these too).
LOCAL_APP_SCHEMES = ("app", "file", "tauri", "vscode-webview", "vscode-file")
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, OpenAI-Organization, OpenAI-Project"


def is_loopback_name(host: str) -> bool:
    """Whether a Host-header or origin hostname names this machine's loopback interface."""
    name = host.strip().lower().strip("[]").rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The hostname of a Host header value (`name:port`, `[::1]:port`)."""
    header = header.strip()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def origin_allowed(origin: str, allowlist: tuple[str, ...]) -> bool:
    origin = origin.strip().rstrip("/")
    parts = urlsplit(origin)
    if parts.scheme in ("http", "https") and parts.hostname and is_loopback_name(parts.hostname):
        return True
    if parts.scheme in LOCAL_APP_SCHEMES:
        return True
    return any(entry == "*" or fnmatch.fnmatchcase(origin.lower(), entry.lower()) for entry in allowlist)


def _known_route(path: str) -> str:
    """A bounded label for metrics: the path if it is one of ours, else 'other'."""
    from gemma_cli.server.app import ROUTE_PATHS

    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return path if path in ROUTE_PATHS else "other"


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, metrics: Any, log: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.log = log or (lambda line: (sys.stderr.write(line + "\n"), sys.stderr.flush()))

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_box = {"status": 0, "bytes": 0}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
                if cors is not None:
                    message.setdefault("headers", [])
                    message["headers"] = list(message["headers"]) + cors
            elif message["type"] == "http.response.body":
                status_box["bytes"] += len(message.get("body", b""))
            await send(message)

        cors: list[tuple[bytes, bytes]] | None = None
        try:
            refusal = self._refusal(scope, headers)
            origin = headers.get("origin")
            if refusal is None and origin:
                cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
                if scope["method"] == "OPTIONS":
                    await self._plain(send_wrapper, 204, None, [
                        (b"access-control-allow-methods", CORS_METHODS.encode()),
                        (b"access-control-allow-headers", CORS_HEADERS.encode()),
                        (b"access-control-max-age", b"600")])
                    return
            if refusal is not None:
                await self._plain(send_wrapper, refusal[0], refusal[1], path=scope.get("path", ""))
                return
            await self.app(scope, self._limited(receive), send_wrapper)
        except BodyTooLarge as exc:  # routes answer it themselves; this catches reads outside them
            if status_box["status"] == 0:
                await self._plain(send_wrapper, 413, str(exc), path=scope.get("path", ""))
        finally:
            self._access_log(scope, headers, status_box, started)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        if self.settings.loopback:
            host = headers.get("host")
            if host is not None and not is_loopback_name(host_of(host)):
                return 403, f"refused: Host {host!r} is not a loopback name (this server only answers local requests)"
        origin = headers.get("origin")
        if origin and not origin_allowed(origin, self.settings.origins):
            return 403, f"refused: origin {origin!r} is not allowed; add it to GEMMA_ORIGINS to allow it"
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return 400, "invalid Content-Length header"
            if int(length) > self.settings.max_body:
                return 413, str(BodyTooLarge(self.settings.max_body))
        return None

    def _limited(self, receive: Any) -> Any:
        seen = 0
        limit = self.settings.max_body

        async def wrapped() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return wrapped

    async def _plain(self, send: Any, status: int, message: str | None, extra: list[tuple[bytes, bytes]] | None = None,
                     path: str = "") -> None:
        body = b""
        if message is not None:  # the routes' error shape (errors.error_payload), exit code included
            payload = error_payload(path, status, message)
            body = json.dumps(payload, separators=(",", ":")).encode()
        headers = [(b"content-length", str(len(body)).encode())] + (extra or [])
        if message is not None:
            headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _access_log(self, scope: Scope, headers: dict[str, str], box: dict[str, int], started: float) -> None:
        status = box["status"] or 499  # 499: the client closed the connection before a response
        path = scope.get("path", "")
        self.metrics.requests.labels(_known_route(path), str(status)).inc()
        client = scope.get("client") or ("-", 0)
        ms = (time.perf_counter() - started) * 1000
        self.log(f'{client[0]} "{scope.get("method")} {path}" {status} {box["bytes"]}B {ms:.0f}ms')
