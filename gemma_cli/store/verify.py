"""`gemma verify`: re-hash every blob of the given models (or of all) against its name.

Takes parsed refs: turning user-typed names into refs (default tags) is the registry's job.
"""

from __future__ import annotations

from dataclasses import dataclass

from gemma_cli.errors import GemmaError, ModelNotFoundError
from gemma_cli.store import blobs
from gemma_cli.store.layout import Layout, digest_hex
from gemma_cli.store.manifest import Manifest
from gemma_cli.store.names import ModelRef
from gemma_cli.store.store import list_models


@dataclass(frozen=True)
class BlobReport:
    model: str
    role: str  # "target" | "drafter" | "manifest"
    digest: str
    status: str  # ok | missing | truncated | corrupt | unreadable manifest
    catalog: bool = True  # pulled from the catalog (repair: pull) or created (repair: create again)
    source: str = ""  # where the file came from (a path, hf://…, package:…)


def verify_refs(refs: list[ModelRef] | None, layout: Layout) -> list[BlobReport]:
    """Full re-hash of the blobs of `refs` (None or empty: every model in the store)."""
    models = list_models(layout)
    if refs:
        wanted = {str(ref) for ref in refs}
        have = {str(ref) for ref, _ in models}
        missing = sorted(wanted - have)
        if missing:
            raise ModelNotFoundError(f"model {missing[0]!r} is not in the store")
        models = [(ref, m) for ref, m in models if str(ref) in wanted]
    reports: list[BlobReport] = []
    for ref, manifest in models:
        if isinstance(manifest, GemmaError):
            reports.append(BlobReport(str(ref), "manifest", "", "unreadable manifest"))
            continue
        assert isinstance(manifest, Manifest)
        for role, layer in (("target", manifest.target), ("drafter", manifest.drafter)):
            if layer is None:
                continue
            status = blobs.blob_status(layout, layer.digest, layer.size, full=True)
            reports.append(BlobReport(str(ref), role, digest_hex(layer.digest), status, manifest.catalog, layer.source))
    return reports
