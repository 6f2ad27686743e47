"""Model names: `family:tag`, validated before they ever touch a path.

Names become file paths in the store (`manifests/<family>/<tag>.json`), so
anything that could escape it (`../`, `/`, NUL, control characters) is
refused with a one-line error. Names are case-insensitive, like Ollama's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gemma_cli.errors import InvalidModelNameError

_PART = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class ModelRef:
    family: str
    tag: str

    def __str__(self) -> str:
        return f"{self.family}:{self.tag}"


def _part_ok(part: str) -> bool:
    return bool(_PART.match(part)) and ".." not in part


def _check_part(part: str, what: str, raw: str) -> str:
    if not _part_ok(part):
        raise InvalidModelNameError(
            f"invalid model name {raw!r}: the {what} must be 1-64 characters of a-z, 0-9, '.', '_' or '-' "
            "(starting with a letter or digit, no '..')"
        )
    return part


def is_stored_name(family: str, tag: str) -> bool:
    """Could gemma have written a manifest under these folder and file names (lowercase `parse_name` parts)?

    The store's folders are untrusted: a folder named `$(touch x)` is not a model, and its name
    must never reach a shell completion, a listing or a path.
    """
    return _part_ok(family) and _part_ok(tag)


def parse_name(name: str, default_tag: str | None = None) -> ModelRef:
    """Parse `family[:tag]`; `default_tag` (or 'latest') fills a missing tag."""
    raw = name
    if not isinstance(name, str) or not name.strip():
        raise InvalidModelNameError("empty model name")
    if len(name) > 200:
        raise InvalidModelNameError(
            f"invalid model name {raw[:40]!r}… ({len(name)} characters): a name is family:tag, each part at most 64 characters"
        )
    if any(ord(c) < 32 or c in "/\\" for c in name):
        raise InvalidModelNameError(
            f"invalid model name {raw[:80]!r}: names are family:tag and may not contain '/', '\\' or control characters"
        )
    name = name.strip().lower()
    family, sep, tag = name.partition(":")
    if sep and not tag:
        raise InvalidModelNameError(f"invalid model name {raw!r}: empty tag after ':'")
    _check_part(family, "family", raw)
    tag = tag or default_tag or DEFAULT_TAG
    _check_part(tag, "tag", raw)
    return ModelRef(family, tag)


def split_family(name: str) -> tuple[str, str | None]:
    """`family[:tag]` -> (family, tag or None), lower-cased, without validation."""
    family, _, tag = name.strip().lower().partition(":")
    return family, tag or None
