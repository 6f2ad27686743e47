"""Talking to a ggml RPC worker from Python, before llama.cpp does.

ggml's client aborts the whole process when a worker cannot be reached or
answers with another protocol version, and its `connect()` has no timeout.
So every endpoint is first probed here, with short socket timeouts: TCP
connect, the HELLO handshake (protocol version), the device count and each
device's memory. The wire format is ggml-rpc.cpp's: a request is
`| cmd (1 byte) | size (u64 LE) | payload |`, a reply `| size (u64 LE) | payload |`.
No llama.cpp import: `gemma doctor` and the tests use it freely.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from dataclasses import dataclass

from gemma_cli.errors import GemmaError, UsageError

DEFAULT_PORT = 50052
MAX_WORKERS = 16  # GGML_RPC_MAX_SERVERS
# The protocol of the ggml bundled with llama-cpp-python 0.3.36 (ggml-rpc.h).
PROTO_VERSION = (7, 0, 0)

BUILD_HINT = (
    'rebuild llama-cpp-python with RPC: CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall '
    "--no-cache-dir --no-deps llama-cpp-python==0.3.36 (add your -DGGML_CUDA=on / -DGGML_METAL=on flags)"
)

_CMD_GET_DEVICE_MEMORY = 11
_CMD_HELLO = 14  # fixed across versions (static_assert in ggml-rpc.cpp)
_CMD_DEVICE_COUNT = 15
_CONN_CAPS = 24  # RPC_CONN_CAPS_SIZE


class RpcError(GemmaError):
    """An RPC worker is unreachable, busy, incompatible, or went away."""


@dataclass(frozen=True)
class Endpoint:
    """A worker address as the user wrote it and as ggml gets it (IPv4 literal)."""

    text: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker told us: protocol version, devices' (free, total) bytes, round-trip time."""

    endpoint: Endpoint
    version: tuple[int, int, int]
    memory: tuple[tuple[int, int], ...]
    rtt_s: float

    @property
    def free_bytes(self) -> int:
        return sum(free for free, _ in self.memory)

    @property
    def total_bytes(self) -> int:
        return sum(total for _, total in self.memory)


def parse_endpoint(text: str) -> Endpoint:
    """`host:port` (or `host`, port 50052) -> Endpoint, resolving names to IPv4 once."""
    raw = text.strip()
    if not raw:
        raise UsageError("--rpc has an empty worker address; write HOST:PORT[,HOST:PORT...]")
    if raw.startswith("[") or raw.count(":") > 1:
        raise UsageError(f"--rpc {raw!r}: IPv6 addresses are not supported by ggml's RPC transport; use an IPv4 address")
    host, sep, port_text = raw.partition(":")
    port = DEFAULT_PORT
    if sep:
        try:
            port = int(port_text)
        except ValueError:
            raise UsageError(f"--rpc {raw!r}: the port must be a number, e.g. {host or '127.0.0.1'}:{DEFAULT_PORT}") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"--rpc {raw!r}: port {port} is out of range 1-65535")
    if not host:
        raise UsageError(f"--rpc {raw!r}: missing host, e.g. 127.0.0.1:{port}")
    try:
        ip = str(ipaddress.IPv4Address(host))
    except ValueError:
        try:
            ip = socket.gethostbyname(host)
        except OSError:
            raise RpcError(f"RPC worker {raw}: cannot resolve host name {host!r}") from None
    return Endpoint(raw, ip, port)


def parse_endpoints(spec: str) -> list[Endpoint]:
    """`--rpc a:1,b:2` -> endpoints, refusing duplicates and more than ggml supports."""
    out: list[Endpoint] = []
    for part in spec.split(","):
        if not part.strip():
            continue
        ep = parse_endpoint(part)
        if any(e.address == ep.address for e in out):
            raise UsageError(f"--rpc lists worker {ep.address} twice")
        out.append(ep)
    if not out:
        raise UsageError("--rpc needs at least one worker, e.g. --rpc 192.168.1.20:50052")
    if len(out) > MAX_WORKERS:
        raise UsageError(f"--rpc lists {len(out)} workers; ggml supports at most {MAX_WORKERS}")
    return out


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("closed")
        buf += chunk
    return buf


def _call(sock: socket.socket, cmd: int, payload: bytes, reply_size: int) -> bytes:
    sock.sendall(bytes([cmd]) + struct.pack("<Q", len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if size != reply_size:
        raise ValueError(f"reply of {size} bytes, expected {reply_size}")
    return _recv_exact(sock, size)


def probe(ep: Endpoint, timeout: float = 3.0) -> WorkerInfo:
    """Connect, handshake, count devices, read their memory; one-line RpcError otherwise.

    ggml's server serves one client at a time, so a worker that accepts but
    does not answer HELLO within `timeout` is busy with another client.
    """
    name = f"RPC worker {ep.text}"
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
    except ConnectionRefusedError:
        raise RpcError(f"{name}: connection refused (is `gemma rpc-worker` running there on port {ep.port}?)") from None
    except TimeoutError:
        raise RpcError(f"{name}: no answer within {timeout:g}s (host down, or a firewall drops port {ep.port})") from None
    except OSError as exc:
        raise RpcError(f"{name}: cannot connect: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            rsp = _call(sock, _CMD_HELLO, bytes(_CONN_CAPS), 4 + _CONN_CAPS)
        except TimeoutError:
            raise RpcError(
                f"{name}: accepted the connection but did not answer within {timeout:g}s; "
                "a worker serves one client at a time: is another gemma using it, or is it not a gemma rpc-worker?"
            ) from None
        except (ConnectionError, ValueError):
            raise RpcError(
                f"{name}: closed the connection during the handshake; it probably runs a different "
                "llama.cpp RPC protocol version: install the same llama-cpp-python version on both machines"
            ) from None
        version = (rsp[0], rsp[1], rsp[2])
        if version[0] != PROTO_VERSION[0] or version[1] > PROTO_VERSION[1]:
            mine = ".".join(map(str, PROTO_VERSION))
            raise RpcError(
                f"{name} speaks RPC protocol {'.'.join(map(str, version))}, this build {mine}: "
                "install the same llama-cpp-python version on both machines"
            )
        t0 = time.perf_counter()
        (count,) = struct.unpack("<I", _call(sock, _CMD_DEVICE_COUNT, b"", 4))
        rtt = time.perf_counter() - t0
        memory = []
        for dev in range(count):
            free, total = struct.unpack("<QQ", _call(sock, _CMD_GET_DEVICE_MEMORY, struct.pack("<I", dev), 16))
            memory.append((free, total))
        if not memory:
            raise RpcError(f"{name} offers no devices")
        return WorkerInfo(ep, version, tuple(memory), rtt)
    except (TimeoutError, ConnectionError, ValueError) as exc:
        raise RpcError(f"{name}: the connection failed after the handshake ({exc})") from None
    finally:
        sock.close()


def round_trip_seconds(ep: Endpoint, n: int = 50, timeout: float = 3.0) -> float:
    """Median time of one tiny request/reply (DEVICE_COUNT) to a worker: the network's share of every RPC call."""
    sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _call(sock, _CMD_HELLO, bytes(_CONN_CAPS), 4 + _CONN_CAPS)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            _call(sock, _CMD_DEVICE_COUNT, b"", 4)
            times.append(time.perf_counter() - t0)
        times.sort()
        return times[len(times) // 2]
    finally:
        sock.close()


def port_refuses(ep: Endpoint, timeout: float = 1.0) -> bool:
    """True when nothing listens at the endpoint any more (used to name a worker that died)."""
    try:
        socket.create_connection((ep.host, ep.port), timeout=timeout).close()
        return False
    except OSError:
        return True


def worker_report(spec: str, timeout: float = 2.0) -> list[tuple[bool, str]]:
    """(reachable, one line) per worker of a --rpc/GEMMA_RPC spec: what `gemma doctor` shows."""
    out: list[tuple[bool, str]] = []
    for part in (p for p in spec.split(",") if p.strip()):
        try:
            w = probe(parse_endpoint(part), timeout)
        except GemmaError as exc:
            out.append((False, str(exc)))
            continue
        out.append((True, (
            f"RPC worker {w.endpoint.text}: protocol {'.'.join(map(str, w.version))}, {len(w.memory)} device(s), "
            f"{w.free_bytes / 2**30:.1f} of {w.total_bytes / 2**30:.1f} GiB free, round trip {w.rtt_s * 1000:.2f} ms"
        )))
    return out


def doctor_finding(has_rpc: bool | None, spec: str | None) -> tuple[str, str, str | None]:
    """(status, summary, hint) for `gemma doctor`'s rpc check.

    `has_rpc` is the llama.cpp probe's "rpc" (capabilities(); None when llama.cpp
    cannot load); `spec` is GEMMA_RPC: those workers are probed too.
    """
    if has_rpc is None:
        return "info", "unknown (llama.cpp cannot be loaded)", None
    if not has_rpc:
        return "info", "not compiled in: --rpc and `gemma rpc-worker` are unavailable", BUILD_HINT
    mine = ".".join(map(str, PROTO_VERSION))
    if not spec or not spec.strip():
        return "ok", f"compiled in (protocol {mine}): `gemma rpc-worker` and --rpc HOST:PORT work", None
    report = worker_report(spec)
    lines = "; ".join(line for _, line in report)
    if all(ok for ok, _ in report):
        return "ok", f"compiled in (protocol {mine}); GEMMA_RPC: {lines}", None
    return "warn", f"compiled in (protocol {mine}); GEMMA_RPC: {lines}", "start `gemma rpc-worker` on those hosts, or fix GEMMA_RPC"
