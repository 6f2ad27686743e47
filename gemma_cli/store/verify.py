"""`gemma verify`: re-hash every blob of the given models (or of all) against its name."""

from __future__ import annotations

from dataclasses import dataclass

from gemma_cli.errors import GemmaError, ModelNotFoundError
from gemma_cli.store import blobs
from gemma_cli.store.layout import Layout, digest_hex
from gemma_cli.store.manifest import Manifest
from gemma_cli.store.store import list_models


@dataclass(frozen=True)
class BlobReport:
    model: str
    role: str  # "target" | "drafter" | "manifest"
    digest: str
    status: str  # ok | missing | truncated | corrupt | unreadable manifest


def verify(names: list[str] | None = None, layout: Layout | None = None) -> list[BlobReport]:
    from gemma_cli.registry.catalog import load_catalog

    layout = layout or Layout.default()
    models = list_models(layout)
    if names:
        catalog = load_catalog()
        wanted = {str(catalog.ref(n)) for n in names}
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
            reports.append(BlobReport(str(ref), role, digest_hex(layer.digest), status))
    return reports
