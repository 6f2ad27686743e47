"""The ASGI application: routes of both API families, /health, /metrics, error handling.

Every route runs inside `_json_errors`, so whatever goes wrong the client
gets a JSON error (errors.error_payload: Ollama's or OpenAI's shape) with a fitting status, and stderr gets one line, not
a traceback (GEMMA_DEBUG=1 prints it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import traceback
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gemma_cli import __version__
from gemma_cli.server import ollama_api, openai_api
from gemma_cli.server.errors import error_response, response_for, status_for
from gemma_cli.server.manager import ModelManager
from gemma_cli.server.metrics import Metrics
from gemma_cli.server.security import SecurityMiddleware
from gemma_cli.server.settings import Settings

Endpoint = Callable[[Request], Awaitable[Response]]


def _json_errors(endpoint: Endpoint) -> Endpoint:
    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:  # noqa: BLE001 - the API's one error boundary
            if status_for(exc) == 500:  # a bug or an engine failure; 502/503 are expected conditions
                sys.stderr.write(f"error: {request.method} {request.url.path}: {type(exc).__name__}: {exc}\n")
                if os.environ.get("GEMMA_DEBUG"):
                    traceback.print_exc()
            return response_for(exc, request.url.path)

    return wrapped


async def health(request: Request) -> Response:
    manager: ModelManager = request.app.state.manager
    return JSONResponse({"status": "ok", "version": __version__, "loaded_models": len(manager.loaded()),
                         "queue_depth": manager.queue_depth})


async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)


async def root(request: Request) -> Response:
    return Response("gemma-cli is running\n", media_type="text/plain")


def _routes() -> list[Route]:
    plain = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    out = []
    for r in plain + ollama_api.ROUTES + openai_api.ROUTES:
        out.append(Route(r.path, _json_errors(r.endpoint), methods=sorted(r.methods or ())))
    return out


ROUTES = _routes()
ROUTE_PATHS = frozenset(r.path for r in ROUTES)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.status_code != 404 else f"no such endpoint: {request.method} {request.url.path}"
    if exc.status_code == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, str(detail), headers=dict(exc.headers or {}), path=request.url.path)


def create_app(settings: Settings) -> Starlette:
    """A fresh application with its own model manager and metrics registry."""
    metric_set = Metrics()
    manager = ModelManager(settings, metric_set)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        reaper = asyncio.create_task(manager.reap_forever())
        try:
            yield
        finally:
            reaper.cancel()
            manager.shutdown()

    app = Starlette(
        routes=ROUTES,
        middleware=[Middleware(SecurityMiddleware, settings=settings, metrics=metric_set)],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.manager = manager
    app.state.metrics = metric_set
    return app
