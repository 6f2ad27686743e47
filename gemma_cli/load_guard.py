"""Load untrusted model files so that an abort inside llama.cpp cannot take us down.

Two lines of defence, both run before llama.cpp sees a file in this process:

1. `preflight.check_header`: every hyperparameter llama.cpp asserts on,
   refused from the header with one line.
2. A probe: the first time a file is seen, a child process loads it the way
   the engine will, without reading weights, and makes a small context. If llama.cpp aborts or crashes there, we say so in one line,
   with its own last message, instead of dying with exit 134 and a backtrace
   on stdout.

A file that passed is remembered per (path, size, mtime, inode, llama.cpp
version) under `$GEMMA_CACHE` (default: the user cache dir), so each file
costs this once: ~2.5 s for Gemma 3 270M, both checks overlapping.
`GEMMA_PROBE=0` skips the probe (the header checks still run).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

from gemma_cli import config
from gemma_cli.errors import ModelFileError
from gemma_cli.text_safety import clean_display

PROBE_VERSION = "1"  # bump when the probe below changes what it exercises
PROBE_TIMEOUT = 120.0  # no weights are read; a timeout is never a reason to refuse

# The child: load the model with no_alloc (hparams, vocabulary and every tensor
# shape are checked, no weight is read: a 30 GB file costs what a 30 MB one
# does), look up the vocabulary entries the engine reads, and create a small
# context (KV cache layout and graph reservation run their asserts). Decoding
# needs weights, so compute-time asserts are not probed. An exception inside
# llama.cpp makes it exit 3; aborts and crashes end it by a signal.
_PROBE = r"""
import ctypes, sys
import llama_cpp as ll
ll.llama_backend_init()
p = ll.llama_model_default_params()
p.n_gpu_layers = 0
p.load_mode = ll.LLAMA_LOAD_MODE_NONE  # with no_alloc: tensors are created and checked, no weights read
p.use_extra_bufts = False
p.no_alloc = True
m = ll.llama_model_load_from_file(sys.argv[1].encode(), p)
if not m:
    sys.exit(3)
buf = ctypes.create_string_buffer(256)
n = ll.llama_model_meta_val_str(m, b"general.architecture", buf, 256)
arch = buf.value.decode("utf-8", "replace") if n >= 0 else ""
vocab = ll.llama_model_get_vocab(m)
n_vocab = ll.llama_vocab_n_tokens(vocab)
specials = {t for t in (ll.llama_vocab_bos(vocab), ll.llama_vocab_eos(vocab)) if t >= 0}
for t in sorted(specials | set(range(min(n_vocab, 64)))):  # the engine reads bos/eos texts whenever >= 0
    ll.llama_vocab_get_text(vocab, t)
    ll.llama_vocab_is_eog(vocab, t)
    ll.llama_token_to_piece(vocab, t, buf, 256, 0, True)
if arch == "gemma4-assistant":  # an MTP head runs only inside its target's context
    sys.exit(0)
c = ll.llama_context_default_params()
c.n_ctx, c.n_batch, c.n_ubatch, c.n_seq_max = 64, 8, 8, 1
c.n_threads = c.n_threads_batch = 1
ctx = ll.llama_init_from_model(m, c)
if not ctx:
    sys.exit(3)
sys.exit(0)
"""


def _probe_enabled() -> bool:
    return config.env_flag("GEMMA_PROBE") is not False


def _llama_cpp_identity() -> str:
    """Which llama_cpp install the probe ran against, without importing it here: only
    engine/llama/_lib.py imports llama_cpp (and `gemma doctor` need not load it at all).
    A reinstall rewrites its __init__.py, so size and mtime change with the version."""
    try:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or spec.origin is None:
            return "?"  # no llama.cpp at all: the load after this says so
        st = os.stat(spec.origin)
        return f"{spec.origin}:{st.st_size}:{st.st_mtime_ns}"
    except (ImportError, ValueError, OSError):
        return "?"


def _marker(path: Path) -> Path | None:
    """Where a passed check of this exact file is remembered (None: cannot tell)."""
    try:
        st = path.stat()
        llama_version = _llama_cpp_identity()
        ident = "\0".join(map(str, (PROBE_VERSION, llama_version, _probe_enabled(), path.resolve(),
                                     st.st_size, st.st_mtime_ns, st.st_ino)))
        return config.cache_dir() / "probed" / hashlib.sha256(ident.encode()).hexdigest()[:32]
    except OSError:
        return None


def _reason(stderr: str) -> str:
    """llama.cpp's own last words: the GGML_ASSERT line, the C++ exception, or the last log line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for marker in ("GGML_ASSERT", "GGML_ABORT", "what():", "error", "failed"):
        hits = [ln for ln in lines if marker in ln]
        if hits:
            line = hits[-1]
            return line.split(": ", 1)[1] if marker.startswith("GGML") and ": " in line else line
    return lines[-1] if lines else "no message"


def _start_probe(path: Path) -> subprocess.Popen[bytes] | None:
    env = dict(os.environ, GGML_NO_BACKTRACE="1")
    try:
        return subprocess.Popen([sys.executable, "-c", _PROBE, str(path)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    except OSError:
        return None  # cannot start a child (resource limits): keep the header checks only


def _finish_probe(child: subprocess.Popen[bytes], path: Path, timeout: float) -> bool:
    """Wait for the probe; True if it passed, raise if llama.cpp aborted or crashed."""
    try:
        _, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return False  # slow, not broken: the real load proceeds
    rc = child.returncode
    if rc < 0 or rc == 134:
        signum = -rc if rc < 0 else int(signal.SIGABRT)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        verb = "aborted" if signum == signal.SIGABRT else f"crashed ({name})"
        reason = _reason(err.decode("utf-8", "replace"))
        raise ModelFileError(f"llama.cpp {verb} while loading {clean_display(path.name, 80)}: {clean_display(reason, 240)}")
    return rc == 0  # 3: llama.cpp refused it with an exception; the in-process load reports why


def probe_file(path: str | os.PathLike[str], *, timeout: float = PROBE_TIMEOUT) -> bool:
    """Load `path` in a child now (no cache): True if it loaded and decoded, False if llama.cpp
    refused it with an error or timed out; ModelFileError if it aborted or crashed."""
    child = _start_probe(Path(path))
    return False if child is None else _finish_probe(child, Path(path), timeout)


def guard_load(path: str | os.PathLike[str], *, timeout: float = PROBE_TIMEOUT) -> None:
    """Everything to do before llama.cpp loads `path` in this process.

    The first time a file is seen: the header checks run here while the probe
    loads the file in a child (both mostly parse the vocabulary, so they
    overlap); afterwards a marker makes this free.
    """
    from gemma_cli.preflight import preflight

    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # an abort here must not print gdb's backtrace on stdout
    path = Path(path)
    marker = _marker(path)
    if marker is not None and marker.exists():
        return
    child = _start_probe(path) if _probe_enabled() else None
    try:
        preflight(path)
    except BaseException:
        if child is not None:
            child.kill()
            child.wait()
        raise
    passed = _finish_probe(child, path, timeout) if child is not None else True
    if passed and marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{path}\n")
        except OSError:
            pass  # a read-only store: check again next time
