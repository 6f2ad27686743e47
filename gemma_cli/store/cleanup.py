"""Leftovers of processes that were killed (-9, power loss): find them, remove what is safe.

Every normal exit path removes its own temporary files; only a process that
could run no cleanup leaves them. The rules, so `gemma verify` and
`gemma doctor` agree:

- `blobs/.ingest-<pid>-*.tmp` and `blobs/.assemble-<pid>.tmp` (a copy into the
  store): removed when process <pid> no longer exists. A live pid keeps it.
- `.*.tmp` next to manifests and stamps (atomic writes of small JSON files,
  which take milliseconds): removed when older than an hour.
- `blobs/*.partial` (an interrupted download): the next `gemma pull` of the
  same file resumes it, so it is never deleted here; one untouched for
  PARTIAL_STALE_DAYS and not being written (its blob lock is free) is reported
  with its size, for the user to resume or delete.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from gemma_cli.store.atomic import file_lock
from gemma_cli.store.layout import Layout

PARTIAL_STALE_DAYS = 7
SMALL_TMP_STALE_S = 3600
_PID_TMP = re.compile(r"^\.(?:ingest|assemble)-(\d+)(?:-.*)?\.tmp$")


@dataclass(frozen=True)
class Leftover:
    path: str
    size: int
    kind: str  # "temp" | "partial"
    removed: bool
    reason: str


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _remove(path: Path, reason: str, kind: str = "temp") -> Leftover:
    size = _size(path)
    removed = True
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        removed = False
    return Leftover(str(path), size, kind, removed, reason)


def sweep(layout: Layout, *, remove: bool = True, now: float | None = None) -> list[Leftover]:
    """Stale temporary files (removed when `remove`) and stale partial downloads (reported only)."""
    now = time.time() if now is None else now
    found: list[Leftover] = []
    blobs_dir = layout.blobs
    if blobs_dir.is_dir():
        for path in sorted(blobs_dir.iterdir()):
            m = _PID_TMP.match(path.name)
            if m:
                pid = int(m.group(1))
                if pid != os.getpid() and not _pid_alive(pid):
                    reason = f"left by process {pid}, which no longer runs"
                    found.append(_remove(path, reason) if remove else Leftover(str(path), _size(path), "temp", False, reason))
            elif path.name.endswith(".partial"):
                found.extend(_stale_partial(layout, path, now))
    for folder in (layout.manifests, layout.root / "verified"):
        if not folder.is_dir():
            continue
        for path in folder.rglob(".*.tmp"):
            try:
                age = now - path.stat().st_mtime
            except OSError:
                continue
            if age > SMALL_TMP_STALE_S:
                reason = "an interrupted atomic write"
                found.append(_remove(path, reason) if remove else Leftover(str(path), _size(path), "temp", False, reason))
    return found


def _stale_partial(layout: Layout, path: Path, now: float) -> list[Leftover]:
    try:
        st = path.stat()
    except OSError:
        return []
    days = (now - st.st_mtime) / 86400
    if days < PARTIAL_STALE_DAYS:
        return []
    key = path.name[len("sha256-"):-len(".partial")] if path.name.startswith("sha256-") else ""
    if key:
        with contextlib.ExitStack() as stack:
            got = stack.enter_context(file_lock(layout.blob_lock(key), blocking=False))
            if not got:  # a pull is writing it right now
                return []
    reason = (f"an interrupted download untouched for {days:.0f} days; `gemma pull` of the same model resumes it, "
              "or delete it to free the space")
    return [Leftover(str(path), st.st_size, "partial", False, reason)]
