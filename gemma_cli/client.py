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
from gemma_cli.text_safety import clean_display


class ServerError(GemmaError):
    """The server refused a request or could not be reached."""

    def __init__(self, message: str, status: int = 0, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        if exit_code is not None:
            self.exit_code = exit_code


class ServerModelNotFound(ServerError, ModelNotFoundError):
    """404 for a model: a ModelNotFoundError, as in-process."""


EXIT_CODES = (1, 2)  # what a failing command exits with in-process (errors.ExitCode): a server may say which


def error_from(body: Any, status: int, fallback: str = "") -> ServerError:
    """The exception for a server's error object (an HTTP error body or an in-band stream line)."""
    message, code = fallback, None
    if isinstance(body, dict) and body.get("error"):
        err = body["error"]
        message = clean_display(err.get("message", err) if isinstance(err, dict) else err, 500)
        code = body.get("exit_code") if body.get("exit_code") in EXIT_CODES else None
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
            if not (isinstance(body, dict) and body.get("error")):  # gemma serve always says why, in JSON
                raise self._foreign(path, f"HTTP {exc.code} {clean_display(exc.reason, 80)}") from None
            raise error_from(body, exc.code, str(exc.reason)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError(f"cannot reach gemma serve at {self.base_url}: {reason}; is it running? (`gemma serve`)") from None

    def _foreign(self, path: str, what: str) -> ServerError:
        """Something answered that is not gemma serve (another program on that port, a proxy's page)."""
        return ServerError(f"{self.base_url}{path.split('?')[0]} did not answer as gemma serve does ({what}); "
                           "is GEMMA_HOST pointing at another program?")

    def _object(self, raw: bytes, path: str) -> dict[str, Any]:
        try:
            obj = json.loads(raw)
        except ValueError:
            raise self._foreign(path, "not JSON") from None
        if not isinstance(obj, dict):
            raise self._foreign(path, "not a JSON object")
        return obj

    def reading(self, path: str) -> "_Reading":
        """A (reusable) context around code that reads fields of this server's answers: a field of the
        wrong type or shape is the server's fault, said in one line, not a bug of ours."""
        return _Reading(self, path)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        with self._open(method, path, body) as resp:
            raw = resp.read()
        return self._object(raw, path) if raw.strip() else {}

    def records(self, path: str, key: str) -> list[dict[str, Any]]:
        """The list of objects under `key` of a GET answer (`/api/ps` models, `/api/tags` ...)."""
        items = self.request("GET", path).get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise self._foreign(path, f"{key!r} is not a list of objects")
        return items

    def stream(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        """NDJSON objects from a streaming Ollama endpoint; an in-band error raises ServerError.

        Closing the generator early closes the connection, which the server
        takes as a disconnect: it cancels the generation within a decode step.
        """
        with self._open("POST", path, body) as resp:
            for line in resp:
                if not line.strip():
                    continue
                if not line.endswith(b"\n"):  # the connection ended mid-line (a killed server, a cut proxy)
                    raise ServerError(f"{self.base_url}{path} closed the stream in the middle of a line; "
                                      "was the server stopped?")
                obj = self._object(line, path)
                if "error" in obj:
                    raise error_from(obj, 0)
                yield obj

    # -- API ------------------------------------------------------------------
    def version(self) -> str:
        return str(self.request("GET", "/api/version").get("version", ""))

    def ps(self) -> list[dict[str, Any]]:
        return self.records("/api/ps", "models")

    def tags(self) -> list[dict[str, Any]]:
        return self.records("/api/tags", "models")

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

    def delete(self, models: list[str]) -> dict[str, Any]:
        """Remove models from the server's store, all or none (gemma's `models` list, not Ollama's one `model`)."""
        return self.request("DELETE", "/api/delete", {"models": list(models)})


class _Reading:
    def __init__(self, client: Client, path: str) -> None:
        self.client, self.path = client, path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        if kind is not None and issubclass(kind, (KeyError, TypeError, ValueError, AttributeError)):
            raise self.client._foreign(self.path, f"unexpected content: {kind.__name__}") from None
