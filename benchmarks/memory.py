"""Server memory per idle connection: what holding many quiet clients costs a server; and the fault
proxy's memory with many connections open and after they closed (`python -m benchmarks.memory`)."""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Final

from benchmarks.processes import environment, rss_bytes, start_server_process, stop_server_process
from benchmarks.variants import REPO_ROOT, THIS_TREE, Tree
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


# ------------------------------------------------------------------ the fault proxy

# The figure: 2,000 connections at once took the proxy from 26 to 338 MiB, and it stayed there.
PROXY_CONNECTIONS: Final = 2_000
# How long the proxy may take to close every connection once the clients are gone (it takes
# milliseconds; the bound only keeps a broken proxy from hanging the benchmark).
PROXY_CLOSE_DEADLINE_S: Final = 30.0


@dataclass(slots=True)
class ProxyMemoryFigure:
    connections: int
    served: int = 0  # connections that answered their PING through the proxy
    before: int = 0  # RSS in bytes, after a few warm-up connections
    open: int = 0  # with every connection open (and answered once)
    after: int = 0  # once every connection is closed again
    again: int = 0  # with as many open once more: what the first ones left is used again
    error: str | None = None

    def describe(self) -> str:
        mib = 1024 * 1024
        text = (f"proxy RSS: {self.before / mib:.1f} MiB before, {self.open / mib:.1f} MiB with "
                f"{self.served} of {self.connections} connections open and answered, "
                f"{self.after / mib:.1f} MiB after they closed, {self.again / mib:.1f} MiB with as many "
                "open again")
        return text if self.error is None else f"{text} ({self.error})"


def _sockrace(*arguments: str, tree: Tree) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sockrace", *arguments], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT, env=environment(tree))


def _listening(process: subprocess.Popen[str]) -> tuple[str, int]:
    assert process.stdout is not None
    line = process.stdout.readline()  # "sockrace ... listening on HOST:PORT[, ...]"
    words = line.split()
    if "on" not in words:
        raise RuntimeError(f"did not start: {line!r}")
    host, _, port = words[words.index("on") + 1].rstrip(",").rpartition(":")
    return host, int(port)


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def measure_proxy_memory(connections: int = PROXY_CONNECTIONS, *, tree: Tree | None = None,
                         proxy_options: tuple[str, ...] = ()) -> ProxyMemoryFigure:
    """`sockrace proxy` in front of `sockrace server`: its RSS before, with `connections` open at
    once (each answered one PING through it), and after they are all closed (Linux)."""
    tree = tree or Tree(THIS_TREE, REPO_ROOT / "src")
    figure = ProxyMemoryFigure(connections)
    _raise_open_file_limit(2 * connections + 200)  # inherited by both children: 2 sockets a connection
    server = _sockrace("server", "--port", "0", "--max-connections", str(connections + 10), tree=tree)
    proxy: subprocess.Popen[str] | None = None
    sockets: list[socket.socket] = []
    try:
        upstream = _listening(server)
        proxy = _sockrace("proxy", "--upstream", f"{upstream[0]}:{upstream[1]}", "--seed", "1",
                          *proxy_options, tree=tree)
        address = _listening(proxy)
        for _ in range(20):  # warm: first-use allocations are not per-connection costs
            with socket.create_connection(address) as sock:
                _ping(sock)
        at_rest = _fd_count(proxy.pid)
        time.sleep(SETTLE_S)
        figure.before = rss_bytes(proxy.pid)
        for round_ in range(2):
            sockets.extend(socket.create_connection(address) for _ in range(connections))
            served = 0
            for sock in sockets:
                try:
                    _ping(sock)
                    served += 1
                except OSError:  # closed by the proxy's cap on connections
                    pass
            time.sleep(SETTLE_S)
            if round_ == 0:
                figure.served, figure.open = served, rss_bytes(proxy.pid)
            else:
                figure.again = rss_bytes(proxy.pid)
            for sock in sockets:
                sock.close()
            sockets.clear()
            deadline = time.monotonic() + PROXY_CLOSE_DEADLINE_S
            while _fd_count(proxy.pid) > at_rest and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(SETTLE_S)
            if round_ == 0:
                figure.after = rss_bytes(proxy.pid)
    except (OSError, RuntimeError) as exc:
        figure.error = f"{type(exc).__name__}: {exc}"
    finally:
        for sock in sockets:
            sock.close()
        if proxy is not None:
            _stop(proxy)
        _stop(server)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description="The fault proxy's memory with many connections and after.")
    parser.add_argument("--connections", type=int, default=PROXY_CONNECTIONS)
    parser.add_argument("proxy_options", nargs="*", help="more options for `sockrace proxy` (after --)")
    args = parser.parse_args()
    print(measure_proxy_memory(args.connections, proxy_options=tuple(args.proxy_options)).describe())


if __name__ == "__main__":
    main()
