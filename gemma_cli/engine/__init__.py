"""The engine's public names, in one place for the CLI, the benchmark and the coming server.

    from gemma_cli.engine import Engine, DraftConfig, EngineConfig, SamplingParams

Names resolve lazily (PEP 562): importing this package costs nothing, and
llama.cpp loads only when a model does, so `gemma --help` never pays for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Engine": "generate",
    "DraftConfig": "generate",
    "EngineConfig": "generate",
    "check_before_load": "generate",
    "Generation": "generation",
    "BatchScheduler": "batch",
    "CacheSlot": "generation",
    "SamplingParams": "sampling",
    "TokenSampler": "sampling",
    "Piece": "types",
    "StopReason": "types",
    "LiveStats": "types",
    "GenerationResult": "types",
    "Model": "llama",
    "Context": "llama",
    "DecodeTimer": "llama",
    "default_threads": "llama",
}

__all__ = [
    "BatchScheduler",
    "CacheSlot",
    "Context",
    "DecodeTimer",
    "DraftConfig",
    "Engine",
    "EngineConfig",
    "Generation",
    "GenerationResult",
    "LiveStats",
    "Model",
    "Piece",
    "SamplingParams",
    "StopReason",
    "TokenSampler",
    "check_before_load",
    "default_threads",
]

if TYPE_CHECKING:  # pragma: no cover
    from gemma_cli.engine.batch import BatchScheduler
    from gemma_cli.engine.generate import DraftConfig, Engine, EngineConfig, check_before_load
    from gemma_cli.engine.generation import CacheSlot, Generation
    from gemma_cli.engine.llama import Context, DecodeTimer, Model, default_threads
    from gemma_cli.engine.sampling import SamplingParams, TokenSampler
    from gemma_cli.engine.types import GenerationResult, LiveStats, Piece, StopReason


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:  # AttributeError lets `from gemma_cli.engine import llama` import the submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
