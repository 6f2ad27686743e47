"""Manifests: the JSON file that names a model's blobs and how to draft for it.

Manifests are read back from disk, so parsing validates every field and
turns anything malformed into a one-line error instead of a KeyError.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gemma_cli.errors import ModelFileError
from gemma_cli.limits import MAX_DRAFT_TOKENS, MIN_DRAFT_TOKENS, draft_tokens_ok
from gemma_cli.store.atomic import read_small_file
from gemma_cli.store.layout import digest_hex

SCHEMA = 1


@dataclass(frozen=True)
class Layer:
    """One GGUF file of a model: its blob digest, size, and where it came from."""

    digest: str  # "sha256:<hex>"
    size: int
    filename: str
    source: str  # "hf://owner/repo/file@commit", "package:<name>" or a local path
    architecture: str = "unknown"


@dataclass(frozen=True)
class Manifest:
    name: str
    target: Layer
    drafter: Layer | None = None
    draft_source: str = "ngram"
    draft_tokens: int = 4
    quantization: str = "unknown"
    tuned: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = ""
    catalog: bool = False

    @property
    def layers(self) -> list[Layer]:
        return [self.target] + ([self.drafter] if self.drafter else [])

    @property
    def size(self) -> int:
        """Bytes on disk: a blob used as both target and drafter (`create --target X --draft X`) is stored once."""
        return sum({layer.digest: layer.size for layer in self.layers}.values())

    @property
    def id(self) -> str:
        return digest_hex(self.target.digest)[:12]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema"] = SCHEMA
        return data


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _layer(data: Any, where: str) -> Layer:
    if not isinstance(data, dict):
        raise ValueError(f"{where} is not an object")
    digest = str(data["digest"])
    digest_hex(digest)
    size = data["size"]
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"{where}.size is invalid")
    return Layer(digest, size, str(data.get("filename", "")), str(data.get("source", "")), str(data.get("architecture", "unknown")))


def parse_manifest(path: Path) -> Manifest:
    """Load and validate a manifest file."""
    try:
        data = json.loads(read_small_file(path))
        if not isinstance(data, dict):
            raise ValueError("not an object")
        tuned = data.get("tuned") or {}
        if not isinstance(tuned, dict) or not all(isinstance(v, dict) for v in tuned.values()):
            raise ValueError("tuned is invalid")
        draft_tokens = data.get("draft_tokens", 4)
        if not draft_tokens_ok(draft_tokens):  # the file's fault (exit 1), not the user's typing (exit 2)
            raise ValueError(f"draft_tokens {draft_tokens!r} is not in {MIN_DRAFT_TOKENS}..{MAX_DRAFT_TOKENS}")
        for workload, entry in tuned.items():
            if "draft_tokens" in entry and not draft_tokens_ok(entry["draft_tokens"]):
                raise ValueError(f"tuned draft_tokens for {workload!r} is not in {MIN_DRAFT_TOKENS}..{MAX_DRAFT_TOKENS}")
        return Manifest(
            name=str(data["name"]),
            target=_layer(data["target"], "target"),
            drafter=_layer(data["drafter"], "drafter") if data.get("drafter") else None,
            draft_source=str(data.get("draft_source", "ngram")),
            draft_tokens=draft_tokens,
            quantization=str(data.get("quantization", "unknown")),
            tuned=tuned,
            created=str(data.get("created", "")),
            catalog=bool(data.get("catalog", False)),
        )
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"cannot read manifest {path}: {exc}") from None
    except RecursionError:
        raise ModelFileError(f"corrupted manifest {path} (nested too deeply); remove it with `gemma rm` and pull again") from None
    except (ValueError, KeyError, TypeError) as exc:
        what = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ModelFileError(f"corrupted manifest {path} ({what}); remove it with `gemma rm` and pull again") from None
