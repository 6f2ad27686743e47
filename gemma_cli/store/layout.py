"""Where things live inside the store root (`gemma_cli.config.models_dir()`).

    <root>/manifests/<family>/<tag>.json   one JSON manifest per model
    <root>/blobs/sha256-<hex>              content-addressed GGUF files, shared by models
    <root>/blobs/sha256-<hex>.partial      an interrupted download, resumed by the next pull
    <root>/verified/sha256-<hex>           (size, mtime, inode) when the blob last hashed clean
    <root>/locks/...                       flock files (model, blob, store)

Blobs live in our store, not in the Hugging Face cache: `rm` and `verify`
then reason about one directory, and no other tool can delete a blob a
manifest still needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gemma_cli import config
from gemma_cli.errors import GemmaError
from gemma_cli.store.names import ModelRef

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def digest_hex(digest: str) -> str:
    """'sha256:<hex>' -> '<hex>' (validated: digests come from JSON files and servers)."""
    hexpart = digest.split(":", 1)[1] if digest.startswith("sha256:") else digest
    if not _HEX64.match(hexpart):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexpart


class StoreRootError(GemmaError):
    """The store root (GEMMA_MODELS) is a file, or lies under one."""


def check_root(root: Path) -> None:
    """Refuse a store root that is not a directory (or whose nearest existing ancestor is not).

    Checked where the root is resolved, so every command says the same one line
    instead of listing nothing or failing later with NotADirectoryError.
    """
    for candidate in (root, *root.parents):
        try:
            if not candidate.exists():
                continue
        except OSError:
            continue
        if candidate.is_dir():
            return
        what = "a regular file" if candidate.is_file() else "not a directory"
        where = f"{root} is {what}" if candidate == root else f"{root} is inside {candidate}, which is {what}"
        raise StoreRootError(f"the model store {where}; set GEMMA_MODELS to a directory, e.g. export GEMMA_MODELS=~/gemma-models")


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def default(cls) -> "Layout":
        """The store at `config.models_dir()`, refused at once when it cannot be a directory."""
        root = config.models_dir()
        check_root(root)
        return cls(root)

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    def manifest(self, ref: ModelRef) -> Path:
        return self.manifests / ref.family / f"{ref.tag}.json"

    def blob(self, digest: str) -> Path:
        return self.blobs / f"sha256-{digest_hex(digest)}"

    def partial(self, key: str) -> Path:
        return self.blobs / f"sha256-{key}.partial"

    def stamp(self, digest: str) -> Path:
        return self.root / "verified" / f"sha256-{digest_hex(digest)}"

    def model_lock(self, ref: ModelRef) -> Path:
        return self.locks / f"model-{ref.family}-{ref.tag}.lock"

    def blob_lock(self, key: str) -> Path:
        return self.locks / f"blob-{key}.lock"

    @property
    def store_lock(self) -> Path:
        return self.locks / "store.lock"
