"""Bind the socket, say where we listen, and run uvicorn until interrupted.

The socket is bound here rather than by uvicorn so a port in use is one clear
error line, and so port 0 (any free port) reports the port actually bound;
tests start servers that way without racing for a free port.
"""

from __future__ import annotations

import os
import socket
import sys

from gemma_cli.errors import GemmaError
from gemma_cli.server.settings import Settings


def bind(settings: Settings) -> socket.socket:
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise GemmaError(f"cannot resolve {settings.host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = "; is another `gemma serve` running? set GEMMA_HOST=127.0.0.1:PORT to use another port" if exc.errno == 98 else ""
        raise GemmaError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}{hint}") from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(settings: Settings) -> None:
    """Run the server in the foreground until Ctrl-C or SIGTERM."""
    import uvicorn

    from gemma_cli.server.app import create_app

    sock = bind(settings)
    where = url_of(sock)
    scope = ("loopback only: other machines cannot connect (set GEMMA_HOST=0.0.0.0:PORT to allow them)"
             if settings.loopback else "ALL reachable interfaces: anyone who can reach this port can use the API")
    sys.stderr.write(f"gemma serve: listening on {where} ({scope})\n")
    if settings.rpc:
        sys.stderr.write(f"gemma serve: models load split across RPC workers {settings.rpc} (drafters stay local)\n")
    sys.stderr.flush()
    app = create_app(settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            app.state.manager.cancel_all()  # running streams end within a step, so shutdown is prompt
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        log_level="info" if settings.verbose else "warning",
        access_log=False,  # our middleware writes one line per request
        lifespan="on",
        timeout_graceful_shutdown=3,
        server_header=False,
    )
    server = Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if settings.rpc:
            _leave_now()


def _leave_now() -> None:
    """End a `--rpc` server without waiting for its threads (called in `finally`, after uvicorn stopped).

    A thread parked inside ggml on a lost or frozen worker never returns, and the
    interpreter waits for every worker thread at exit. A stop the user asked for
    (SIGTERM, Ctrl-C, or uvicorn returning) exits 0 at once; an error propagates.
    """
    exc = sys.exc_info()[1]
    if exc is not None and isinstance(exc, Exception):
        return
    sys.stderr.write("gemma serve: stopped\n")
    sys.stderr.flush()
    os._exit(0)
