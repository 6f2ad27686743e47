"""Pull orchestration: catalog entry -> blobs (downloaded or bundled) -> manifest last.

Locks: the store lock (shared) for the whole pull so `rm` cannot collect a
fresh blob before its manifest exists; the model lock so a second
`gemma pull` of the same model waits and then finds it complete; a blob lock
around each download so two models sharing a file fetch it once.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Protocol

from gemma_cli.compat import draft_source_for
from gemma_cli.errors import DownloadError, GemmaError, ModelFileError
from gemma_cli.registry import hub
from gemma_cli.registry.catalog import CatalogEntry, FileSpec, load_catalog
from gemma_cli.store import blobs
from gemma_cli.store.atomic import file_lock
from gemma_cli.store.layout import Layout
from gemma_cli.store.manifest import Layer, Manifest, now_iso
from gemma_cli.store.names import ModelRef
from gemma_cli.store.store import list_models, load, save


class PullProgress(Protocol):
    """Callbacks a renderer implements; the registry never prints."""

    def start(self, label: str, total: int | None, completed: int = 0) -> None: ...
    def advance(self, n: int) -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    def start(self, label: str, total: int | None, completed: int = 0) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def abort(self, note: str) -> None:
        """The transfer ended without completing (error, Ctrl-C): leave the bar where it stopped."""


def abort_progress(progress: PullProgress, note: str) -> None:
    """Call `progress.abort(note)` when the renderer has it (older ones only know `finish`)."""
    abort = getattr(progress, "abort", None)
    if callable(abort):
        abort(note)


@dataclass(frozen=True)
class PullResult:
    manifest: Manifest
    downloaded: int  # bytes fetched over the network by this call
    up_to_date: bool
    from_package: str | None = None  # the pip package a bundled model came from

    def summary(self) -> dict[str, object]:
        """What `gemma pull` reports, as data (`gemma serve` sends it with its last progress line)."""
        m = self.manifest
        return {"name": m.name, "up_to_date": self.up_to_date, "from_package": self.from_package,
                "downloaded": self.downloaded, "target": m.target.filename,
                "drafter": m.drafter.filename if m.drafter else None, "draft_source": m.draft_source, "size": m.size}


def architecture_of(path) -> str:
    from gemma_cli.gguf_meta import read_gguf

    return read_gguf(path).architecture


def fetch_layer(spec: FileSpec, layout: Layout, progress: PullProgress, label: str) -> tuple[Layer, int]:
    """Make sure the blob for a Hub file is in the store; returns (layer, bytes downloaded)."""
    remote = hub.file_info(spec.repo, spec.file, spec.revision)
    with file_lock(layout.blob_lock(remote.key)):
        if remote.sha256:
            digest = "sha256:" + remote.sha256
            status = blobs.blob_status(layout, digest, remote.size)
            if status == "ok":
                return _layer(digest, remote, layout), 0
            if status != "missing":
                blobs.remove_blob(layout, digest)  # corrupt or truncated: fetch again
        else:
            stored = _stored_copy(remote, layout)
            if stored is not None:
                return _layer(stored, remote, layout), 0
        partial = layout.partial(remote.key)
        have = partial.stat().st_size if partial.exists() else 0
        progress.start(label, remote.size, have)
        try:
            hub.download(remote, partial, progress.advance)
        except BaseException:
            abort_progress(progress, "interrupted; run the same command to resume")
            raise
        progress.finish()
        got = (partial.stat().st_size if partial.exists() else 0) - have
        actual = hub.verify_partial(remote, partial)
        digest = "sha256:" + actual
        blobs.commit(layout, partial, digest)
        return _layer(digest, remote, layout), max(got, 0)


def _stored_copy(remote: hub.RemoteFile, layout: Layout) -> str | None:
    """The digest of a blob a stored model fetched from the same file at the same commit, for a file the Hub names no
    sha256 for (not in LFS, or a mirror that leaves the header out); None when there is none, or no commit pins it.

    Why: without a sha256 to look the blob up by, every pull downloaded such a file again (probe, session 18). A
    commit fixes a file's bytes, so the copy a manifest records for `hf://repo/file@commit` is that file.
    """
    if not remote.commit:
        return None
    for _, manifest in list_models(layout):
        if not isinstance(manifest, Manifest):
            continue
        for layer in manifest.layers:
            if (layer.source == remote.source and (remote.size is None or layer.size == remote.size)
                    and blobs.blob_status(layout, layer.digest, layer.size) == "ok"):
                return layer.digest
    return None


def _layer(digest: str, remote: hub.RemoteFile, layout: Layout) -> Layer:
    path = layout.blob(digest)
    try:
        arch = architecture_of(path)
    except ModelFileError:
        blobs.remove_blob(layout, digest)
        raise ModelFileError(f"{remote.repo}/{remote.filename} is not a valid GGUF file; it was removed from the store") from None
    return Layer(digest, path.stat().st_size, remote.filename, remote.source, arch)


def _complete(manifest: Manifest | None, layout: Layout) -> bool:
    if manifest is None:
        return False
    return all(blobs.blob_status(layout, layer.digest, layer.size) == "ok" for layer in manifest.layers)


def _is_catalog_copy(manifest: Manifest | None, target: str, drafter: str | None) -> bool:
    """Does the stored manifest hold exactly the catalog's files?

    A manifest under a catalog name that points at other files (written by an
    older `gemma create`, or edited by hand) is replaced, not reported "up to date".
    """
    if manifest is None or not manifest.catalog:
        return False
    return manifest.target.digest == target and (manifest.drafter.digest if manifest.drafter else None) == drafter


def _package(entry: CatalogEntry):
    if not entry.package:
        return None
    try:
        return importlib.import_module(entry.package)
    except ImportError:
        return None


def materialise_package(ref: ModelRef, entry: CatalogEntry, layout: Layout) -> Manifest | None:
    """Assemble a bundled model into the store (no network); None when the package is absent."""
    pkg = _package(entry)
    if pkg is None:
        return None
    with file_lock(layout.store_lock, shared=True), file_lock(layout.model_lock(ref)):
        existing = load(ref, layout)
        expected = str(pkg.EXPECTED_SHA256).lower()
        digest = "sha256:" + expected
        if _complete(existing, layout) and _is_catalog_copy(existing, digest, None):
            return existing
        with file_lock(layout.blob_lock(expected)):
            if blobs.blob_status(layout, digest, None) != "ok":
                try:
                    pkg.verify_chunks()
                    sources = list(pkg.chunk_paths())
                except (FileNotFoundError, ImportError) as exc:
                    raise ModelFileError(f"the {entry.package} package is incomplete ({exc}); reinstall it") from None
                blobs.copy_chunks_into(layout, sources, expected)
        path = layout.blob(digest)
        target = Layer(digest, path.stat().st_size, str(getattr(pkg, "MODEL_NAME", entry.target.file)),
                       f"package:{entry.package}", architecture_of(path))
        manifest = _manifest(ref, entry, target, None, existing)
        save(manifest, ref, layout)
        return manifest


def _manifest(ref: ModelRef, entry: CatalogEntry, target: Layer, drafter: Layer | None, old: Manifest | None) -> Manifest:
    return Manifest(
        name=str(ref),
        target=target,
        drafter=drafter,
        draft_source=draft_source_for(drafter.architecture if drafter else None, entry.draft_source),
        draft_tokens=entry.draft_tokens,
        quantization=entry.quantization,
        tuned=dict(old.tuned) if old and old.catalog and old.target == target and old.drafter == drafter else {},
        created=now_iso(),
        catalog=True,
    )


def pull(name: str, progress: PullProgress | None = None, layout: Layout | None = None) -> PullResult:
    """Fetch a catalog model's target and drafter, verify them, then write its manifest."""
    progress = progress or NullProgress()
    layout = layout or Layout.default()
    catalog = load_catalog()
    entry = catalog.lookup(name)
    ref = catalog.ref(entry.name)
    if entry.package and _package(entry) is not None:
        before = load(ref, layout)
        manifest = materialise_package(ref, entry, layout)
        assert manifest is not None
        return PullResult(manifest, 0, before == manifest, entry.package)
    from gemma_cli.registry.hub import check_endpoint_setting

    check_endpoint_setting()  # only a download needs the Hub: a bundled model pulls with any setting
    with file_lock(layout.store_lock, shared=True), file_lock(layout.model_lock(ref)):
        existing = load(ref, layout)
        try:
            target, got_t = fetch_layer(entry.target, layout, progress, f"{ref} target")
            drafter, got_d = (None, 0)
            if entry.drafter:
                drafter, got_d = fetch_layer(entry.drafter, layout, progress, f"{ref} drafter")
        except hub.OfflineError:
            if _complete(existing, layout) and existing is not None and existing.catalog:
                assert existing is not None
                return PullResult(existing, 0, True)  # offline but complete: nothing to do
            raise
        manifest = _manifest(ref, entry, target, drafter, existing)
        same = existing is not None and existing.catalog and existing.layers == manifest.layers
        if same:
            assert existing is not None
            manifest = replace(manifest, created=existing.created)
        save(manifest, ref, layout)
        return PullResult(manifest, got_t + got_d, bool(same) and got_t + got_d == 0)


__all__ = ["pull", "PullResult", "PullProgress", "NullProgress", "materialise_package", "fetch_layer",
           "DownloadError", "GemmaError"]
