"""A small HTTP client for `gemma serve` (stdlib only), for commands that talk to a server.

`Client.from_env()` reads GEMMA_HOST like the server does. Methods return the
server's JSON; failures raise `ServerError` (a GemmaError: one line) carrying
the server's own `{"error": ...}` message, its status, and the exit code the
command would have ended with in-process (the server's `exit_code`), so
client mode fails exactly as the in-process command does.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Iterator

from gemma_cli.errors import GemmaError, ModelNotFoundError


class ServerError(GemmaError):
    """The server refused a request or could not be reached."""

    def __init__(self, message: str, status: int = 0, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        if exit_code is not None:
            self.exit_code = exit_code


class ServerModelNotFound(ServerError, ModelNotFoundError):
    """404 for a model: a ModelNotFoundError, as in-process."""


def error_from(body: Any, status: int, fallback: str = "") -> ServerError:
    """The exception for a server's error object (an HTTP error body or an in-band stream line)."""
    message, code = fallback, None
    if isinstance(body, dict) and body.get("error"):
        err = body["error"]
        message = str(err.get("message", err) if isinstance(err, dict) else err)
        code = body.get("exit_code") if isinstance(body.get("exit_code"), int) else None
    if status == 404 and "model" in message:
        return ServerModelNotFound(message, status, code)
    return ServerError(message or f"the server answered {status}", status, code)


class Client:
    def __init__(self, base_url: str, timeout: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    @classmethod
    def from_env(cls, host: str | None = None, timeout: float = 600.0) -> "Client":
        """A client for `host` (host:port or URL), else $GEMMA_HOST, else 127.0.0.1:11436."""
        from gemma_cli.server.settings import parse_host

        h, port = parse_host(host if host is not None else os.environ.get("GEMMA_HOST"))
        if h in ("0.0.0.0", "::", ""):  # a wildcard bind address: talk to this machine
            h = "127.0.0.1"
        return cls(f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}", timeout)

    # -- transport ------------------------------------------------------------
    def _open(self, method: str, path: str, body: Any = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read())
            except ValueError:
                body = None
            raise error_from(body, exc.code, str(exc.reason)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError(f"cannot reach gemma serve at {self.base_url}: {reason}; is it running? (`gemma serve`)") from None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        with self._open(method, path, body) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.strip() else {}

    def stream(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        """NDJSON objects from a streaming Ollama endpoint; an in-band error raises ServerError.

        Closing the generator early closes the connection, which the server
        takes as a disconnect: it cancels the generation within a decode step.
        """
        with self._open("POST", path, body) as resp:
            for line in resp:
                if not line.strip():
                    continue
                obj = json.loads(line)
                if "error" in obj:
                    raise error_from(obj, 0)
                yield obj

    # -- API ------------------------------------------------------------------
    def version(self) -> str:
        return str(self.request("GET", "/api/version").get("version", ""))

    def ps(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/api/ps").get("models", []))

    def tags(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/api/tags").get("models", []))

    def show(self, model: str) -> dict[str, Any]:
        return self.request("POST", "/api/show", {"model": model})

    def load(self, model: str, keep_alive: str | float | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "stream": False}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        return self.request("POST", "/api/generate", body)

    def stop(self, model: str) -> dict[str, Any]:
        """Unload `model` (at once if idle, else after its running requests), like `ollama stop`."""
        return self.request("POST", "/api/generate", {"model": model, "keep_alive": 0, "stream": False})

    def generate(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return self.stream("/api/generate", {**body, "stream": True})

    def chat(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return self.stream("/api/chat", {**body, "stream": True})

    def pull(self, model: str) -> Iterator[dict[str, Any]]:
        return self.stream("/api/pull", {"model": model, "stream": True})

    def delete(self, model: str) -> None:
        self.request("DELETE", "/api/delete", {"model": model})
