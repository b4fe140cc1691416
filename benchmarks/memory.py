"""Server memory per idle connection: what holding many quiet clients costs a server."""

from __future__ import annotations

import resource
import socket
import time
from dataclasses import dataclass
from typing import Final

from benchmarks.processes import rss_bytes, start_server_process, stop_server_process
from benchmarks.variants import Tree
from sockrace import loop as loops

IDLE_CONNECTIONS: Final = 1_000
# Long enough for the server to have accepted and answered the last connection before RSS is read.
SETTLE_S: Final = 0.2


@dataclass(slots=True)
class MemoryFigure:
    server: str
    bytes_per_connection: float = 0.0
    error: str | None = None


def _ping(sock: socket.socket) -> None:
    sock.sendall(b"PING\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            raise ConnectionResetError("server closed the connection")
        reply += chunk


def _raise_open_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted and (hard == resource.RLIM_INFINITY or hard >= wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def measure_idle_memory(kind: str, tree: Tree, connections: int = IDLE_CONNECTIONS) -> MemoryFigure:
    """Server memory growth per idle connection: RSS with `connections` idle minus RSS with a few.

    Each connection answers one PING first, so that the server has really set it up.
    """
    figure = MemoryFigure(kind)
    _raise_open_file_limit(connections + 200)
    process, port = start_server_process(kind, loops.DEFAULT_LOOP, tree)
    sockets: list[socket.socket] = []
    try:
        for _ in range(20):  # warm: first-use allocations are not per-connection costs
            with socket.create_connection(("127.0.0.1", port)) as sock:
                _ping(sock)
        time.sleep(SETTLE_S)
        before = rss_bytes(process.pid)
        for _ in range(connections):
            sock = socket.create_connection(("127.0.0.1", port))
            sockets.append(sock)
            _ping(sock)
        time.sleep(SETTLE_S)
        figure.bytes_per_connection = (rss_bytes(process.pid) - before) / connections
    except OSError as exc:
        figure.error = f"{type(exc).__name__}: {exc}"
    finally:
        for sock in sockets:
            sock.close()
        stop_server_process(process)
    return figure
