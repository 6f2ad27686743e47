"""Crash-safe file writes and inter-process locks for the model store.

A crash (or kill -9) must never leave a half-written manifest, and two
`gemma pull` processes must not write the same blob at once: write to a
temporary file in the same directory, fsync, `os.replace`, fsync the
directory; serialise writers with `fcntl.flock` on small lock files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort on filesystems that refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def save_user_file(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write a file the user named (not the store's): atomically, never creating directories.

    The data goes to a temporary file in the same directory, then: a new file is
    linked into place (`os.link` fails if the name appeared meanwhile, so nothing
    is ever clobbered without `overwrite`); with `overwrite` it is renamed over
    the old file, which keeps its permission bits. A symlink is written through
    to its target. Raises FileExistsError (exists, no `overwrite`),
    FileNotFoundError (no such directory), IsADirectoryError, or other OSErrors (EINVAL: `path` is
    a device, FIFO or socket, which is never replaced).
    """
    path = Path(os.path.realpath(path)) if overwrite else path
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(path.parent))
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(errno.EEXIST, "file exists", str(path))
    if overwrite and path.exists() and not path.is_file():  # a FIFO, a socket, /dev/full: renaming over it destroys it
        raise OSError(errno.EINVAL, "not a regular file; it is left as it is", str(path))
    try:
        mode = stat.S_IMODE(path.stat().st_mode) if overwrite else None
    except FileNotFoundError:
        mode = None
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
    """Hold an flock on `path` (created if needed); yields False if non-blocking and busy.

    flock locks die with the process, so a killed pull never leaves a stale lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if not blocking:
            mode |= fcntl.LOCK_NB
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


MAX_SMALL_FILE = 1 << 20  # manifests and stamps are a few hundred bytes; anything near this is not one of ours


def read_small_file(path: Path) -> str:
    """The text of `path`, a regular file of at most MAX_SMALL_FILE (a manifest, a stamp): the store's folders are untrusted, and a
    FIFO named `x.json` blocked `gemma list` for ever, a link to /dev/zero read until the OOM killer came."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # look first: opening some devices acts, a tty could become ours
        raise ValueError("not a regular file")
    # then open without blocking (a FIFO swapped in meanwhile opens at once, and fstat refuses it)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > MAX_SMALL_FILE:
            raise ValueError(f"{st.st_size} bytes, more than a manifest or stamp ever holds")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(MAX_SMALL_FILE + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > MAX_SMALL_FILE:
        raise ValueError("grew past the size a manifest or stamp ever holds")
    return data.decode("utf-8")
