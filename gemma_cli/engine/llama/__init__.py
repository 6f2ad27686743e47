"""llama.cpp behind one door: typed wrappers for models, contexts, batches and KV memory.

Only `_lib` imports `llama_cpp` (lazily: importing this package does not load
it). Callers use `Model`, `Context`, `MTPContext` and the functions below;
none of them needs the raw C API.
"""

from __future__ import annotations

from gemma_cli.engine.llama._lib import (
    DecodeTimer,
    backend_devices,
    build_has_amx,
    capabilities,
    choose_cpu_repack,
    last_log_line,
    libggml,
    log_lines,
    supports_rpc,
    system_info,
)
from gemma_cli.engine.llama.context import VIEW_ROWS, Context, rounded_context
from gemma_cli.engine.llama.model import Model, check_gguf_file
from gemma_cli.engine.llama.mtp_context import MTPContext
from gemma_cli.engine.llama.threads import choose_threads, default_threads

__all__ = [
    "VIEW_ROWS",
    "Context",
    "DecodeTimer",
    "MTPContext",
    "Model",
    "backend_devices",
    "build_has_amx",
    "capabilities",
    "check_gguf_file",
    "choose_threads",
    "choose_cpu_repack",
    "default_threads",
    "last_log_line",
    "rounded_context",
    "libggml",
    "log_lines",
    "supports_rpc",
    "system_info",
]
