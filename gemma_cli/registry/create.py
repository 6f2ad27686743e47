"""`gemma create`: a custom target/drafter pair from local files or hf:// URIs.

Like an Ollama Modelfile with FROM and DRAFT: files are checked (valid GGUF,
compatible vocabularies) *before* anything is copied, then copied into
content-addressed blobs, and the manifest is written last.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gemma_cli.compat import check_pair, draft_source_for
from gemma_cli.errors import IncompatibleModelsError, ModelFileError, UsageError
from gemma_cli.gguf_meta import GGUFInfo, read_gguf
from gemma_cli.pair import MAX_DRAFT_TOKENS, MIN_DRAFT_TOKENS, NGRAM_DRAFT_TOKENS
from gemma_cli.preflight import check_header
from gemma_cli.registry.catalog import FileSpec, load_catalog
from gemma_cli.registry.pull import NullProgress, PullProgress, abort_progress, fetch_layer
from gemma_cli.store import blobs
from gemma_cli.store.atomic import file_lock
from gemma_cli.store.layout import Layout
from gemma_cli.store.manifest import Layer, Manifest, now_iso
from gemma_cli.store.names import ModelRef
from gemma_cli.store.store import drop_unreferenced, load, save


def parse_hf_uri(uri: str) -> FileSpec:
    """hf://owner/repo/path/to/file.gguf[@revision] -> FileSpec."""
    rest = uri[len("hf://"):]
    rest, _, revision = rest.partition("@")
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts) or any(p in (".", "..") for p in parts):
        raise UsageError(f"invalid Hugging Face URI {uri!r}: expected hf://owner/repo/file.gguf")
    return FileSpec("/".join(parts[:2]), "/".join(parts[2:]), revision or "main")


def _source(src: str, layout: Layout, progress: PullProgress, label: str,
            fetched: list[str] | None = None) -> tuple[GGUFInfo, str, str]:
    """(header, digest, provenance) for a local path or hf:// URI, the file placed in the store.

    A download this call made is added to `fetched`, so a refused pair can take it back out of the store. The
    header is named by the URI's file name, not the blob's hash, so a refusal says which file it means.
    """
    if src.startswith("hf://"):
        spec = parse_hf_uri(src)
        layer, got = fetch_layer(spec, layout, progress, label)
        if got and fetched is not None:
            fetched.append(layer.digest)
        info = read_gguf(layout.blob(layer.digest))
        return replace(info, path=Path(spec.file.split("/")[-1])), layer.digest, layer.source
    path = Path(src).expanduser()
    return read_gguf(path), "", str(path.resolve())  # read_gguf says what a path that is no file is


def create(name: str, target: str, draft: str | None = None, *, draft_tokens: int | None = None,
           progress: PullProgress | None = None, layout: Layout | None = None) -> Manifest:
    """Validate, copy into blobs, write the manifest; refuses incompatible pairs with the reason."""
    progress = progress or NullProgress()
    layout = layout or Layout.default()
    catalog = load_catalog()
    ref = catalog.ref(name)
    if catalog.get(ref, follow_latest=False) is not None:  # family:latest stays a name of your own, found first
        raise UsageError(
            f"{ref} is a catalog model's name and `gemma pull` owns it; choose another name, e.g. my-{ref.family}:{ref.tag}"
        )
    draft = draft or "ngram"
    if draft_tokens is not None and not MIN_DRAFT_TOKENS <= draft_tokens <= MAX_DRAFT_TOKENS:
        raise UsageError(f"draft length must be between {MIN_DRAFT_TOKENS} and {MAX_DRAFT_TOKENS}, got {draft_tokens}")
    fetched: list[str] = []
    try:
        with file_lock(layout.store_lock, shared=True), file_lock(layout.model_lock(ref)):
            return _create(ref, target, draft, draft_tokens, layout, progress, fetched)
    except (UsageError, ModelFileError, IncompatibleModelsError):  # refused: a download of its own is not kept
        if fetched:
            drop_unreferenced(layout, fetched)
        raise


def _create(ref: ModelRef, target: str, draft: str, draft_tokens: int | None, layout: Layout, progress: PullProgress,
            fetched: list[str]) -> Manifest:
    """`create` under the store's shared lock and the model's lock."""
    t_info, t_digest, t_src = _source(target, layout, progress, f"{ref} target", fetched)
    check_header(t_info)  # before copying: a file llama.cpp would abort on is refused now
    d_info = d_digest = d_src = None
    if draft not in ("ngram", "none"):
        d_info, d_digest, d_src = _source(draft, layout, progress, f"{ref} drafter", fetched)
        check_header(d_info)
        check_pair(t_info, d_info)
    t_layer = _store(t_info, t_digest, t_src, layout, progress, f"{ref} target")
    d_layer = _store(d_info, d_digest, d_src, layout, progress, f"{ref} drafter") if d_info else None
    old = load(ref, layout)
    source = draft_source_for(d_layer.architecture if d_layer else None, draft)
    manifest = Manifest(
        name=str(ref),
        target=t_layer,
        drafter=d_layer,
        draft_source=source,
        draft_tokens=draft_tokens or (NGRAM_DRAFT_TOKENS if source in ("ngram", "none") else 4),
        quantization=t_info.quantization,
        tuned=dict(old.tuned) if old and old.target == t_layer else {},
        created=now_iso(),
        catalog=False,
    )
    save(manifest, ref, layout)
    return manifest


def _store(info: GGUFInfo, digest: str, src: str, layout: Layout, progress: PullProgress, label: str) -> Layer:
    if not digest:  # a local file: copy it in, hashing as we go
        progress.start(label, info.file_size, 0)
        try:
            digest, _ = blobs.ingest_file(layout, info.path, progress.advance)
        except BaseException:
            abort_progress(progress, "interrupted; nothing was kept, run the command again")
            raise
        progress.finish()
    return Layer(digest, layout.blob(digest).stat().st_size, info.path.name if not src.startswith("hf://") else src.split("/")[-1].split("@")[0],
                 src, info.architecture)
