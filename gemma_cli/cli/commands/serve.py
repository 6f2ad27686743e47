"""`gemma serve`: run the local HTTP API (Ollama- and OpenAI-compatible)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from gemma_cli.cli import engine_options as opt


def serve_cmd(
    host: Annotated[Optional[str], typer.Option("--host", help="Address host:port (default $GEMMA_HOST or 127.0.0.1:11436).", show_default=False)] = None,
    keep_alive: Annotated[Optional[str], typer.Option("--keep-alive", help="Keep idle models loaded this long, e.g. 5m, 1h, 0, -1 (default $GEMMA_KEEP_ALIVE or 5m).", show_default=False)] = None,
    max_loaded: Annotated[Optional[int], typer.Option("--max-loaded", help="Models loaded at once (default $GEMMA_MAX_LOADED_MODELS or 1).", show_default=False)] = None,
    max_queue: Annotated[Optional[int], typer.Option("--max-queue", help="Requests that may wait before 503 (default $GEMMA_MAX_QUEUE or 64).", show_default=False)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log a statistics line per generation, and uvicorn's own messages.")] = False,
    ctx: opt.Ctx = 4096,
    gpu_layers: opt.GpuLayers = 0,
    threads: opt.Threads = None,
) -> None:
    """Serve the Ollama-compatible API (/api/...) and the OpenAI-compatible API (/v1/...).

    Binds 127.0.0.1:11436 by default. Examples: gemma serve | GEMMA_HOST=0.0.0.0:11436 gemma serve
    """
    from gemma_cli import limits
    from gemma_cli.errors import UsageError
    from gemma_cli.server.listen import serve
    from gemma_cli.server.settings import Settings, parse_duration

    limits.check_n_ctx(ctx, "--ctx")
    limits.check_threads(threads, "--threads")
    if max_loaded is not None:
        limits.check_positive(max_loaded, "--max-loaded")
    if max_queue is not None and max_queue < 0:
        raise UsageError(f"--max-queue must be >= 0, got {max_queue}")
    settings = Settings.from_env(
        host,
        keep_alive=parse_duration(keep_alive, "--keep-alive") if keep_alive is not None else None,
        max_loaded=max_loaded, max_queue=max_queue, n_ctx=ctx, n_gpu_layers=gpu_layers, n_threads=threads,
        verbose=verbose,
    )
    serve(settings)
