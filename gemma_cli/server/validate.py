"""Turn untrusted JSON request bodies into typed, validated generation requests.

Everything a client sends is checked here with a one-line reason (400), so
the routes and the engine only ever see well-formed values. The rules are the
CLI's: ranges from `gemma_cli.limits`, defaults and draft choices from
`gemma_cli.session`, model names from the catalog.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from starlette.requests import Request

from gemma_cli import limits
from gemma_cli.errors import UsageError
from gemma_cli.server.errors import APIError
from gemma_cli.session import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P, DRAFT_CHOICES

MAX_CTX = 1 << 20  # a request may not ask llama.cpp for more (it would try to allocate it)
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class GenOptions:
    """What one request asks of the engine (None: the model's or server's default)."""

    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    top_p: float = DEFAULT_TOP_P
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = None  # None: until end of text or a full context
    stop: tuple[str, ...] = ()
    draft: str = "auto"
    draft_tokens: int | None = None
    num_ctx: int | None = None

    def sampling(self):
        from gemma_cli.engine import SamplingParams

        return SamplingParams(self.temperature, self.top_k, self.top_p, self.min_p, self.seed).validate()


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or 400 saying what is wrong with it."""
    body = await request.body()
    if not body.strip():
        raise APIError(400, "missing request body: expected a JSON object")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"invalid JSON in request body: {exc}") from None
    except RecursionError:  # thousands of nested brackets: Python's parser gives up, the client gets a 400
        raise APIError(400, "invalid JSON in request body: nested too deeply") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    if _ESCAPED_SURROGATE.search(body):  # JSON may escape half a UTF-16 pair, which no text can hold
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, "invalid text in request body: an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)") from None
    return data


_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def model_name(body: Mapping[str, Any], *keys: str, required: bool = True) -> str | None:
    """The requested model name, validated as the CLI validates names (paths are refused)."""
    from gemma_cli.registry.resolve import stored_ref

    value = None
    for key in keys or ("model",):
        if body.get(key):
            value = body[key]
            break
    if value is None:
        if required:
            raise APIError(400, "model is required")
        return None
    if not isinstance(value, str):
        raise APIError(400, "model must be a string")
    if value.endswith(".gguf") or "/" in value or "\\" in value or value.startswith((".", "~")):
        raise APIError(400, f"invalid model name {value[:80]!r}: the server loads store models only; "
                       "register a file with `gemma create NAME --target FILE`")
    return str(stored_ref(value))  # raises InvalidModelNameError (400) on bad names; an alias is its model's name


def model_names(body: Mapping[str, Any]) -> list[str]:
    """The names to delete, as typed: Ollama's one `model` (or `name`, checked by `model_name`), or
    gemma's `models` list (client-mode `gemma rm A B`), whose names the store's own parser checks,
    so a bad one gets the message and exit code it gets in-process."""
    if "models" not in body:
        model_name(body, "model", "name")
        return [str(body.get("model") or body.get("name"))]
    names = body["models"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise APIError(400, "models must be a non-empty list of model names")
    return names


def _number(value: Any, what: str, *, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise APIError(400, f"{what} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if integer:
        if isinstance(value, float):
            if not value.is_integer():
                raise APIError(400, f"{what} must be an integer, got {value!r}")
            value = int(value)
        return value
    if value != value or value in (float("inf"), float("-inf")):
        raise APIError(400, f"{what} must be a finite number")
    return float(value)


def _stop(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise APIError(400, f"{what} must be a string or a list of strings")
    if len(value) > 16:
        raise APIError(400, f"{what} takes at most 16 strings")
    return tuple(s for s in value if s)


def _draft(value: Any, what: str) -> str:
    if value is None:
        return "auto"
    if value not in DRAFT_CHOICES:
        raise APIError(400, f"{what} must be one of {', '.join(DRAFT_CHOICES)}, got {value!r}")
    return value


def _limit(check: Any, *args: Any) -> Any:
    """A `gemma_cli.limits` check, its UsageError as a 400."""
    try:
        return check(*args)
    except UsageError as exc:
        raise APIError(400, str(exc)) from None


def _draft_tokens(value: Any, what: str) -> int | None:
    if value is None:
        return None
    return _limit(limits.check_draft_tokens, int(_number(value, what, integer=True)), what)


def _num_ctx(value: Any, what: str) -> int | None:
    if value is None:
        return None
    n = _limit(limits.check_n_ctx, int(_number(value, what, integer=True)), what)
    if n > MAX_CTX:
        raise APIError(400, f"{what} must be at most {MAX_CTX}, got {n}")
    return n


def _max_tokens(value: Any, what: str, *, negative_unlimited: bool) -> int | None:
    if value is None:
        return None
    n = int(_number(value, what, integer=True))
    if n < 0 and negative_unlimited:
        return None
    return _limit(limits.check_max_tokens, n, what)


def _seed(value: Any, what: str) -> int | None:
    """-1 means a random seed, as on the command line (`limits.RANDOM_SEED`, Ollama's default too).

    Other negative seeds are seeds: OpenAI's are any int64 and llama.cpp (so
    Ollama) wraps them to unsigned; they are folded to non-negative here.
    """
    if value is None:
        return None
    n = int(_number(value, what, integer=True))
    if n == limits.RANDOM_SEED:
        return None
    return n % (1 << 64) if n < 0 else n


def _checked(opts: GenOptions) -> GenOptions:
    try:
        opts.sampling()
    except UsageError as exc:
        raise APIError(400, str(exc)) from None
    return opts


def _options(get: Any, prefix: str, max_tokens: Callable[[], Any]) -> GenOptions:
    """Both APIs' options, checked in one order (the first bad field is the one reported); `prefix` names
    fields in messages as the client sent them; `max_tokens` checks the field each API spells its own way."""
    def num(key: str, default: float, integer: bool = False) -> Any:
        value = get(key)
        if value is None:
            return default
        n = _number(value, prefix + key, integer=integer)
        return int(n) if integer else n

    return _checked(GenOptions(
        temperature=num("temperature", DEFAULT_TEMPERATURE),
        top_k=num("top_k", DEFAULT_TOP_K, integer=True),
        top_p=num("top_p", DEFAULT_TOP_P),
        min_p=num("min_p", 0.0),
        seed=_seed(get("seed"), prefix + "seed"),
        max_tokens=max_tokens(),
        stop=_stop(get("stop"), prefix + "stop"),
        draft=_draft(get("draft"), prefix + "draft"),
        draft_tokens=_draft_tokens(get("draft_tokens"), prefix + "draft_tokens"),
        num_ctx=_num_ctx(get("num_ctx"), prefix + "num_ctx"),
    ))


def ollama_options(options: Any) -> GenOptions:
    """Ollama's `options` object; unknown keys (num_thread, repeat_penalty...) are ignored, as Ollama does."""
    if options is None:
        return GenOptions()
    if not isinstance(options, dict):
        raise APIError(400, "options must be a JSON object")
    get = options.get
    return _options(get, "options.", lambda: _max_tokens(get("num_predict"), "options.num_predict", negative_unlimited=True))


def openai_options(body: Mapping[str, Any]) -> GenOptions:
    """OpenAI sampling fields, plus our extensions top_k, min_p, draft, draft_tokens, num_ctx."""
    get = body.get
    n = get("n")
    if n is not None and n != 1:
        raise APIError(400, "n must be 1: one choice per request")
    max_tokens = get("max_completion_tokens") if get("max_completion_tokens") is not None else get("max_tokens")
    return _options(get, "", lambda: _max_tokens(max_tokens, "max_tokens", negative_unlimited=False))


def _content(value: Any, where: str) -> str:
    """Message content: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"{where}: only text content parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(400, f"{where} must be a string")


def messages(value: Any, *, where: str = "messages") -> tuple[dict[str, str], ...]:
    """Chat messages with roles system/user/assistant and text content (images are refused)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise APIError(400, f"{where} must be a list")
    out = []
    for i, m in enumerate(value):
        here = f"{where}[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{here} must be an object")
        role = m.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in ROLES:
            raise APIError(400, f"{here}.role must be one of {', '.join(ROLES)}, got {role!r}")
        if m.get("images"):
            raise APIError(400, f"{here}: images are not supported by this server")
        if m.get("tool_calls"):  # tools are refused, so is a history that claims to have used them
            raise APIError(400, f"{here}: tool_calls are not supported yet")
        out.append({"role": role, "content": _content(m.get("content"), f"{here}.content")})
    return tuple(out)


def text_field(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise APIError(400, f"{key} must be a string")
    return value


def flag(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"{key} must be true or false")
    return value


def unsupported(body: Mapping[str, Any]) -> None:
    """Refuse, with a reason, the Ollama fields this server cannot honour (rather than ignore them)."""
    if body.get("images"):
        raise APIError(400, "images are not supported by this server")
    if body.get("format") not in (None, ""):
        raise APIError(400, "format (structured output) is not supported yet")
    if body.get("think"):
        raise APIError(400, "thinking is not supported by Gemma 3 models")
    if body.get("tools"):
        raise APIError(400, "tools are not supported yet")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise APIError(400, "logprobs are not supported by this server")
    if body.get("suffix"):
        raise APIError(400, "suffix (fill-in-the-middle) is not supported")
    if body.get("template"):
        raise APIError(400, "a custom template is not supported; use raw with a pre-rendered prompt")
