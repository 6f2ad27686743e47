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
    rpc: opt.RpcServe = None,
    tensor_split: opt.TensorSplit = None,
) -> None:
    """Serve the Ollama-compatible API (/api/...) and the OpenAI-compatible API (/v1/...).

    Binds 127.0.0.1:11436 by default. Examples: gemma serve | GEMMA_HOST=0.0.0.0:11436 gemma serve | gemma serve --rpc 10.8.0.2:50052
    """
    from gemma_cli import limits
    from gemma_cli.errors import UsageError
    from gemma_cli.server.listen import serve
    from gemma_cli.server.settings import Settings, parse_duration

    limits.check_n_ctx(ctx, "--ctx")
    limits.check_threads(threads, "--threads")
    from gemma_cli import config

    for flag in ("GEMMA_CPU_REPACK", "GEMMA_PROBE"):  # read at each model load: refuse a bad value now, not per request
        config.env_flag(flag)
    if max_loaded is not None:
        limits.check_positive(max_loaded, "--max-loaded")
    if max_queue is not None and max_queue < 0:
        raise UsageError(f"--max-queue must be >= 0, got {max_queue}")
    settings = Settings.from_env(
        host,
        keep_alive=parse_duration(keep_alive, "--keep-alive") if keep_alive is not None else None,
        max_loaded=max_loaded, max_queue=max_queue, n_ctx=ctx, n_gpu_layers=gpu_layers, n_threads=threads,
        rpc=rpc or None, tensor_split=tensor_split, verbose=verbose,
    )
    check_rpc(settings)
    if not settings.rpc:  # one OpenMP team for every job thread (compute_thread.py); not over RPC, see there
        from gemma_cli.engine.llama import compute_thread

        compute_thread.install()
    serve(settings)


def check_rpc(settings) -> None:
    """--rpc / --tensor-split problems as one line before binding (the workers themselves are probed at each load)."""
    from gemma_cli.errors import UsageError

    if settings.tensor_split and not settings.rpc:
        raise UsageError("--tensor-split only applies with --rpc")
    if not settings.rpc:
        return
    from gemma_cli.engine.rpc import require_rpc
    from gemma_cli.engine.rpc_placement import parse_tensor_split
    from gemma_cli.engine.rpc_protocol import parse_endpoints

    parse_tensor_split(settings.tensor_split, len(parse_endpoints(settings.rpc)))
    if settings.n_gpu_layers:
        raise UsageError("--gpu-layers does not combine with --rpc; shape the split with --tensor-split")
    if settings.max_loaded > 1:  # a worker serves one connection: a second model's probe would find it busy
        raise UsageError(f"--rpc loads one model at a time (max loaded {settings.max_loaded}); use --max-loaded 1")
    require_rpc()
