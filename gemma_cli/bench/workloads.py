"""Benchmark workloads: built-in prompts shipped as data files, or the user's own file.

Speculative decoding's gain depends on the text: rewriting given code or
summarising a given text copies long spans (n-gram drafting shines), free
prose and chat copy little. Each built-in class exercises one of those regimes,
and `--tune` records its best draft settings under the class name.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gemma_cli.errors import UsageError

BUILTIN = ("code", "summarize", "prose", "chat")
#: Tuning class for a user-supplied workload file (the pair's general default).
FILE_CLASS = "default"
MAX_FILE_BYTES = 1 << 20  # a prompt, not a corpus


class WorkloadError(UsageError):
    """A workload name or file cannot be used."""


@dataclass(frozen=True)
class Workload:
    """A named prompt; `kind` is the tuning class (`code`, ..., or `default` for a file)."""

    name: str
    kind: str
    prompt: str


def builtin(name: str) -> Workload:
    """One of the shipped workloads, read from gemma_cli/data/workloads/NAME.txt."""
    if name not in BUILTIN:
        raise WorkloadError(f"unknown workload {name!r}; choose one of {', '.join(BUILTIN)} or give a text file")
    text = resources.files("gemma_cli").joinpath("data", "workloads", f"{name}.txt").read_text(encoding="utf-8")
    return Workload(name, name, text.strip())


def from_file(path: str | Path) -> Workload:
    """A user's prompt file, validated: it must exist and hold non-empty UTF-8 text."""
    p = Path(path).expanduser()
    if not p.exists():
        raise WorkloadError(f"workload file not found: {p}")
    if not p.is_file():
        raise WorkloadError(f"workload is not a file: {p}")
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise WorkloadError(f"workload file is too large ({size} bytes, limit {MAX_FILE_BYTES}): {p}")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise WorkloadError(f"workload file is not UTF-8 text: {p}") from None
    except OSError as exc:
        raise WorkloadError(f"cannot read workload file {p}: {exc.strerror or exc}") from None
    if not text.strip():
        raise WorkloadError(f"workload file is empty: {p}")
    return Workload(p.name, FILE_CLASS, text.strip())


def resolve_workloads(spec: list[str] | None) -> list[Workload]:
    """`--workload` values (built-in names or file paths) -> workloads; none given = all built-ins."""
    if not spec:
        return [builtin(name) for name in BUILTIN]
    out: list[Workload] = []
    for item in spec:
        for part in [item] if ("/" in item or Path(item).suffix) else item.split(","):
            part = part.strip()
            if not part:
                continue
            out.append(builtin(part) if part in BUILTIN else _file_or_unknown(part))
    if not out:
        raise WorkloadError("no workload given")
    return out


def _file_or_unknown(part: str) -> Workload:
    if Path(part).expanduser().exists() or "/" in part or "." in part:
        return from_file(part)
    raise WorkloadError(f"unknown workload {part!r}; choose one of {', '.join(BUILTIN)} or give a text file")
