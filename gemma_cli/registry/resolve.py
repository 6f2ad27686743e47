"""Turn a model name (or a .gguf path) into a runnable `ModelPair`.

Resolving never touches the network. The offline default, `gemma3:270m`,
is materialised from its pip package the first time it is asked for.
Each blob is checked on the way (size always; sha256 when the file changed
since it last hashed clean), so a corrupted store fails with a clear error
instead of a crash inside llama.cpp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from gemma_cli.errors import DownloadError, GemmaError, ModelFileError, ModelNotFoundError
from gemma_cli.gguf_meta import check_model_file
from gemma_cli.pair import NGRAM_DRAFT_TOKENS, ModelPair
from gemma_cli.registry.catalog import DEFAULT_MODEL, load_catalog
from gemma_cli.registry.pull import PullProgress, materialise_package, pull
from gemma_cli.store import blobs
from gemma_cli.store.layout import Layout
from gemma_cli.store.manifest import Manifest
from gemma_cli.store.names import ModelRef
from gemma_cli.store.store import iter_manifests, load
from gemma_cli.text_safety import clean_display


class NotPulledError(ModelNotFoundError):
    """A catalog model that is not in the store yet (`resolve_or_pull` pulls it)."""

    def __init__(self, message: str, *, ref: str) -> None:
        super().__init__(message)
        self.ref = ref


def looks_like_model(arg: str) -> bool:
    """Is a lone argument a model rather than a prompt?

    A path ending in .gguf, anything of the form family:tag, a catalog family
    or alias, or a name in the store. Text with spaces is always a prompt, and
    so is a word like "Summarize:" (an empty tag is not a name).
    """
    if arg.endswith(".gguf"):
        return True
    if not arg or any(c.isspace() for c in arg) or len(arg) > 200:
        return False
    try:
        catalog = load_catalog()
        ref = catalog.ref(arg)
    except GemmaError:
        return False
    if ":" in arg or catalog.get(ref) is not None:
        return True
    try:
        return Layout.default().manifest(ref).exists()
    except (GemmaError, OSError):
        return False


def resolve_or_pull(name: str | None, progress: PullProgress | None = None,
                    on_pull: Callable[[str], None] | None = None) -> ModelPair:
    """`resolve_model`, pulling a catalog model that is not in the store yet (as `ollama run` does).

    `on_pull(name)` is called before the download starts, so the caller can say so.
    """
    try:
        return resolve_model(name)
    except NotPulledError as missing:
        if on_pull is not None:
            on_pull(missing.ref)
        try:
            pull(missing.ref, progress)
        except DownloadError as exc:
            raise type(exc)(f"{missing.ref} is not pulled yet and could not be downloaded: {exc}", hint=exc.hint) from None
        return resolve_model(name)


def _looks_like_path(name: str) -> bool:
    return name.endswith(".gguf") or "/" in name or "\\" in name or name.startswith((".", "~"))


def pair_from_manifest(manifest: Manifest, layout: Layout) -> ModelPair:
    target = blobs.check_blob(layout, manifest.target.digest, manifest.target.size, manifest.name, catalog=manifest.catalog)
    drafter = None
    if manifest.drafter:
        drafter = blobs.check_blob(layout, manifest.drafter.digest, manifest.drafter.size, manifest.name, catalog=manifest.catalog)
    tuned = {w: int(v["draft_tokens"]) for w, v in manifest.tuned.items() if isinstance(v.get("draft_tokens"), int)}
    return ModelPair(
        name=manifest.name,
        target=target,
        drafter=drafter,
        draft_source=manifest.draft_source,
        draft_tokens=manifest.draft_tokens,
        tuned=tuned,
    )


def stored_ref(name: str, layout: Layout | None = None) -> ModelRef:
    """`name` as the store keeps it: itself when a model of that name is stored, else, for an alias or
    `family:latest`, the catalog entry's own name (the one `pull` stores it under), else itself.

    One rule for every place that looks a model up (run, show, rm, and the server, which keys loaded
    models by it: `gemma3:latest` and `gemma3:270m` must be one loaded model, not two).
    """
    catalog = load_catalog()
    ref = catalog.ref(name)
    if (layout or Layout.default()).manifest(ref).exists():
        return ref
    return catalog.canonical(ref)


def resolve_model(name: str | None) -> ModelPair:
    """Resolve `name` (None: the default model) to files on disk; see the module doc."""
    if name is None:
        name = DEFAULT_MODEL
    if _looks_like_path(name):
        path = Path(name).expanduser()
        if path.suffix == ".gguf":
            check_model_file(path)  # a directory, a pipe, a link loop: says so
            # the file's name is shown in banners and summaries: a name is bytes anyone could choose, ESC included
            return ModelPair(name=clean_display(path.name, limit=None), target=path, draft_source="ngram",
                             draft_tokens=NGRAM_DRAFT_TOKENS)
        if not path.exists():
            raise ModelFileError(f"model file not found: {name}")
        raise ModelFileError(f"not a .gguf file: {name}")
    layout = Layout.default()
    catalog = load_catalog()
    ref = stored_ref(name, layout)
    manifest = load(ref, layout)
    entry = catalog.get(ref)
    if manifest is None and entry is not None and entry.package:
        manifest = materialise_package(ref, entry, layout)
    if manifest is None:
        if entry is not None:
            raise NotPulledError(f"model {ref} is not pulled yet; run `gemma pull {ref}`", ref=str(ref))
        have = [str(r) for r, _ in iter_manifests(layout)]
        raise ModelNotFoundError(f"unknown model {name!r}{catalog.suggest(name, have)}")
    return pair_from_manifest(manifest, layout)
