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
from gemma_cli.store.names import ModelRef

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def digest_hex(digest: str) -> str:
    """'sha256:<hex>' -> '<hex>' (validated: digests come from JSON files and servers)."""
    hexpart = digest.split(":", 1)[1] if digest.startswith("sha256:") else digest
    if not _HEX64.match(hexpart):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexpart


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def default(cls) -> "Layout":
        return cls(config.models_dir())

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
