"""The local model store: manifests naming content-addressed GGUF blobs.

Public entry points: `resolve_model` (name or path -> ModelPair, no network)
and `record_tuned` (bench --tune results into a manifest).
"""

from gemma_cli.store.resolve import resolve_model
from gemma_cli.store.store import record_tuned

__all__ = ["resolve_model", "record_tuned"]
