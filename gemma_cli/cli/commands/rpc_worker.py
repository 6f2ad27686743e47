"""`gemma rpc-worker`: lend this machine's memory and compute to a gemma on another host.

ggml's RPC server runs inside this process (libggml-rpc, through ctypes). Its
C call never returns, so it runs on a daemon thread while the main thread
waits for Ctrl-C / SIGTERM and then ends the process at once (the server
holds no state worth saving: a client's buffers die with its connection).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from gemma_cli import limits
from gemma_cli.errors import ExitCode, GemmaError, UsageError

REMOTE_WARNING = (
    "WARNING: the RPC protocol has no authentication and no encryption: anyone who can reach "
    "{address} can use this machine's memory and compute and read what it holds. Never expose it "
    "to an untrusted network; prefer an SSH tunnel or WireGuard."
)


def bind_address(host: str, allow_remote: bool) -> str:
    """The IPv4 literal ggml's server needs; non-loopback only with --allow-remote."""
    name = "127.0.0.1" if host == "localhost" else host
    try:
        ip = ipaddress.IPv4Address(name)
    except ValueError:
        try:
            ip = ipaddress.IPv4Address(socket.gethostbyname(name))
        except OSError:
            raise UsageError(f"--host {host!r} is not an IPv4 address of this machine (ggml's RPC server binds IPv4 only)") from None
    if not ip.is_loopback and not allow_remote:
        raise UsageError(
            f"--host {host} would accept connections from other machines; the RPC protocol has no authentication "
            "and no encryption. Add --allow-remote if that is what you want (on a trusted network only)"
        )
    return str(ip)


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise GemmaError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _wait_ready(host: str, port: int, server: threading.Thread, timeout: float = 30.0):
    """Until the server answers a handshake (or its thread gave up)."""
    from gemma_cli.engine.rpc_protocol import Endpoint, RpcError, probe

    ep = Endpoint(f"{host}:{port}", host, port)
    deadline = time.monotonic() + timeout
    while server.is_alive() and time.monotonic() < deadline:
        try:
            return probe(ep, timeout=2.0)
        except RpcError:
            time.sleep(0.1)
    raise GemmaError(f"the RPC server did not start on {host}:{port} (see the lines above)")


def rpc_worker(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback unless --allow-remote).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port.")] = 50052,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for the computations (default: available cores).")] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Keep received weights here by hash, so the next load of the same model sends less.")] = None,
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Allow a non-loopback --host (no authentication, no encryption: trusted networks only).")] = False,
) -> None:
    """Lend this machine's memory and compute to `gemma run/chat/bench --rpc` on another host.

    Example: gemma rpc-worker --port 50052 (then, over an SSH tunnel: ssh -L 50052:127.0.0.1:50052 HOST). Ctrl-C stops it.
    """
    from gemma_cli.engine import rpc
    from gemma_cli.engine.llama import default_threads

    if not 1 <= port <= 65535:
        raise UsageError(f"--port must be between 1 and 65535, got {port}")
    limits.check_threads(threads, "--threads")
    address = bind_address(host, allow_remote)
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GemmaError(f"cannot create the cache directory {cache}: {exc.strerror or exc}") from None
    rpc.require_rpc()
    _check_port_free(address, port)
    n_threads = threads or default_threads()
    devices = rpc.serving_devices()
    if not ipaddress.IPv4Address(address).is_loopback:
        sys.stderr.write(REMOTE_WARNING.format(address=f"{address}:{port}") + "\n")
    received: list[int] = []

    def _on_signal(signum: int, _frame) -> None:
        # Only a list append: the handler runs between two bytecodes of the main thread, and taking a lock here
        # (Event.set) deadlocked when that thread already held the same lock inside Event.wait (a worker that
        # ignored SIGTERM for good, seen under load in the tests).
        received.append(signum)

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    server = threading.Thread(
        target=rpc.start_server, args=(f"{address}:{port}", n_threads, cache, devices), name="ggml-rpc-server", daemon=True
    )
    server.start()
    info = _wait_ready(address, port, server)
    names = ", ".join(rpc.device_name(d) for d in devices)
    sys.stdout.write(
        f"gemma rpc-worker: serving {names} ({info.free_bytes / 2**30:.1f} GiB free, {n_threads} thread{'s' if n_threads != 1 else ''}) on "
        f"{address}:{port}, RPC protocol {'.'.join(map(str, info.version))}; Ctrl-C stops\n"
    )
    sys.stdout.flush()
    while not received and server.is_alive():
        time.sleep(0.1)
    if not received:  # the server thread returned: it could not keep serving
        raise GemmaError(f"the RPC server on {address}:{port} stopped unexpectedly")
    sys.stdout.write("gemma rpc-worker: stopped\n")
    sys.stdout.flush()
    sys.stderr.flush()
    # The C server thread cannot be joined; leave without running C++ destructors under it.
    os._exit(int(ExitCode.INTERRUPT) if received[0] == signal.SIGINT else 0)
