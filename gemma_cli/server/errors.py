"""Every failure the API reports is JSON with a fitting status: `{"error": "..."}` on Ollama's routes,
`{"error": {"message": "...", "type": ...}}` on OpenAI's (/v1), the shape each family's clients read.

Domain errors (gemma_cli.errors) map onto statuses here, in one place, so the
routes raise what the rest of gemma-cli raises and never format errors themselves.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from gemma_cli.errors import ContextFullError, DownloadError, ExitCode, GemmaError, ModelFileError, ModelNotFoundError, UsageError


class APIError(Exception):
    """An error with an HTTP status; `str()` is the message the client sees."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class QueueFullError(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(503, f"server busy: {limit} requests already waiting (GEMMA_MAX_QUEUE); try again later")


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: the limit is {limit} bytes (GEMMA_MAX_BODY)")


def status_for(exc: BaseException) -> int:
    """The HTTP status a domain error deserves."""
    if isinstance(exc, APIError):
        return exc.status
    from gemma_cli.server.jobs import CutShort, JobCancelled

    if isinstance(exc, (JobCancelled, CutShort)):
        return 503
    if isinstance(exc, (UsageError, ContextFullError)):
        return 400
    from gemma_cli.engine.rpc_protocol import RpcError

    if isinstance(exc, RpcError):  # an RPC worker is unreachable, busy or gone: an upstream failure
        return 502
    if isinstance(exc, ModelNotFoundError):
        return 404
    if isinstance(exc, DownloadError):  # the Hub refused or failed: an upstream error
        from gemma_cli.registry.hub import NotOnHubError

        return 404 if isinstance(exc, NotOnHubError) else 502
    if isinstance(exc, ModelFileError):
        from gemma_cli.engine.template import TemplateError

        if isinstance(exc, TemplateError):
            return 400
        return 404 if "not found" in str(exc) else 500
    return 500


def message_for(exc: BaseException) -> str:
    from gemma_cli.server.jobs import CutShort, JobCancelled

    if isinstance(exc, JobCancelled):
        return "request cancelled before it started: the server is stopping or the client went away"
    if isinstance(exc, (APIError, GemmaError, CutShort)):
        return str(exc)
    return f"internal error: {type(exc).__name__}: {exc}"


def exit_code_for(exc: BaseException) -> int:
    """The exit status `gemma` would end with for this error in-process (client mode reuses it)."""
    if isinstance(exc, GemmaError):
        return int(exc.exit_code)
    return status_exit_code(exc.status) if isinstance(exc, APIError) else int(ExitCode.ERROR)


def status_exit_code(status: int) -> int:
    """The exit status for an error known only by its HTTP status: a malformed or oversized request is usage."""
    return int(ExitCode.USAGE) if status in (400, 413) else int(ExitCode.ERROR)


def error_body(exc: BaseException) -> dict[str, object]:
    """`{"error": message}` as Ollama sends it, plus `exit_code` for gemma's own client mode."""
    return {"error": message_for(exc), "exit_code": exit_code_for(exc)}


def openai_error_type(status: int) -> str:
    """The `type` of an OpenAI error object for a status (the names OpenAI's API and Ollama's /v1 use)."""
    return {400: "invalid_request_error", 413: "invalid_request_error", 403: "permission_error",
            404: "not_found_error"}.get(status, "api_error")


def error_payload(path: str, status: int, message: str, exit_code: int | None = None) -> dict[str, object]:
    """The error body for a request to `path`: OpenAI's error object under /v1/, else Ollama's string.

    Why: the openai client reads `error.message` (and `type`, `code`) from an object; given a string it
    shows only "Error code: 404". `exit_code` rides along for gemma's own client mode either way.
    """
    exit_code = status_exit_code(status) if exit_code is None else exit_code
    if path.startswith("/v1/"):
        return {"error": {"message": message, "type": openai_error_type(status), "param": None, "code": None},
                "exit_code": int(exit_code)}
    return {"error": message, "exit_code": int(exit_code)}


def error_response(status: int, message: str, headers: dict[str, str] | None = None,
                   exit_code: int | None = None, path: str = "") -> JSONResponse:
    return JSONResponse(error_payload(path, status, message, exit_code), status_code=status, headers=headers)


def response_for(exc: BaseException, path: str = "") -> JSONResponse:
    return error_response(status_for(exc), message_for(exc), exit_code=exit_code_for(exc), path=path)
