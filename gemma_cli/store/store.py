"""The model store: list, load, save and remove manifests; garbage-collect blobs.

`rm` deletes manifests first and blobs last, and only blobs that no
remaining manifest references, under an exclusive store lock that every
pull holds shared, so a blob a pull just fetched is never collected before
its manifest exists.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from gemma_cli.errors import GemmaError, ModelNotFoundError
from gemma_cli.store import blobs
from gemma_cli.store.atomic import atomic_write_json, file_lock
from gemma_cli.store.layout import Layout, digest_hex
from gemma_cli.store.manifest import Manifest, parse_manifest
from gemma_cli.store.names import ModelRef, is_stored_name


def load(ref: ModelRef, layout: Layout | None = None) -> Manifest | None:
    layout = layout or Layout.default()
    path = layout.manifest(ref)
    if not path.exists():
        return None
    return _named(parse_manifest(path), ref)


def _named(manifest: Manifest, ref: ModelRef) -> Manifest:
    """A manifest as the model its path names: the path is how every command finds it, so it is its name.

    Why: a manifest copied by hand (`v1.json` to `v2.json`, an alias) or edited kept the `name` written
    inside, and `gemma list` showed `mine:v1` twice, one of which `gemma rm mine:v1` could not remove.
    """
    return manifest if manifest.name == str(ref) else replace(manifest, name=str(ref))


def save(manifest: Manifest, ref: ModelRef, layout: Layout | None = None) -> None:
    """Write the manifest atomically: it appears complete or not at all."""
    layout = layout or Layout.default()
    atomic_write_json(layout.manifest(ref), manifest.to_json())


def iter_manifests(layout: Layout | None = None) -> Iterator[tuple[ModelRef, Path]]:
    layout = layout or Layout.default()
    if not layout.manifests.is_dir():
        return
    for family_dir in sorted(layout.manifests.iterdir()):
        if not family_dir.is_dir():
            continue
        for path in sorted(family_dir.glob("*.json")):
            # editors' hidden files, and names gemma never writes (shell syntax, control characters), are not models
            if not path.name.startswith(".") and is_stored_name(family_dir.name, path.stem):
                yield ModelRef(family_dir.name, path.stem), path


def list_models(layout: Layout | None = None) -> list[tuple[ModelRef, Manifest | GemmaError]]:
    """Every manifest, parsed; a corrupted one is listed with its error rather than hiding the rest."""
    out: list[tuple[ModelRef, Manifest | GemmaError]] = []
    for ref, path in iter_manifests(layout):
        try:
            out.append((ref, _named(parse_manifest(path), ref)))
        except GemmaError as exc:
            out.append((ref, exc))
    return out


def referenced_digests(layout: Layout) -> set[str]:
    refs: set[str] = set()
    for _, manifest in list_models(layout):
        if isinstance(manifest, Manifest):
            refs.update(digest_hex(layer.digest) for layer in manifest.layers)
    return refs


def collect_garbage(layout: Layout) -> tuple[int, int]:
    """Delete blobs no manifest references; returns (blobs removed, bytes freed).

    Skipped (0, 0) while any pull holds the store lock: its blobs may not
    have a manifest yet. The next `rm` collects them.
    """
    removed = _collect(layout)
    return len(removed), sum(removed.values())


def _collect(layout: Layout, only: set[str] | None = None) -> dict[str, int]:
    """Delete unreferenced blobs (of `only`, hex digests, when given); returns {hex digest: bytes freed}."""
    removed: dict[str, int] = {}
    with file_lock(layout.store_lock, blocking=False) as got:
        if not got or not layout.blobs.is_dir():
            return removed
        keep = referenced_digests(layout)
        for path in layout.blobs.glob("sha256-*"):
            hexpart = path.name[len("sha256-"):]
            if path.suffix == ".partial" or len(hexpart) != 64 or hexpart in keep or (only is not None and hexpart not in only):
                continue
            removed[hexpart] = blobs.remove_blob(layout, "sha256:" + hexpart)
    return removed


def drop_unreferenced(layout: Layout, digests: list[str]) -> int:
    """Delete those of `digests` no manifest references (a refused `create`'s downloads); returns bytes freed.
    Skipped, like `collect_garbage`, while a pull holds the store lock: the next `rm` collects them."""
    return sum(_collect(layout, {digest_hex(d) for d in digests}).values())


def delete(refs: list[ModelRef], layout: Layout) -> int:
    """Delete these models' manifests, then collect unreferenced blobs.

    Returns the bytes freed by *these* models' blobs: orphans left by something
    else are collected too, but not counted as what this `rm` freed.
    """
    own: set[str] = set()
    for ref in refs:
        with contextlib.suppress(GemmaError, OSError):
            manifest = load(ref, layout)
            if manifest is not None:
                own.update(digest_hex(layer.digest) for layer in manifest.layers)
    for ref in refs:
        with file_lock(layout.model_lock(ref)):
            with contextlib.suppress(FileNotFoundError):
                layout.manifest(ref).unlink()
        with contextlib.suppress(OSError):
            layout.manifest(ref).parent.rmdir()  # only when empty
    removed = _collect(layout)
    return sum(size for hexpart, size in removed.items() if hexpart in own)


def set_tuned(ref: ModelRef, workload: str, entry: dict[str, Any], layout: Layout) -> None:
    """Record a tuning result under `workload` in the model's manifest (atomically, under its lock)."""
    with file_lock(layout.model_lock(ref)):
        manifest = load(ref, layout)
        if manifest is None:
            raise ModelNotFoundError(f"model {str(ref)!r} is not in the store; run `gemma pull {ref}` first")
        tuned = dict(manifest.tuned)
        tuned[str(workload)] = entry
        save(replace(manifest, tuned=tuned), ref, layout)
