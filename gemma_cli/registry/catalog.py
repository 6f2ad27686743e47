"""The model catalog: `family:tag` -> target and drafter files on the Hub.

The catalog is data (`gemma_cli/data/catalog.json`), not code. `GEMMA_CATALOG`
points at another JSON file of the same shape, which replaces it (tests use
this to pull synthetic GGUFs from a local server; users can pin mirrors).
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from gemma_cli.errors import GemmaError, ModelNotFoundError
from gemma_cli.pair import MAX_DRAFT_TOKENS, MIN_DRAFT_TOKENS
from gemma_cli.store.names import DEFAULT_TAG, ModelRef, parse_name, split_family

DEFAULT_MODEL = "gemma3:270m"


class CatalogError(GemmaError):
    """The catalog file is malformed."""


@dataclass(frozen=True)
class FileSpec:
    """A file in a Hugging Face repository."""

    repo: str
    file: str
    revision: str = "main"

    @property
    def uri(self) -> str:
        return f"hf://{self.repo}/{self.file}"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    target: FileSpec
    drafter: FileSpec | None = None
    draft_source: str = "ngram"
    draft_tokens: int = 4
    quantization: str = "unknown"
    approx_size_gb: float | None = None
    package: str | None = None  # a pip package that bundles the target (offline)
    description: str = ""
    aliases: tuple[str, ...] = ()
    unconfirmed: tuple[str, ...] = ()  # fields not checked against the published repo
    draft_advice: str = ""  # why this draft length, and where it was measured (`gemma show` prints it)


@dataclass(frozen=True)
class Catalog:
    entries: dict[str, CatalogEntry]
    default_tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def ref(self, name: str) -> ModelRef:
        """Validate a name and fill its family's default tag."""
        family, _ = split_family(name)
        return parse_name(name, self.default_tags.get(family))

    def get(self, ref: ModelRef, *, follow_latest: bool = True) -> CatalogEntry | None:
        """The entry `ref` names: its own, an alias's, or for `family:latest` the family's default tag's (as Ollama
        reads `gemma3` and `gemma3:latest` alike). A user's own model of that name is the store's to find first, so
        what asks about a stored model's own name (create, repair hints, show) passes `follow_latest=False`."""
        key = str(ref)
        key = self.aliases.get(key, key)
        if follow_latest and key not in self.entries and ref.tag == DEFAULT_TAG and ref.family in self.default_tags:
            key = f"{ref.family}:{self.default_tags[ref.family]}"
        return self.entries.get(key)

    def canonical(self, ref: ModelRef) -> ModelRef:
        """The name `pull` stores `ref`'s entry under (an alias's or `family:latest`'s target); `ref` when not in the catalog."""
        entry = self.get(ref)
        return ref if entry is None else self.ref(entry.name)

    def lookup(self, name: str) -> CatalogEntry:
        """The entry for `name`, or ModelNotFoundError with the closest names."""
        ref = self.ref(name)
        entry = self.get(ref)
        if entry is None:
            raise ModelNotFoundError(f"unknown model {name!r}{self.suggest(name)}")
        return entry

    def names(self) -> list[str]:
        return sorted(set(self.entries) | set(self.aliases))

    def suggest(self, name: str, extra: list[str] | None = None) -> str:
        """'; did you mean X, Y?' built with difflib, or a pointer to the catalog."""
        pool = [n for n in dict.fromkeys(self.names() + list(extra or [])) if n != name.lower()]
        family, _ = split_family(name)
        kin = [n for n in pool if n.startswith(family + ":")]  # the family's own tags first: gemma3:1b -> gemma3:270m
        close = difflib.get_close_matches(name.lower(), kin, n=3, cutoff=0.0) if kin else []
        close = close or difflib.get_close_matches(name.lower(), pool, n=3, cutoff=0.5)
        if close:
            return "; did you mean " + ", ".join(close) + "?"
        return "; `gemma list --available` shows the catalog"


def _spec(data: Any, where: str) -> FileSpec:
    if not isinstance(data, dict) or not isinstance(data.get("repo"), str) or not isinstance(data.get("file"), str):
        raise ValueError(f"{where} needs 'repo' and 'file'")
    return FileSpec(data["repo"], data["file"], str(data.get("revision", "main")))


def parse_catalog(data: Any) -> Catalog:
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ValueError("expected an object with a 'models' object")
    entries: dict[str, CatalogEntry] = {}
    aliases: dict[str, str] = {}
    for name, raw in data["models"].items():
        ref = parse_name(name)
        key = str(ref)
        if not isinstance(raw, dict):
            raise ValueError(f"{name} is not an object")
        tokens = raw.get("draft_tokens", 4)
        if not isinstance(tokens, int) or not MIN_DRAFT_TOKENS <= tokens <= MAX_DRAFT_TOKENS:
            raise ValueError(f"{name}.draft_tokens must be {MIN_DRAFT_TOKENS}..{MAX_DRAFT_TOKENS}")
        entry = CatalogEntry(
            name=key,
            target=_spec(raw.get("target"), f"{name}.target"),
            drafter=_spec(raw["drafter"], f"{name}.drafter") if raw.get("drafter") else None,
            draft_source=str(raw.get("draft_source", "mtp" if raw.get("drafter") else "ngram")),
            draft_tokens=tokens,
            quantization=str(raw.get("quantization", "unknown")),
            approx_size_gb=float(raw["approx_size_gb"]) if raw.get("approx_size_gb") is not None else None,
            package=raw.get("package"),
            description=str(raw.get("description", "")),
            aliases=tuple(str(parse_name(a)) for a in raw.get("aliases", [])),
            unconfirmed=tuple(str(u) for u in raw.get("unconfirmed", [])),
            draft_advice=str(raw.get("draft_advice", "")),
        )
        entries[key] = entry
        for alias in entry.aliases:
            aliases[alias] = key
    defaults = data.get("default_tags", {})
    if not isinstance(defaults, dict):
        raise ValueError("'default_tags' must be an object")
    return Catalog(entries, {str(k).lower(): str(v).lower() for k, v in defaults.items()}, aliases)


@lru_cache(maxsize=8)
def _load(source: str) -> Catalog:
    try:
        if source == "<builtin>":
            text = resources.files("gemma_cli").joinpath("data/catalog.json").read_text(encoding="utf-8")
        else:
            text = Path(source).read_text(encoding="utf-8")
        return parse_catalog(json.loads(text))
    except OSError as exc:
        raise CatalogError(f"cannot read the model catalog {source}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, GemmaError) as exc:
        raise CatalogError(f"malformed model catalog {source}: {exc}") from None


def load_catalog() -> Catalog:
    """The catalog in effect: `$GEMMA_CATALOG` if set, else the packaged one."""
    return _load(os.environ.get("GEMMA_CATALOG") or "<builtin>")


def in_catalog(name: str, *, follow_latest: bool = True) -> bool:
    """Can `gemma pull` fetch `name`? False for custom names, bad names and an unreadable catalog.

    `follow_latest=False`: only the catalog's own names and aliases, not `family:latest` (a stored model of that
    name is the user's own, which pull would not repair).
    """
    try:
        catalog = load_catalog()
        return catalog.get(catalog.ref(name), follow_latest=follow_latest) is not None
    except GemmaError:
        return False
