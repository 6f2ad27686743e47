"""ggml's RPC backend through ctypes: serve this machine, or place a model on workers.

llama-cpp-python built with `CMAKE_ARGS="-DGGML_RPC=on"` ships libggml-rpc,
which registers an "RPC" backend in ggml's registry. Its proc addresses give
`ggml_backend_rpc_start_server` (the worker) and `ggml_backend_rpc_add_server`
(the client), so no separate binary is needed.

ggml's client treats every socket failure as fatal (`GGML_ABORT`). We make
that bounded and clean rather than impossible: endpoints are probed first
(rpc_protocol), the connections get TCP keepalive and a user timeout so a
vanished host fails within ~20 s instead of never, and an abort callback turns
the abort into one `Error:` line and exit status 1 instead of a core dump.
"""

from __future__ import annotations

import _thread
import ctypes
import os
import signal
import socket
import stat
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from gemma_cli.engine.rpc_protocol import BUILD_HINT, Endpoint, RpcError, WorkerInfo, port_refuses

DEV_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}
_ggml = None
_abort_cb = None  # keep a reference: ggml calls it from C
_endpoints_in_use: list[Endpoint] = []
_escape_thread: threading.Thread | None = None
_on_lost: Callable[[str], None] | None = None  # a long-lived process (gemma serve) that must survive a lost worker


def supports_rpc() -> bool:
    """Was this llama.cpp built with the RPC backend (`llama_supports_rpc`)?"""
    from gemma_cli.engine.llama import supports_rpc as built_with_rpc

    return built_with_rpc()


def require_rpc() -> None:
    if not supports_rpc():
        raise RpcError("this llama.cpp build has no RPC backend", hint=BUILD_HINT)


def ggml() -> ctypes.CDLL:
    """Our own handle on libggml (own function objects: argtypes here do not leak to other users)."""
    global _ggml
    if _ggml is not None:
        return _ggml
    from gemma_cli.engine.llama import libggml

    g = libggml()
    vp, sz, cp = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    for name, args, res in (
        ("ggml_backend_reg_by_name", [cp], vp),
        ("ggml_backend_reg_get_proc_address", [vp, cp], vp),
        ("ggml_backend_reg_dev_count", [vp], sz),
        ("ggml_backend_reg_dev_get", [vp, sz], vp),
        ("ggml_backend_dev_count", [], sz),
        ("ggml_backend_dev_get", [sz], vp),
        ("ggml_backend_dev_by_type", [ctypes.c_int], vp),
        ("ggml_backend_dev_name", [vp], cp),
        ("ggml_backend_dev_description", [vp], cp),
        ("ggml_backend_dev_type", [vp], ctypes.c_int),
        ("ggml_backend_dev_memory", [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)], None),
        ("ggml_backend_dev_buffer_type", [vp], vp),
        ("ggml_set_abort_callback", [vp], vp),
    ):
        fn = getattr(g, name)
        fn.argtypes, fn.restype = args, res
    _ggml = g
    return g


def _rpc_proc(name: str) -> int:
    require_rpc()
    g = ggml()
    reg = g.ggml_backend_reg_by_name(b"RPC")
    addr = g.ggml_backend_reg_get_proc_address(reg, name.encode()) if reg else None
    if not addr:
        raise RpcError(f"this llama.cpp build's RPC backend has no {name}", hint=BUILD_HINT)
    return addr


def device_memory(dev: int) -> tuple[int, int]:
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    ggml().ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    return int(free.value), int(total.value)


def device_name(dev: int) -> str:
    return (ggml().ggml_backend_dev_name(dev) or b"?").decode("utf-8", "replace")


def local_cpu_device() -> int:
    dev = ggml().ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    if not dev:
        raise RpcError("llama.cpp has no CPU backend device")
    return dev


def serving_devices() -> list[int]:
    """What a worker offers: its GPUs when llama.cpp has any, else the CPU (as llama.cpp's rpc-server does)."""
    g = ggml()
    gpus = [g.ggml_backend_dev_get(i) for i in range(g.ggml_backend_dev_count())]
    gpus = [d for d in gpus if DEV_TYPES.get(g.ggml_backend_dev_type(d)) in ("gpu", "igpu")]
    return gpus or [local_cpu_device()]


# -- the abort path -------------------------------------------------------------
def _dead_endpoints(endpoints: Sequence[Endpoint], within_s: float = 1.0) -> list[str]:
    """Workers whose port refuses connections; a killed process may close its listening socket a moment late."""
    deadline = time.monotonic() + within_s
    dead: list[str] = []
    while True:
        dead += [ep.text for ep in endpoints if ep.text not in dead and port_refuses(ep, timeout=0.5)]
        if dead or time.monotonic() > deadline:
            return dead
        time.sleep(0.1)


def set_loss_handler(handler: Callable[[str], None] | None) -> None:
    """Let a server outlive a lost worker: `handler(line)` instead of ending the process.

    ggml aborts on the thread that saw the socket fail (its RPC dispatcher
    thread, or the caller's) and calls abort() when the callback returns. So
    after `handler` the callback never returns: that thread parks for good, and
    so does the thread waiting on it inside llama.cpp. The handler must answer
    the affected requests and stop using every engine placed on the workers.
    """
    global _on_lost
    _on_lost = handler


def _on_abort(message: bytes | None) -> None:
    """Runs on whichever thread hit GGML_ABORT; prints one line and ends the process (no core dump)."""
    text = (message or b"").decode("utf-8", "replace").strip()
    detail = text.split(": ", 1)[-1] if ": " in text else text
    if any(k in detail for k in ("Remote RPC server", "Failed to connect", "RPC handshake failed")):
        gone = _dead_endpoints(_endpoints_in_use)
        who = f"RPC worker {', '.join(gone)}" if gone else "an RPC worker"
        line = f"lost the connection to {who} ({detail})"
    else:
        line = f"llama.cpp aborted: {detail}"
    line = line.replace("\n", " ")
    if _on_lost is not None:
        try:
            _on_lost(line)
        finally:
            threading.Event().wait()  # never return: ggml would abort() the whole server
    if line.startswith("lost"):
        line += "; restart `gemma rpc-worker` there and run again"
    try:
        sys.stdout.flush()
    except Exception:
        pass
    prefix = "Error: " if os.environ.get("NO_COLOR") or not sys.stderr.isatty() else "\x1b[31mError:\x1b[0m "
    os.write(2, (prefix + line + "\n").encode("utf-8", "replace"))
    os._exit(1)


def install_abort_handler() -> None:
    """Route ggml aborts through `_on_abort` (idempotent)."""
    global _abort_cb
    if _abort_cb is None:
        _abort_cb = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(_on_abort)
        ggml().ggml_set_abort_callback(ctypes.cast(_abort_cb, ctypes.c_void_p))


def _main_position(main_id: int) -> tuple[int, int] | None:
    frame = sys._current_frames().get(main_id)
    return (id(frame.f_code), frame.f_lasti) if frame is not None else None


def _forward_interrupts(main_id: int) -> None:
    """Receive every SIGINT here; pass it on, and end the process if the main thread is stuck in ggml.

    A frozen worker (stopped, deadlocked, swapping) keeps its TCP connection
    open, so ggml waits forever inside a C call where Python's SIGINT handler
    never runs. Forwarded Ctrl-Cs behave as before (first cancels, second
    interrupts) whenever the main thread is moving; a second Ctrl-C while it
    has not moved since the first exits at once with status 130.
    """
    sigint = {signal.SIGINT}
    while True:
        signal.sigwait(sigint)
        before = _main_position(main_id)
        _thread.interrupt_main(signal.SIGINT)
        t0, hinted = time.monotonic(), False
        while True:
            again = signal.sigtimedwait(sigint, 0.25)
            if _main_position(main_id) != before:
                if again is not None:
                    _thread.interrupt_main(signal.SIGINT)
                break
            if again is not None:
                os.write(2, b"\nError: interrupted while waiting for an RPC worker that does not answer\n")
                os._exit(130)
            if not hinted and time.monotonic() - t0 > 1.0:
                os.write(2, b"\nwaiting for an RPC worker to answer; press Ctrl-C again to quit\n")
                hinted = True


def install_interrupt_escape() -> None:
    """Keep Ctrl-C usable while ggml blocks on a frozen worker (CLI main thread, Linux/macOS; idempotent).

    For command-line processes only: SIGINT stays blocked in the main thread,
    and child processes would inherit that mask.
    """
    global _escape_thread
    if _escape_thread is not None or threading.current_thread() is not threading.main_thread():
        return
    if not hasattr(signal, "pthread_sigmask") or not hasattr(signal, "sigtimedwait"):
        return
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # threads started later (ggml's) inherit it
    _escape_thread = threading.Thread(target=_forward_interrupts, args=(threading.main_thread().ident,), name="gemma-rpc-sigint", daemon=True)
    _escape_thread.start()


# -- client ----------------------------------------------------------------------
def add_workers(workers: Sequence[WorkerInfo]) -> list[list[int]]:
    """Register each (already probed) worker with ggml; its backend devices, per worker."""
    install_abort_handler()
    add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(_rpc_proc("ggml_backend_rpc_add_server"))
    g = ggml()
    out: list[list[int]] = []
    for w in workers:
        _endpoints_in_use.append(w.endpoint)
        reg = add_server(w.endpoint.address.encode())
        if not reg:
            raise RpcError(f"RPC worker {w.endpoint.text} offers no devices")
        out.append([g.ggml_backend_reg_dev_get(reg, i) for i in range(g.ggml_backend_reg_dev_count(reg))])
    return out


def _worker_sockets(endpoints: Sequence[Endpoint]) -> Iterator[socket.socket]:
    """Duplicates of ggml's open TCP sockets to these workers (Linux /proc; closing one leaves ggml's open)."""
    if not os.path.isdir("/proc/self/fd"):
        return
    wanted = {(ep.host, ep.port) for ep in endpoints}
    for name in os.listdir("/proc/self/fd"):
        try:
            if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                continue
            s = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if s.family == socket.AF_INET and s.type == socket.SOCK_STREAM and s.getpeername() in wanted:
                yield s
        except OSError:
            pass
        finally:
            s.close()


def harden_connections(endpoints: Sequence[Endpoint], idle_s: int = 5, interval_s: int = 2, probes: int = 3) -> int:
    """TCP keepalive + TCP_USER_TIMEOUT on ggml's open sockets to the workers; how many were set.

    A worker host that vanishes (power, cable, Wi-Fi) never closes its end, and
    ggml's blocking recv would wait forever; with these the kernel reports the
    loss after about idle + interval * probes seconds, ggml aborts, and the
    abort handler prints one line. Linux only (elsewhere: 0, nothing changes).
    """
    if not hasattr(socket, "TCP_USER_TIMEOUT"):
        return 0
    done = 0
    for s in _worker_sockets(endpoints):
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval_s)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, (idle_s + interval_s * probes) * 1000)
            done += 1
        except OSError:
            pass
    return done


def traffic(endpoints: Sequence[Endpoint]) -> dict[str, int]:
    """Bytes and TCP segments so far on ggml's connections to the workers (Linux TCP_INFO), for benchmarks."""
    out = {"bytes_sent": 0, "bytes_received": 0, "segs_out": 0, "segs_in": 0}
    for s in _worker_sockets(endpoints):
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        if len(info) < 144:
            continue
        # struct tcp_info: 8 u8, 24 u32, then u64 pacing_rate, max_pacing_rate, bytes_acked, bytes_received, u32 segs_out, segs_in
        acked, received = struct.unpack_from("<QQ", info, 120)
        segs_out, segs_in = struct.unpack_from("<II", info, 136)
        for key, value in zip(out, (acked, received, segs_out, segs_in), strict=True):
            out[key] += value
    return out


# -- worker ----------------------------------------------------------------------
def start_server(address: str, threads: int, cache_dir: Path | None, devices: Sequence[int]) -> None:
    """`ggml_backend_rpc_start_server`: blocks for the life of the worker (run it on a thread).

    Returns only when the server could not start (e.g. the port is taken).
    """
    fn_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p))
    start = fn_type(_rpc_proc("ggml_backend_rpc_start_server"))
    devs = (ctypes.c_void_p * len(devices))(*devices)
    cache = str(cache_dir).encode() if cache_dir else None
    start(address.encode(), cache, threads, len(devices), devs)
