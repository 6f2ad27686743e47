"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models.

Streaming is SSE ending with `data: [DONE]`; `stream_options.include_usage`
adds a last chunk with `usage`. Every response carries one extension object,
`x_gemma`: the draft statistics (draft_source, draft_max, draft_proposed,
draft_accepted, acceptance_rate, tokens_per_pass) plus tokens_per_second,
time_to_first_token_s, prompt_cached_tokens and load_s. The official client
keeps unknown fields (`response.x_gemma` / `model_extra`).

Extensions accepted in requests: top_k, min_p, draft, draft_tokens, num_ctx,
keep_alive, and `raw` for /v1/completions (skip the chat template).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gemma_cli import __version__
from gemma_cli.server import models
from gemma_cli.server.errors import APIError, message_for
from gemma_cli.server.jobs import Job
from gemma_cli.server.running import STOP_REASONS, Running, draft_stats, prompt_work
from gemma_cli.server.validate import flag, messages, model_name, openai_options, read_json

FINGERPRINT = f"gemma-cli-{__version__}"


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def x_gemma(run: Running) -> dict[str, Any]:
    out = run.outcome
    assert out is not None
    s = out.result.stats
    return {**draft_stats(s), "tokens_per_second": round(s.tokens_per_s, 3), "time_to_first_token_s": round(out.ttft_s, 6),
            "prompt_cached_tokens": s.prompt_tokens - s.prompt_evaluated, "load_s": round(out.load_s, 6)}


def usage(run: Running) -> dict[str, int]:
    s = run.outcome.result.stats  # type: ignore[union-attr]
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens,
            "total_tokens": s.prompt_tokens + s.generated_tokens}


def _finish_reason(run: Running) -> str:
    return STOP_REASONS.get(run.outcome.result.stop_reason.value, "stop")  # type: ignore[union-attr]


def _common(body: dict[str, Any]) -> None:
    for key in ("tools", "functions", "logit_bias", "suffix"):
        if body.get(key):
            raise APIError(400, f"{key} is not supported by this server")
    if body.get("logprobs") or body.get("top_logprobs") or body.get("echo"):
        raise APIError(400, "logprobs and echo are not supported by this server")
    if body.get("tool_choice") not in (None, "none", "auto"):  # "auto" without tools (refused above) means none
        raise APIError(400, "tool_choice is not supported (tools are not supported yet)")
    for key in ("frequency_penalty", "presence_penalty"):  # clients send 0 by default: only a real penalty is refused
        if body.get(key) not in (None, 0):
            raise APIError(400, f"{key} is not supported by this server (only 0)")
    fmt = body.get("response_format")
    if fmt not in (None, {}) and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise APIError(400, "response_format other than text is not supported yet")


def _include_usage(body: dict[str, Any]) -> bool:
    """`stream_options.include_usage`, with stream_options checked first (not a 500 for `true` or a list)."""
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise APIError(400, "stream_options must be an object")
    return bool(opts.get("include_usage"))


async def _start(request: Request, body: dict[str, Any], **prompt: Any) -> tuple[Running, str]:
    model = model_name(body)
    _common(body)
    opts = openai_options(body)
    keep_alive = request.app.state.manager.keep_alive_for(body.get("keep_alive"))
    job = Job(opts, keep_alive, prompt_work(opts, **prompt))
    assert model is not None
    return await Running.start(request.app.state, model, job, request), model


def _stream(run: Running, include_usage: bool, make_chunk, first: dict[str, Any] | None) -> Response:
    async def events() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield _sse(make_chunk(first, None))
            async for piece in run.pieces():
                if piece.text:
                    yield _sse(make_chunk({"content": piece.text}, None))
            last = make_chunk({}, _finish_reason(run))
            last["x_gemma"] = x_gemma(run)
            yield _sse(last)
            if include_usage:
                tail = make_chunk({}, None)
                tail["choices"] = []
                tail["usage"] = usage(run)
                tail["x_gemma"] = x_gemma(run)
                yield _sse(tail)
        except Exception as exc:  # noqa: BLE001 - after the headers: report in-band, then end the stream
            yield _sse({"error": {"message": message_for(exc), "type": "server_error"}})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def chat_completions(request: Request) -> Response:
    body = await read_json(request)
    msgs = messages(body.get("messages"))
    if not msgs:
        raise APIError(400, "messages must be a non-empty list")
    stream = flag(body, "stream", False)
    include_usage = _include_usage(body)
    run, model = await _start(request, body, messages=msgs)
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
               "system_fingerprint": FINGERPRINT, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    if stream:
        return _stream(run, include_usage, chunk, {"role": "assistant", "content": ""})
    text = await run.text()
    return JSONResponse({
        "id": cid, "object": "chat.completion", "created": created, "model": model, "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": _finish_reason(run)}],
        "usage": usage(run), "x_gemma": x_gemma(run),
    })


async def completions(request: Request) -> Response:
    body = await read_json(request)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise APIError(400, "prompt must be a non-empty string (one prompt per request)")
    stream = flag(body, "stream", False)
    raw = flag(body, "raw", False)
    include_usage = _include_usage(body)
    run, model = await _start(request, body, text=prompt, raw=raw)
    cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        out = {"id": cid, "object": "text_completion", "created": created, "model": model, "system_fingerprint": FINGERPRINT,
               "choices": [{"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    if stream:
        return _stream(run, include_usage, chunk, None)
    text = await run.text()
    return JSONResponse({
        "id": cid, "object": "text_completion", "created": created, "model": model, "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": _finish_reason(run)}],
        "usage": usage(run), "x_gemma": x_gemma(run),
    })


async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": models.openai_models(await models.tags())})


async def get_model(request: Request) -> Response:
    name = model_name({"model": request.path_params["model"]})
    for entry in models.openai_models(await models.tags()):
        if entry["id"] == name:
            return JSONResponse(entry)
    raise APIError(404, f"model {name} is not in the store")


ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
