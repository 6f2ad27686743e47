"""The side-by-side benchmark's workload corpus: raw-text prompts for a base model, split tuning/validation.

Files live in benchmarks/corpus/<set>/<class>-<n>.txt. A prompt is the file's text
with trailing whitespace removed, sent as is (no chat template): a base model
continues it. Why a split: a drafter's constants fitted on the prompts that also
judge it would report a speed nobody else gets; the validation set only measures
(see benchmarks/corpus/README.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
SETS = ("tuning", "validation")
CLASSES = ("code-edit", "code-port", "code-complete", "summarize", "extract", "qa", "table", "chat", "prose")
_NAME = re.compile(r"^(?P<kind>[a-z][a-z-]*[a-z])-(?P<n>\d+)\.txt$")


class CorpusError(ValueError):
    """The corpus folder or a selection of it cannot be used."""


@dataclass(frozen=True)
class CorpusPrompt:
    """One prompt: `name` is "<set>/<class>-<n>", `kind` its class."""

    name: str
    set: str
    kind: str
    prompt: str

    @property
    def short(self) -> str:
        """The name without its set ("code-edit-1"), unique only within a set."""
        return self.name.split("/", 1)[1]


def _read(path: Path, set_name: str) -> CorpusPrompt:
    m = _NAME.match(path.name)
    if not m or m["kind"] not in CLASSES:
        raise CorpusError(f"corpus file {path} is not named <class>-<n>.txt with a class in {', '.join(CLASSES)}")
    text = path.read_text(encoding="utf-8").rstrip()
    if not text:
        raise CorpusError(f"corpus file {path} is empty")
    return CorpusPrompt(f"{set_name}/{path.stem}", set_name, m["kind"], text)


def load(set_name: str = "all", only: list[str] | None = None, root: Path = CORPUS_DIR) -> list[CorpusPrompt]:
    """Prompts of one set ("tuning", "validation") or "all", in a stable order.

    `only` keeps prompts whose name contains any of the given substrings
    (e.g. ["code-edit", "qa-2"]); no match is an error rather than an empty run.
    """
    if set_name not in SETS + ("all",):
        raise CorpusError(f"unknown set {set_name!r}; choose tuning, validation or all")
    sets = SETS if set_name == "all" else (set_name,)
    prompts: list[CorpusPrompt] = []
    for s in sets:
        folder = root / s
        if not folder.is_dir():
            raise CorpusError(f"corpus folder not found: {folder}")
        prompts += [_read(p, s) for p in sorted(folder.glob("*.txt"), key=_order)]
    if only:
        prompts = [p for p in prompts if any(part in p.name for part in only)]
        if not prompts:
            raise CorpusError(f"no corpus prompt matches {', '.join(only)}")
    return prompts


def _order(path: Path) -> tuple[int, int, str]:
    """Class order as in CLASSES, then number (so code-edit-10 follows code-edit-2)."""
    m = _NAME.match(path.name)
    if not m or m["kind"] not in CLASSES:
        return (len(CLASSES), 0, path.name)
    return (CLASSES.index(m["kind"]), int(m["n"]), path.name)
