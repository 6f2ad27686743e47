"""What a generation asks for before anything loads, and opening the engine for it.

`gemma run`, `gemma chat`, `gemma bench` and `gemma serve` all choose a draft
source, a draft length and hardware settings, then load a pair. The choice and
its checks live here, below both thin tops (cli/ and server/), so a request to
the server and a command line are held to the same rules and defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from gemma_cli import limits
from gemma_cli.errors import UsageError
from gemma_cli.pair import ModelPair

#: Draft sources a caller may ask for: `auto` (the pair's own drafter), then the engine's, richest first.
DRAFT_CHOICES = ("auto", *reversed(limits.DRAFT_SOURCES))

# Gemma's published generation config (as Ollama's gemma3 Modelfile uses).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_K = 64
DEFAULT_TOP_P = 0.95


@dataclass(frozen=True)
class EngineChoice:
    """What the user (or a request) chose, before anything is loaded."""

    draft: str = "auto"
    draft_tokens: int | None = None
    ctx: int = 4096
    gpu_layers: int = 0
    threads: int | None = None
    rpc: str | None = None
    tensor_split: str | None = None


def draft_config(pair: ModelPair, choice: EngineChoice, workload: str = "default", option: str = "--draft"):
    """Map the draft choice and the pair's drafter onto a DraftConfig.

    `option` names the setting in messages as the caller's user knows it
    (`--draft` on the command line, `draft` in an API request).
    """
    from gemma_cli.engine import DraftConfig

    if choice.draft not in DRAFT_CHOICES:
        raise UsageError(f"{option} must be one of {', '.join(DRAFT_CHOICES)}, got {choice.draft!r}")
    source = pair.draft_source if choice.draft == "auto" else choice.draft
    if source in ("mtp", "model") and pair.drafter is None:
        if choice.draft == "auto":
            source = "ngram"
        else:
            raise UsageError(f"{pair.name} has no drafter model for {option} {source}; use {option} ngram or none")
    if source == "mtp" and pair.draft_source != "mtp":
        raise UsageError(f"{pair.name}'s drafter is not a Gemma 4 MTP assistant; use {option} model")
    tokens = choice.draft_tokens if choice.draft_tokens is not None else pair.draft_tokens_for(workload)
    limits.check_draft_tokens(tokens)
    model_path = pair.drafter if source in ("mtp", "model") else None
    return DraftConfig(source=source, tokens=tokens, model_path=model_path)


def open_engine(pair: ModelPair, choice: EngineChoice, workload: str = "default", option: str = "--draft"):
    """Load the pair with the chosen draft source (imports llama.cpp only now)."""
    from gemma_cli.engine import Engine, EngineConfig

    limits.check_n_ctx(choice.ctx, "--ctx" if option.startswith("--") else "num_ctx")
    limits.check_threads(choice.threads, "--threads")
    if choice.tensor_split and not choice.rpc:
        raise UsageError("--tensor-split only applies with --rpc")
    if choice.rpc and choice.gpu_layers:
        raise UsageError("--gpu-layers does not combine with --rpc; shape the split with --tensor-split")
    draft = draft_config(pair, choice, workload, option)
    config = EngineConfig(
        n_ctx=choice.ctx, n_gpu_layers=choice.gpu_layers, n_threads=choice.threads, rpc=choice.rpc or None, tensor_split=choice.tensor_split
    )
    engine = Engine(pair.target, draft, config)
    from gemma_cli import pass_cost_cache

    engine.costs_seeded = pass_cost_cache.attach(engine, pair.target)
    return engine
