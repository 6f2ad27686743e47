"""The model store and the disk under it."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from gemma_cli import config
from gemma_cli.doctor.report import FAIL, GIB, OK, WARN, Check
from gemma_cli.errors import GemmaError
from gemma_cli.registry.catalog import load_catalog
from gemma_cli.store.layout import Layout
from gemma_cli.store.store import iter_manifests

LOW_DISK_BYTES = 2 << 30


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or "/")


def check_store(root: Path) -> Check:
    """The store must be a directory we can create files in (or could create)."""
    details: dict[str, Any] = {"path": str(root), "exists": root.exists()}
    hint = "set GEMMA_MODELS to a writable directory, e.g. export GEMMA_MODELS=~/gemma-models"
    if root.exists() and not root.is_dir():
        return Check("store", FAIL, f"{root} is not a directory", hint, details)
    if root.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-", delete=True):
                pass
        except OSError as exc:
            return Check("store", FAIL, f"{root} is not writable ({exc.strerror})", hint, details)
        names = store_model_names(root)
        details["models"] = names
        return _with_leftovers(Check("store", OK, f"{root} ({len(names)} model(s))", None, details), root)
    base = _existing_ancestor(root)
    if not base.is_dir():
        return Check("store", FAIL, f"{root} cannot be created: {base} is not a directory", hint, details)
    if not os.access(base, os.W_OK | os.X_OK):
        return Check("store", FAIL, f"{root} cannot be created: {base} is not writable", hint, details)
    details["models"] = []
    return Check("store", OK, f"{root} (not created yet; the first pull creates it)", None, details)


def store_model_names(root: Path | None = None) -> list[str]:
    """`family:tag` of every manifest in the store, without parsing them (empty when unreadable)."""
    try:
        return sorted(str(ref) for ref, _ in iter_manifests(Layout(root or config.models_dir())))
    except OSError:
        return []


def catalog_model_names() -> list[str]:
    """Names the catalog can pull (empty when the catalog is unavailable or broken)."""
    try:
        return list(load_catalog().names())
    except GemmaError:  # completion and the doctor must never fail on the catalog
        return []


def check_disk(root: Path) -> Check:
    base = _existing_ancestor(root)
    if not base.is_dir():
        base = base.parent
    try:
        usage = shutil.disk_usage(base)
    except OSError as exc:
        return Check("disk", WARN, f"free space unknown for {base} ({exc.strerror})")
    details = {"path": str(base), "free_bytes": usage.free, "total_bytes": usage.total}
    summary = f"{_amount(usage.free)} free of {_amount(usage.total)} on {base}"
    if usage.free < LOW_DISK_BYTES:
        return Check("disk", WARN, summary, "Gemma models need 0.3-10 GiB each; free some space or point GEMMA_MODELS elsewhere", details)
    return Check("disk", OK, summary, None, details)


def _amount(n: int) -> str:
    """GiB to one decimal, or MiB below one GiB: a small volume read "0.0 GiB free of 0.0 GiB"."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / (1 << 20):.1f} MiB"


def _with_leftovers(check: Check, root: Path) -> Check:
    """Sweep what killed processes left in the store into the `store` check.

    Temporary files whose process is gone are removed (and said); `.partial`
    downloads untouched for PARTIAL_STALE_DAYS are reported (a warning), never deleted.
    """
    from gemma_cli.store.cleanup import PARTIAL_STALE_DAYS, sweep

    try:
        found = sweep(Layout(root))
    except OSError as exc:
        return replace(check, summary=f"{check.summary}; cannot scan it for leftovers ({exc.strerror or exc})")
    removed = [f for f in found if f.removed]
    partial = [f for f in found if f.kind == "partial"]
    details = {**check.details, "removed_temp_files": [f.path for f in removed], "stale_partial": [f.path for f in partial]}
    summary = check.summary
    if removed:
        summary += f"; removed {len(removed)} temporary file(s) of killed processes ({sum(f.size for f in removed) / GIB:.2f} GiB)"
    if not partial:
        return replace(check, summary=summary, details=details)
    summary += (f"; {len(partial)} partial download(s) untouched for {PARTIAL_STALE_DAYS}+ days "
                f"({sum(f.size for f in partial) / GIB:.2f} GiB): {', '.join(f.path for f in partial[:3])}")
    return Check("store", WARN, summary, "run the `gemma pull` that started them to resume, or delete the .partial files", details)
