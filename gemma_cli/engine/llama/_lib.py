"""The one door to llama.cpp: the only module that imports `llama_cpp`.

Everything else, in this package and outside it, reaches llama.cpp through
`lib()`/`ext()` here or, better, through the typed `Model`, `Context` and
`MTPContext` wrappers and the functions below. Importing it lazily keeps
`gemma --help` and the store commands free of llama.cpp's load time.
Also here: llama.cpp's log routing (NULL returns become errors carrying its
last log line), what the build supports (for `gemma doctor`), and the decode
timer benchmarks use to separate Python's share of a step.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from gemma_cli import config
from gemma_cli.engine.llama import compute_thread
from gemma_cli.errors import GemmaError

if TYPE_CHECKING:  # pragma: no cover
    import llama_cpp as _llama_cpp_t

_init_lock = threading.Lock()
_lib = None
_log_tail: collections.deque[str] = collections.deque(maxlen=8)
_log_callback = None  # keep a reference: llama.cpp calls it from C
_log_sinks: list[Callable[[str], None]] = []  # see log_lines
#: What `lib()` added to os.environ for OpenMP (threads.py): benchmarks start other programs without it.
injected_env: dict[str, str] = {}


def lib() -> "_llama_cpp_t":
    """Import llama_cpp, initialise the backend once and route its logs (binding-internal)."""
    global _lib, _log_callback
    if _lib is not None:
        return _lib
    with _init_lock:
        if _lib is None:
            from gemma_cli.engine.llama.threads import threads_env

            injected = threads_env(os.environ)
            os.environ.update(injected)  # before libgomp loads with llama.cpp
            injected_env.update(injected)
            import llama_cpp

            @llama_cpp.llama_log_callback
            def _on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
                # Levels: 1 debug, 2 info, 3 warn, 4 error (5 = continuation).
                if level >= 3 and text:
                    _log_tail.append(text.decode("utf-8", "replace").strip())
                if os.environ.get("GEMMA_DEBUG") and text:
                    os.write(2, text)
                if _log_sinks and text:
                    for sink in list(_log_sinks):
                        sink(text.decode("utf-8", "replace"))

            _log_callback = _on_log
            llama_cpp.llama_log_set(_on_log, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _lib = llama_cpp
    return _lib


def ext() -> Any:
    """The non-stable `llama_cpp_ext` symbols (Gemma 4 MTP); why llama-cpp-python is pinned exactly."""
    lib()  # backend initialised and logs routed first
    from llama_cpp import llama_cpp_ext

    return llama_cpp_ext


@contextlib.contextmanager
def log_lines(keep: Callable[[str], bool]) -> Iterator[list[str]]:
    """The complete log lines (every level) that `keep` accepts while the block runs.

    Used to report where llama.cpp placed a model's layers and buffers.
    """
    lines: list[str] = []
    pending = [""]

    def sink(text: str) -> None:
        pending[0] += text
        *done, pending[0] = pending[0].split("\n")
        lines.extend(ln for ln in done if keep(ln))

    lib()
    _log_sinks.append(sink)
    try:
        yield lines
    finally:
        _log_sinks.remove(sink)


def supports_rpc() -> bool:
    """Was this llama.cpp built with ggml's RPC backend (`CMAKE_ARGS=-DGGML_RPC=on`)?"""
    return bool(lib().llama_supports_rpc())


def libggml() -> ctypes.CDLL:
    """A private handle on libggml: its own function objects, so argtypes set by the caller stay local."""
    lib()
    from llama_cpp._ggml import libggml as shared

    return ctypes.CDLL(shared._name)


def last_log_line() -> str:
    """The most recent warning/error llama.cpp logged, for error messages."""
    return _log_tail[-1] if _log_tail else ""


def forget_log() -> None:
    """Drop logged lines, so the next error quotes only what its own call logged."""
    _log_tail.clear()


def system_info() -> str:
    """`llama_print_system_info()`: the compiled-in CPU features and backends."""
    return lib().llama_print_system_info().decode("utf-8", "replace")


def build_has_amx() -> bool:
    """True when this llama.cpp build compiled the AMX kernels.

    Those kernels (`ggml_backend_amx_mul_mat`) segfault during decode on some
    AMX CPUs when weights are placed in the extra (repacked) buffer types.
    """
    return "AMX_INT8 = 1" in system_info()


def choose_cpu_repack() -> bool:
    """Whether to let llama.cpp repack CPU weights (`use_extra_bufts`). Default: off.

    Repacked weights make batched passes cheaper (2-core Xeon, portable AVX2
    build, Gemma 3 270M Q4_K_M: a pass of 4 / 8 / 16 tokens 1.91 / 3.03 / 5.51
    one-token passes against 2.15 / 3.66 / 6.19; default / plain on the
    validation set 1.73x against 1.58x), but two things keep them opt-in:
    - Exactness: repacked, a pass of 4 rows or more rounds differently from
      one-token passes (up to 1.8 logits on a row, measured), where without
      repacking passes of up to 7 rows are bit-identical to them. The batch
      scheduler's exact mode (`EXACT_ROWS`) and same-seed sampled equality with
      plain decoding rely on that.
    - With an AMX build, repacked weights go through `ggml_backend_amx_mul_mat`,
      which dies during decode on some AMX CPUs.
    `GEMMA_CPU_REPACK=1` opts in (`gemma doctor` warns on AMX builds).
    """
    override = config.cpu_repack_override()
    return bool(override)


def capabilities() -> dict[str, object]:
    """What this llama.cpp build can do, for `gemma doctor` (version None when the module does not say)."""
    ll = lib()
    return {
        "version": getattr(ll, "__version__", None),
        "system_info": system_info().strip(),
        "gpu_offload": bool(ll.llama_supports_gpu_offload()),
        "mmap": bool(ll.llama_supports_mmap()),
        "build_has_amx": build_has_amx(),
        "cpu_repack": _repack_or_none(),
        "rpc": supports_rpc(),
    }


def _repack_or_none() -> bool | None:
    """The repacking choice, or None when GEMMA_CPU_REPACK is unreadable (doctor's own line says so)."""
    try:
        return choose_cpu_repack()
    except GemmaError:
        return None


_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


def backend_devices() -> list[dict[str, object]]:
    """ggml's compute devices (CPU, CUDA0, Metal, ...) with their memory, for `gemma doctor`."""
    lib()
    from llama_cpp._ggml import libggml as g

    g.ggml_backend_dev_count.argtypes = []
    g.ggml_backend_dev_count.restype = ctypes.c_size_t
    g.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    g.ggml_backend_dev_get.restype = ctypes.c_void_p
    for fn in (g.ggml_backend_dev_name, g.ggml_backend_dev_description):
        fn.argtypes = [ctypes.c_void_p]
        fn.restype = ctypes.c_char_p
    g.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    g.ggml_backend_dev_type.restype = ctypes.c_int
    g.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
    g.ggml_backend_dev_memory.restype = None
    out: list[dict[str, object]] = []
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(
            {
                "name": (g.ggml_backend_dev_name(dev) or b"").decode("utf-8", "replace"),
                "description": (g.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace"),
                "type": _DEVICE_TYPES.get(g.ggml_backend_dev_type(dev), "unknown"),
                "free_bytes": int(free.value),
                "total_bytes": int(total.value),
            }
        )
    return out


class DecodeTimer:
    """Main-thread CPU time spent inside `llama_decode`, to isolate Python's share of a step.

    The generation loop's own work (drafting in Python, verification, text
    streaming) runs on the main thread and never blocks, so main-thread CPU
    time outside `llama_decode` is the per-step overhead we add on top of
    llama.cpp. `thread_time` is fine-grained even where the wall clock is not.
    While `installed`, every context's decode (target, drafter, MTP) is timed;
    otherwise a decode pays one global read for the hook.
    """

    def __init__(self) -> None:
        self.inside = 0.0
        self.calls = 0

    def call(self, decode: Callable[[Any, Any], int], ctx: Any, batch: Any) -> int:
        t0 = time.thread_time()
        try:
            return decode(ctx, batch)
        finally:
            self.inside += time.thread_time() - t0
            self.calls += 1

    @contextlib.contextmanager
    def installed(self) -> Iterator["DecodeTimer"]:
        global decode_timer
        previous, decode_timer = decode_timer, self
        try:
            yield self
        finally:
            decode_timer = previous


#: The installed DecodeTimer (None: decodes are not timed). Read by every decode call site.
decode_timer: DecodeTimer | None = None


def run_decode(decode: Callable[[Any, Any], int], ctx: Any, batch: Any) -> int:
    """Every decode call site's `llama_decode(ctx, batch)`: timed while a DecodeTimer is installed, and on
    the process's compute thread while one is installed (compute_thread.py: one OpenMP team)."""
    timer, thread = decode_timer, compute_thread.current
    if thread is None:
        return decode(ctx, batch) if timer is None else timer.call(decode, ctx, batch)
    return thread.call(decode, ctx, batch) if timer is None else thread.call(timer.call, decode, ctx, batch)
