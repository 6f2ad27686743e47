"""Server settings, read from the environment (and `gemma serve` flags) once at start-up.

Environment variables, like Ollama's OLLAMA_* ones:
    GEMMA_HOST               host:port to bind (default 127.0.0.1:11436)
    GEMMA_KEEP_ALIVE         how long an idle model stays loaded (default 5m)
    GEMMA_MAX_LOADED_MODELS  models loaded at once; the least recently used idle one goes first (default 1)
    GEMMA_MAX_QUEUE          requests that may wait for a busy model before 503 (default 64)
    GEMMA_ORIGINS            extra browser origins allowed to call the API (comma-separated)
    GEMMA_MAX_BODY           request body limit in bytes (default 8 MiB)
    GEMMA_NUM_PARALLEL       requests per model decoded at once in shared batches (default 4 on a CPU,
                             8 with GPU offload; 1: one request at a time, on the engine alone); fewer
                             when the memory left after loading holds fewer slots' KV (lanes.py)
    GEMMA_BATCH_EXACT        1: batched requests get logits bit-identical to solo runs (one KV stream per
                             slot, at most 7 rows per shared decode; slower); default: one unified KV pool,
                             outputs equal to solo runs up to near-ties
    GEMMA_RPC                RPC workers to split every loaded model across (as `--rpc`; read by the flag)

11436 is free of Ollama's 11434 and llama-server's 8080, so all three can run side by side.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field

from gemma_cli.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11436
DEFAULT_KEEP_ALIVE = 300.0
DEFAULT_MAX_LOADED = 1
DEFAULT_MAX_QUEUE = 64
DEFAULT_MAX_BODY = 8 * 1024 * 1024
FOREVER = float("inf")
LONGEST_DURATION = 100 * 365.25 * 86400.0  # seconds; longer keep-alives are FOREVER

_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object, what: str = "keep_alive") -> float:
    """Seconds from a number (seconds) or a Go-style duration ("5m", "1h30m", "-1").

    Negative means forever (returned as +inf); 0 means unload at once.
    """
    if isinstance(value, bool):
        raise UsageError(f"{what} must be a duration like \"5m\" or a number of seconds, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text.replace("+", ""):
                raise UsageError(f"{what} must be a duration like \"5m\" or a number of seconds, got {value!r}") from None
            negative = text.startswith("-")
            seconds = sum(abs(float(n)) * _UNIT[u] for n, u in parts) * (-1 if negative else 1)
    else:
        raise UsageError(f"{what} must be a duration like \"5m\" or a number of seconds, got {value!r}")
    if seconds != seconds:  # NaN
        raise UsageError(f"{what} is not a number")
    # Past a century a duration means "never unload": it could not be added to a date or timestamp anyway.
    return FOREVER if seconds < 0 or seconds >= LONGEST_DURATION else seconds


def parse_host(value: str | None) -> tuple[str, int]:
    """`host:port`, `host`, `:port`, `[::1]:port` or a URL like http://host:port -> (host, port)."""
    text = (value or "").strip()
    if not text:
        return DEFAULT_HOST, DEFAULT_PORT
    text = re.sub(r"^https?://", "", text).rstrip("/")
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageError(f"invalid address {value!r}: unclosed '['")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise UsageError(f"invalid address {value!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        host = text  # a bare IPv6 address
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise UsageError(f"invalid address {value!r}: an IPv6 address with a port is written in brackets, "
                             "e.g. [::1]:11436") from None
    host = host or DEFAULT_HOST
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"invalid port in {value!r}: expected 0-65535")
    return host, int(port_text)


def is_loopback_host(host: str) -> bool:
    """Whether every address `host` resolves to is a loopback address (names are resolved)."""
    name = host.strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to know before it binds."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    keep_alive: float = DEFAULT_KEEP_ALIVE
    max_loaded: int = DEFAULT_MAX_LOADED
    max_queue: int = DEFAULT_MAX_QUEUE
    origins: tuple[str, ...] = ()
    max_body: int = DEFAULT_MAX_BODY
    n_ctx: int = 4096
    n_gpu_layers: int = 0
    n_threads: int | None = None
    rpc: str | None = None  # "HOST:PORT,...": every model loads split across these `gemma rpc-worker`s
    tensor_split: str | None = None  # with rpc: shares per worker, then this machine
    verbose: bool = False
    loopback: bool = field(default=True)
    num_parallel: int = 1  # from_env: GEMMA_NUM_PARALLEL, else batch.default_num_parallel
    batch_exact: bool = False

    @classmethod
    def from_env(cls, host: str | None = None, **overrides: object) -> "Settings":
        """Settings from GEMMA_* variables; `host` (the --host flag) wins over GEMMA_HOST."""
        h, port = parse_host(host if host is not None else os.environ.get("GEMMA_HOST"))
        keep = os.environ.get("GEMMA_KEEP_ALIVE", "").strip()
        origins = tuple(o.strip().rstrip("/") for o in os.environ.get("GEMMA_ORIGINS", "").split(",") if o.strip())
        values: dict[str, object] = dict(
            host=h,
            port=port,
            keep_alive=parse_duration(keep, "GEMMA_KEEP_ALIVE") if keep else DEFAULT_KEEP_ALIVE,
            max_loaded=_env_int("GEMMA_MAX_LOADED_MODELS", DEFAULT_MAX_LOADED, 1),
            max_queue=_env_int("GEMMA_MAX_QUEUE", DEFAULT_MAX_QUEUE, 0),
            origins=origins,
            max_body=_env_int("GEMMA_MAX_BODY", DEFAULT_MAX_BODY, 1024),
            loopback=is_loopback_host(h),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "num_parallel" not in overrides:
            from gemma_cli.engine.batch import default_num_parallel  # reads GEMMA_NUM_PARALLEL (one clear error if bad)

            values["num_parallel"] = default_num_parallel(int(values.get("n_gpu_layers") or 0) > 0)  # type: ignore[call-overload]
        if values.get("rpc"):  # a model split over RPC runs one request at a time (shared batches untested there)
            values["num_parallel"] = 1
        exact = os.environ.get("GEMMA_BATCH_EXACT", "").strip()
        if exact not in ("", "0", "1"):
            raise UsageError(f"GEMMA_BATCH_EXACT must be 0 or 1, got {exact!r}")
        values["batch_exact"] = exact == "1"
        return cls(**values)  # type: ignore[arg-type]
