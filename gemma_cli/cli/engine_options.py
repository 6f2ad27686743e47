"""Options shared by `run`, `chat` and `bench`, and turning them into an Engine.

One definition per option keeps help texts, defaults and validation identical
across commands (and in the generated man page and completions). The ranges
themselves live in `gemma_cli.limits`; this is where they become usage errors
named after the option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Optional

import typer

from gemma_cli import limits
from gemma_cli.errors import UsageError
from gemma_cli.pair import ModelPair

#: What --draft accepts: `auto` (the pair's own drafter), then the engine's sources, richest first.
DRAFT_CHOICES = ("auto", *reversed(limits.DRAFT_SOURCES))

# Gemma's published generation config (as Ollama's gemma3 Modelfile uses).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_K = 64
DEFAULT_TOP_P = 0.95

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
TensorSplit = Annotated[Optional[str], typer.Option("--tensor-split", help="With --rpc: layer shares per worker, then this machine, e.g. 1,1,1 (default: by free memory).", rich_help_panel="Hardware")]


@dataclass(frozen=True)
class EngineChoice:
    """What the user chose on the command line, before anything is loaded."""

    draft: str = "auto"
    draft_tokens: int | None = None
    ctx: int = 4096
    gpu_layers: int = 0
    threads: int | None = None
    rpc: str | None = None
    tensor_split: str | None = None


def draft_config(pair: ModelPair, choice: EngineChoice, workload: str = "default"):
    """Map --draft/--draft-tokens and the pair's drafter onto a DraftConfig."""
    from gemma_cli.engine import DraftConfig

    if choice.draft not in DRAFT_CHOICES:
        raise UsageError(f"--draft must be one of {', '.join(DRAFT_CHOICES)}, got {choice.draft!r}")
    source = pair.draft_source if choice.draft == "auto" else choice.draft
    if source in ("mtp", "model") and pair.drafter is None:
        if choice.draft == "auto":
            source = "ngram"
        else:
            raise UsageError(f"{pair.name} has no drafter model for --draft {source}; use --draft ngram or none")
    if source == "mtp" and pair.draft_source != "mtp":
        raise UsageError(f"{pair.name}'s drafter is not a Gemma 4 MTP assistant; use --draft model")
    if source == "mtp" and choice.rpc:  # the assistant reads the target's KV cache, which then lives on the workers
        if choice.draft != "auto":
            from gemma_cli.engine.rpc_placement import MTP_UNSUPPORTED

            raise UsageError(MTP_UNSUPPORTED)
        source = "ngram"
    tokens = choice.draft_tokens if choice.draft_tokens is not None else pair.draft_tokens_for(workload)
    limits.check_draft_tokens(tokens)
    model_path = pair.drafter if source in ("mtp", "model") else None
    return DraftConfig(source=source, tokens=tokens, model_path=model_path)


def check_generation(max_tokens: int, temperature: float, top_k: int, top_p: float, min_p: float = 0.0) -> None:
    """--max-tokens and the sampling options, as usage errors (before anything loads)."""
    limits.check_max_tokens(max_tokens, "--max-tokens")
    limits.check_sampling(temperature, top_k, top_p, min_p)


def open_engine(pair: ModelPair, choice: EngineChoice, workload: str = "default"):
    """Load the pair with the chosen draft source (imports llama.cpp only now)."""
    from gemma_cli.engine import Engine, EngineConfig

    limits.check_n_ctx(choice.ctx, "--ctx")
    limits.check_threads(choice.threads, "--threads")
    if choice.tensor_split and not choice.rpc:
        raise UsageError("--tensor-split only applies with --rpc")
    if choice.rpc and choice.gpu_layers:
        raise UsageError("--gpu-layers does not combine with --rpc; shape the split with --tensor-split")
    draft = draft_config(pair, choice, workload)
    config = EngineConfig(
        n_ctx=choice.ctx, n_gpu_layers=choice.gpu_layers, n_threads=choice.threads, rpc=choice.rpc or None, tensor_split=choice.tensor_split
    )
    engine = Engine(pair.target, draft, config)
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
