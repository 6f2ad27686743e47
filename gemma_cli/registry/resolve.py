"""Turn a model name (or a .gguf path) into a runnable `ModelPair`.

Resolving never touches the network. The offline default, `gemma3:270m`,
is materialised from its pip package the first time it is asked for.
Each blob is checked on the way (size always; sha256 when the file changed
since it last hashed clean), so a corrupted store fails with a clear error
instead of a crash inside llama.cpp.
"""

from __future__ import annotations

from pathlib import Path

from gemma_cli.errors import ModelFileError, ModelNotFoundError
from gemma_cli.pair import NGRAM_DRAFT_TOKENS, ModelPair
from gemma_cli.registry.catalog import DEFAULT_MODEL, load_catalog
from gemma_cli.registry.pull import materialise_package
from gemma_cli.store import blobs
from gemma_cli.store.layout import Layout
from gemma_cli.store.manifest import Manifest
from gemma_cli.store.store import iter_manifests, load


def _looks_like_path(name: str) -> bool:
    return name.endswith(".gguf") or "/" in name or "\\" in name or name.startswith((".", "~"))


def pair_from_manifest(manifest: Manifest, layout: Layout) -> ModelPair:
    target = blobs.check_blob(layout, manifest.target.digest, manifest.target.size, manifest.name)
    drafter = None
    if manifest.drafter:
        drafter = blobs.check_blob(layout, manifest.drafter.digest, manifest.drafter.size, manifest.name)
    tuned = {w: int(v["draft_tokens"]) for w, v in manifest.tuned.items() if isinstance(v.get("draft_tokens"), int)}
    return ModelPair(
        name=manifest.name,
        target=target,
        drafter=drafter,
        draft_source=manifest.draft_source,
        draft_tokens=manifest.draft_tokens,
        tuned=tuned,
    )


def resolve_model(name: str | None) -> ModelPair:
    """Resolve `name` (None: the default model) to files on disk; see the module doc."""
    name = name or DEFAULT_MODEL
    if _looks_like_path(name):
        path = Path(name).expanduser()
        if path.suffix == ".gguf" and path.is_file():
            return ModelPair(name=path.name, target=path, draft_source="ngram", draft_tokens=NGRAM_DRAFT_TOKENS)
        if path.suffix == ".gguf" or not path.exists():
            raise ModelFileError(f"model file not found: {name}")
        raise ModelFileError(f"not a .gguf file: {name}")
    layout = Layout.default()
    catalog = load_catalog()
    ref = catalog.ref(name)
    manifest = load(ref, layout)
    entry = catalog.get(ref)
    if manifest is None and entry is not None and entry.package:
        manifest = materialise_package(ref, entry, layout)
    if manifest is None:
        if entry is not None:
            raise ModelNotFoundError(f"model {ref} is not pulled yet; run `gemma pull {ref}`")
        have = [str(r) for r, _ in iter_manifests(layout)]
        raise ModelNotFoundError(f"unknown model {name!r}{catalog.suggest(name, have)}")
    return pair_from_manifest(manifest, layout)
