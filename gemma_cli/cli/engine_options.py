"""Options shared by `run`, `chat` and `bench`, and turning them into an Engine.

One definition per option keeps help texts, defaults and validation identical
across commands (and in the generated man page and completions). The ranges
themselves live in `gemma_cli.limits`; this is where they become usage errors
named after the option. The draft choice and engine opening live in
`gemma_cli.session`, which `gemma serve` shares.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from gemma_cli import limits, session
from gemma_cli.pair import ModelPair
from gemma_cli.session import (  # noqa: F401 - the commands' one import for these
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    DRAFT_CHOICES,
    EngineChoice,
    draft_config,
)

Draft = Annotated[str, typer.Option("--draft", help="Draft source: auto (the pair's drafter), mtp, model, ngram or none.", rich_help_panel="Speculative decoding")]
DraftTokens = Annotated[Optional[int], typer.Option("--draft-tokens", help="Maximum draft length k (default: tuned or catalog value).", rich_help_panel="Speculative decoding")]
Temperature = Annotated[float, typer.Option("--temperature", "-t", help="Sampling temperature; 0 = greedy.", rich_help_panel="Sampling")]
TopK = Annotated[int, typer.Option("--top-k", help="Keep the k most likely tokens (0 = off).", rich_help_panel="Sampling")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (1 = off).", rich_help_panel="Sampling")]
MinP = Annotated[float, typer.Option("--min-p", help="Drop tokens below min_p x the top probability (0 = off).", rich_help_panel="Sampling")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed: same seed, same output (-1 = random).", rich_help_panel="Sampling")]
MaxTokens = Annotated[int, typer.Option("--max-tokens", "-n", help="Stop after this many generated tokens.", rich_help_panel="Sampling")]
Ctx = Annotated[int, typer.Option("--ctx", help="Context window in tokens (rounded up to a multiple of 256).", rich_help_panel="Hardware")]
GpuLayers = Annotated[int, typer.Option("--gpu-layers", help="Layers to offload to the GPU (CUDA/Metal builds; -1 = all).", rich_help_panel="Hardware")]
Threads = Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: available cores).", rich_help_panel="Hardware")]


def _arm_rpc_interrupts(value: str | None) -> str | None:
    """At parse time, before any library starts threads: see rpc.install_interrupt_escape."""
    if value:
        from gemma_cli.engine.rpc import install_interrupt_escape

        install_interrupt_escape()
    return value


Rpc = Annotated[Optional[str], typer.Option("--rpc", envvar="GEMMA_RPC", callback=_arm_rpc_interrupts, help="Split the model across `gemma rpc-worker`s: HOST:PORT[,HOST:PORT...] (drafters stay local).", rich_help_panel="Hardware")]
# `gemma serve` takes the same option without the CLI's Ctrl-C escape: uvicorn handles the server's signals.
RpcServe = Annotated[Optional[str], typer.Option("--rpc", envvar="GEMMA_RPC", help="Split every loaded model across `gemma rpc-worker`s: HOST:PORT[,HOST:PORT...] (drafters stay local).", rich_help_panel="Hardware")]
TensorSplit = Annotated[Optional[str], typer.Option("--tensor-split", help="With --rpc: layer shares per worker, then this machine, e.g. 1,1,1 (default: by free memory).", rich_help_panel="Hardware")]


def check_generation(max_tokens: int, temperature: float, top_k: int, top_p: float, min_p: float = 0.0) -> None:
    """--max-tokens and the sampling options, as usage errors (before anything loads)."""
    limits.check_max_tokens(max_tokens, "--max-tokens")
    limits.check_sampling(temperature, top_k, top_p, min_p)


def open_engine(pair: ModelPair, choice: EngineChoice, workload: str = "default"):
    """Load the pair (`gemma_cli.session.open_engine`) and say when llama.cpp rounded --ctx up."""
    from gemma_cli.cli.interrupt import held_until_loaded

    with held_until_loaded():  # a Ctrl-C while llama.cpp loads ends the command once the load returns
        engine = session.open_engine(pair, choice, workload)
    if engine.n_ctx != choice.ctx:
        import sys

        sys.stderr.write(f"note: --ctx {choice.ctx} was rounded up to {engine.n_ctx} (llama.cpp sizes contexts in steps of 256 tokens)\n")
    return engine


def resolve(model: str | None, *, pull_missing: bool = False) -> ModelPair:
    """A model name, a .gguf path, or None (the default model) -> ModelPair.

    With `pull_missing` (run, chat), a catalog model not in the store yet is
    pulled first, with a line and progress bars on stderr, as `ollama run` does.
    """
    import sys

    from gemma_cli.registry.resolve import NotPulledError, resolve_model, resolve_or_pull

    try:
        return resolve_model(model)
    except NotPulledError as missing:
        if not pull_missing:
            raise
        sys.stderr.write(f"{missing.ref} is not pulled yet; pulling it now (Ctrl-C stops, the same command resumes)\n")
        sys.stderr.flush()
    from gemma_cli.cli.progress import progress_for

    with progress_for(False) as progress:
        return resolve_or_pull(model, progress)
