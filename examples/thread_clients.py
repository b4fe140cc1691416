"""Synchronous clients of sockrace's line protocol shared by threads: `sockrace check --backend threads`.

    sockrace server --port 7777 &
    sockrace check examples/thread_clients.py:naive --upstream 127.0.0.1:7777 --backend threads   # exit 1
    sockrace check examples/thread_clients.py:locked --upstream 127.0.0.1:7777 --backend threads \\
        --client-timeout 5                                                                         # exit 1
    sockrace check examples/thread_clients.py:closing --upstream 127.0.0.1:7777 --backend threads \\
        --client-timeout 5                                                                         # exit 0

Call i is `ECHO c<i>` and must return "c<i>". Each task is a thread; they share the one client the
scenario made, as a web application's worker threads share a connection.

    naive    one socket, no lock: two threads' requests and reads interleave, and a thread reads the
             reply another one is owed
    locked   a lock around each request and a socket timeout (CLIENT_TIMEOUT_S): a call that times
             out raises, but the socket stays open with the reply still owed on it, and the next
             call reads that stale reply
    closing  the same, but a call that fails in any way closes the socket (its reply could still
             come) and the next call connects afresh: it never crosses

`--client-timeout 5` tells sockrace the clients' timeout (5 ms), so that the proxy's seeded delays
land around it (docs/check.md). Plain functions (`naive`) or generator functions yielding
(call, expect) once and closing the client after (`locked`, `closing`). Runs on Python 3.7 and later.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: the module also runs on Python 3.7 under sockrace's driver (--python)
    from collections.abc import Callable, Iterator

    Call = Callable[[int], object]
    Expect = Callable[[int], object]

CLIENT_TIMEOUT_S = 0.005  # what `--client-timeout 5` says to sockrace
LINE_LIMIT = 64 * 1024  # replies are one short line; a garbled stream must not grow a buffer


def expect(i: int) -> str:
    return f"c{i}"


def _value(line: bytes) -> str:
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    if not text.startswith("OK "):
        raise RuntimeError(f"unexpected reply {text!r}")
    return text[3:]


class LineSocket:
    """A socket read line by line into a buffer of its own. (A `socket.makefile()` reader refuses to
    read again once a read timed out; this one keeps what it has and reads on, as most clients do.)"""

    def __init__(self, address: tuple[str, int], timeout_s: float | None) -> None:
        self.sock = socket.create_connection(address)
        self.sock.settimeout(timeout_s)
        self.buffer = bytearray()

    def request(self, line: bytes) -> bytes:
        self.sock.sendall(line)
        return self.read_line()

    def read_line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                return line
            if len(self.buffer) > LINE_LIMIT:
                raise RuntimeError("a reply line over the limit")
            chunk = self.sock.recv(4096)  # socket.timeout (TimeoutError from 3.10) after the timeout
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def naive(address: tuple[str, int]) -> tuple[Call, Expect]:
    """No lock, no timeout: the threads' writes and reads interleave on the one socket."""
    connection = LineSocket(address, None)

    def call(i: int) -> object:
        return _value(connection.request(f"ECHO c{i}\n".encode()))

    return call, expect


class LockedClient:
    """One request at a time, each read bounded by the socket timeout; a timeout leaves the socket
    as it is, the late reply still to come on it."""

    def __init__(self, address: tuple[str, int], timeout_s: float) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.lock = threading.Lock()
        self.connection = LineSocket(address, timeout_s)

    def echo(self, text: str) -> str:
        with self.lock:
            return _value(self.connection.request(f"ECHO {text}\n".encode()))

    def close(self) -> None:
        self.connection.close()


class ClosingClient(LockedClient):
    """LockedClient, but a request that fails in any way (a timeout above all) closes the socket, so
    that its late reply can reach no one; the next request connects afresh."""

    def __init__(self, address: tuple[str, int], timeout_s: float) -> None:
        LockedClient.__init__(self, address, timeout_s)
        self.broken = False

    def echo(self, text: str) -> str:
        with self.lock:
            if self.broken:
                self.connection = LineSocket(self.address, self.timeout_s)
                self.broken = False
            try:
                return _value(self.connection.request(f"ECHO {text}\n".encode()))
            except BaseException:
                self.connection.close()
                self.broken = True
                raise


def locked(address: tuple[str, int]) -> Iterator[tuple[Call, Expect]]:
    client = LockedClient(address, CLIENT_TIMEOUT_S)
    try:
        yield (lambda i: client.echo(f"c{i}")), expect
    finally:
        client.close()


def closing(address: tuple[str, int]) -> Iterator[tuple[Call, Expect]]:
    client = ClosingClient(address, CLIENT_TIMEOUT_S)
    try:
        yield (lambda i: client.echo(f"c{i}")), expect
    finally:
        client.close()
