"""Ollama-compatible routes: /api/generate, /api/chat and the model-management endpoints.

Shapes follow Ollama's API (docs/api.md): NDJSON streaming by default, one
object with `"stream": false`, durations in nanoseconds. The final object of
a generation also carries our draft statistics as extra fields (draft_source,
draft_max, draft_proposed, draft_accepted, acceptance_rate, tokens_per_pass);
Ollama clients ignore fields they do not know.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gemma_cli import __version__
from gemma_cli.server import models
from gemma_cli.server.errors import error_body
from gemma_cli.server.jobs import Job
from gemma_cli.server.running import STOP_REASONS, Running, draft_stats, prompt_work
from gemma_cli.server.validate import flag, messages, model_name, model_names, ollama_options, read_json, text_field, unsupported

NDJSON = "application/x-ndjson"
NS = 1_000_000_000


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def final_fields(run: Running) -> dict[str, Any]:
    """done_reason, Ollama's timings (ns) and our draft statistics, from a finished run."""
    out = run.outcome
    assert out is not None
    result = out.result
    s = result.stats
    return {
        "done": True,
        "done_reason": STOP_REASONS.get(result.stop_reason.value, "stop"),
        "total_duration": int(out.total_s * NS),
        "load_duration": int(out.load_s * NS),
        "prompt_eval_count": s.prompt_evaluated,
        "prompt_eval_duration": int(s.prompt_eval_s * NS),
        "eval_count": s.generated_tokens,
        "eval_duration": int(max(s.wall_s - s.prompt_eval_s, 0.0) * NS),
        **draft_stats(s),
    }


async def _lifecycle(request: Request, body: dict[str, Any], model: str, chat: bool) -> Response:
    """An empty prompt loads the model; with keep_alive 0 it unloads it (what `ollama stop` sends)."""
    state = request.app.state
    keep_alive = state.manager.keep_alive_for(body.get("keep_alive"))
    empty = {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
    if keep_alive == 0:
        if not state.manager.stop(model):  # not loaded: still a 404 for a model the store does not hold (as Ollama)
            from gemma_cli.registry.resolve import resolve_model

            await asyncio.to_thread(resolve_model, model)
        return JSONResponse({"model": model, "created_at": _now(), **empty, "done": True, "done_reason": "unload"})
    opts = ollama_options(body.get("options"))
    run = await Running.start(state, model, Job(opts, keep_alive, None), request)
    run.close()
    return JSONResponse({"model": model, "created_at": _now(), **empty, "done": True, "done_reason": "load",
                         "load_duration": int(run.load_s * NS)})


def detail_fields(run: Running) -> dict[str, Any]:
    """`x_gemma` on the final object when the request asked for it: the full statistics
    (`LiveStats.as_dict()`), the engine's stop reason and the load time, so `gemma run`
    in client mode prints exactly what it prints in-process."""
    out = run.outcome
    assert out is not None
    return {"x_gemma": {"stats": out.result.stats.as_dict(), "stop_reason": out.result.stop_reason.value,
                        "load_s": out.load_s}}


async def _respond(request: Request, run: Running, model: str, stream: bool, chat: bool, detail: bool = False) -> Response:
    def chunk(text: str) -> dict[str, Any]:
        if chat:
            return {"model": model, "created_at": _now(), "message": {"role": "assistant", "content": text}, "done": False}
        return {"model": model, "created_at": _now(), "response": text, "done": False}

    if not stream:
        text = await run.text()
        obj = chunk(text)
        obj.update(final_fields(run))
        if detail:
            obj.update(detail_fields(run))
        return JSONResponse(obj)

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for piece in run.pieces():
                if piece.text or (detail and piece.n_tokens):
                    obj = chunk(piece.text)
                    if detail:  # per piece: tokens, accepted draft tokens, and the drafted text's length
                        obj["x_gemma"] = {"tokens": piece.n_tokens, "drafted": piece.n_drafted,
                                          "draft_chars": piece.draft_chars}
                    yield _line(obj)
            last = chunk("")
            last.update(final_fields(run))
            if detail:
                last.update(detail_fields(run))
            yield _line(last)
        except Exception as exc:  # noqa: BLE001 - after the headers, Ollama reports errors as a line
            yield _line(error_body(exc))

    return StreamingResponse(lines(), media_type=NDJSON)


async def generate(request: Request) -> Response:
    body = await read_json(request)
    model = model_name(body)
    unsupported(body)
    prompt = text_field(body, "prompt")
    system = text_field(body, "system")
    raw = flag(body, "raw", False)
    stream = flag(body, "stream", True)
    if not prompt:
        return await _lifecycle(request, body, model, chat=False)
    opts = ollama_options(body.get("options"))
    keep_alive = request.app.state.manager.keep_alive_for(body.get("keep_alive"))
    # Ollama's raw sends the prompt verbatim and ignores `system` (gemma run --raw --system prefixes it instead)
    job = Job(opts, keep_alive, prompt_work(opts, text=prompt, system=None if raw else system, raw=raw))
    run = await Running.start(request.app.state, model, job, request)
    return await _respond(request, run, model, stream, chat=False, detail=flag(body, "x_gemma", False))


async def chat(request: Request) -> Response:
    body = await read_json(request)
    model = model_name(body)
    unsupported(body)
    msgs = messages(body.get("messages"))
    stream = flag(body, "stream", True)
    if not msgs:
        return await _lifecycle(request, body, model, chat=True)
    opts = ollama_options(body.get("options"))
    keep_alive = request.app.state.manager.keep_alive_for(body.get("keep_alive"))
    job = Job(opts, keep_alive, prompt_work(opts, messages=msgs))
    run = await Running.start(request.app.state, model, job, request)
    return await _respond(request, run, model, stream, chat=True, detail=flag(body, "x_gemma", False))


async def tags(request: Request) -> Response:
    if request.query_params.get("gemma"):  # client mode: every record, unreadable manifests too
        return JSONResponse({"models": await models.tags(), "gemma": await models.entries()})
    return JSONResponse({"models": await models.tags()})


async def show(request: Request) -> Response:
    body = await read_json(request)
    return JSONResponse(await models.show(model_name(body, "model", "name")))


async def ps(request: Request) -> Response:
    return JSONResponse({"models": await asyncio.to_thread(models.running, request.app.state.manager)})


async def version(request: Request) -> Response:
    return JSONResponse({"version": __version__})


async def delete(request: Request) -> Response:
    """Ollama's DELETE /api/delete; `models` (a list) is gemma's client-mode `rm`. A loaded model is
    unloaded (a busy one after its requests: it keeps its open files, so deleting is safe)."""
    body = await read_json(request)
    summary = await models.delete(model_names(body))
    for name in summary["deleted"]:
        request.app.state.manager.stop(name)
    return JSONResponse({"gemma": summary})  # Ollama clients read only the status


async def pull(request: Request) -> Response:
    body = await read_json(request)
    name = model_name(body, "model", "name")
    stream = flag(body, "stream", True)
    if not stream:
        await models.pull_all(name)
        return JSONResponse({"status": "success"})
    events = models.pull_events(name)
    first = await events.__anext__()  # unknown names and the like fail before the headers

    async def lines() -> AsyncIterator[bytes]:
        yield _line(first)
        try:
            async for event in events:
                yield _line(event)
        except Exception as exc:  # noqa: BLE001 - reported in-band
            yield _line(error_body(exc))

    return StreamingResponse(lines(), media_type=NDJSON)


ROUTES = [
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/version", version, methods=["GET"]),
    Route("/api/delete", delete, methods=["DELETE"]),
    Route("/api/pull", pull, methods=["POST"]),
]
