"""Models in the store, by the names users type: remove, verify, record tuned draft lengths.

The store works on parsed `ModelRef`s; this layer turns names into refs
with the catalog's default tags and names close matches when one is wrong.
"""

from __future__ import annotations

from gemma_cli.errors import GemmaError, ModelNotFoundError
from gemma_cli.pair import MAX_DRAFT_TOKENS, MIN_DRAFT_TOKENS
from gemma_cli.registry.catalog import in_catalog, load_catalog
from gemma_cli.registry.resolve import stored_ref
from gemma_cli.store.cleanup import Leftover, sweep
from gemma_cli.store.layout import Layout
from gemma_cli.store.manifest import now_iso
from gemma_cli.store.store import delete, iter_manifests, set_tuned
from gemma_cli.store.verify import BlobReport, verify_refs


def remove(names: list[str], layout: Layout | None = None) -> list[tuple[str, int]]:
    """Remove models by name; returns [(name, bytes freed in total)] after GC.

    Every name is checked before anything is deleted, so a typo removes nothing.
    """
    layout = layout or Layout.default()
    catalog = load_catalog()
    refs = [stored_ref(n, layout) for n in names]  # an alias or family:latest: the model pull stored
    for name, ref in zip(names, refs, strict=False):
        if not layout.manifest(ref).exists():
            have = [str(r) for r, _ in iter_manifests(layout)]
            raise ModelNotFoundError(f"model {name!r} is not in the store{catalog.suggest(name, have) if have else ''}")
    refs = list(dict.fromkeys(refs))  # a model named twice (`rm a a`, `rm gemma3 gemma3:270m`) is removed and reported once
    freed = delete(refs, layout)
    return [(str(ref), freed) for ref in refs]


def verify(names: list[str] | None = None, layout: Layout | None = None) -> list[BlobReport]:
    """Re-hash every blob of the named models (all models when none are named)."""
    layout = layout or Layout.default()
    refs = [stored_ref(n, layout) for n in names] if names else None
    return verify_refs(refs, layout)


def record_tuned(name: str, workload: str, draft_tokens: int, draft_source: str | None = None) -> None:
    """Store a `gemma bench --tune` result in the model's manifest (atomically, under its lock)."""
    if not isinstance(draft_tokens, int) or not MIN_DRAFT_TOKENS <= draft_tokens <= MAX_DRAFT_TOKENS:
        raise GemmaError(f"tuned draft length must be between {MIN_DRAFT_TOKENS} and {MAX_DRAFT_TOKENS}, got {draft_tokens!r}")
    entry: dict[str, object] = {"draft_tokens": draft_tokens, "at": now_iso()}
    if draft_source:
        entry["draft_source"] = draft_source
    set_tuned(stored_ref(name), workload, entry, Layout.default())


def sweep_leftovers(layout: Layout | None = None, *, remove: bool = True) -> list[Leftover]:
    """Temporary files of killed processes (removed) and stale partial downloads (reported)."""
    return sweep(layout or Layout.default(), remove=remove)


def repair_hint(report: BlobReport) -> str:
    """What fixes a bad blob: pull a catalog model again, re-create a custom one from its source."""
    if report.role == "manifest":  # unreadable: the store cannot say where it came from, the catalog can
        if in_catalog(report.model, follow_latest=False):
            return f"run `gemma pull {report.model}` to repair"
        return f"`gemma rm {report.model}`, then re-create it with `gemma create {report.model} --target FILE.gguf`"
    if report.catalog:
        return f"run `gemma pull {report.model}` to repair"
    source = report.source if report.source and not report.source.startswith("package:") else "ITS_SOURCE.gguf"
    return (f"{report.model} is a custom model: re-create it from its source with "
            f"`gemma create {report.model} --target {source}` (add the same --draft as before)")
