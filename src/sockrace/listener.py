"""Listening sockets and an accept loop that keeps the server within a file-descriptor budget.

asyncio's own accept loop (start_server) accepts whatever arrives, and when accept() fails for want
of file descriptors (EMFILE) it logs a traceback, pauses one second and tries again, for as long as
the shortage lasts. This one holds at most `limit` accepted sockets at a time (the server counts
each until it is closed, see `release`): at the limit it stops watching the listening sockets, and
the kernel's backlog keeps the next connections waiting until a socket is released. An EMFILE that
happens anyway (other sockets of the same process, as in `sockrace counter`) pauses it as quietly,
for RETRY_AFTER_SHORTAGE_S or until a socket is released.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import Final

log = logging.getLogger("sockrace.server")

# asyncio's default backlog for start_server, kept.
LISTEN_BACKLOG: Final = 100
# At most this many accept() calls per readiness of a listening socket, as asyncio does, so that a
# flood of connects cannot hold the loop away from the connections being served.
ACCEPT_BATCH: Final = 100
# After an accept() that failed for want of file descriptors or memory, the listening sockets
# rest this long unless one of ours is released first (asyncio waits a second; the shortage is
# usually over sooner, when short-lived connections close).
RETRY_AFTER_SHORTAGE_S: Final = 0.25
# File descriptors left for everything but accepted connections: stdio, the event loop's selector
# and wake-up pipe, the listening sockets, the idle sweeper, a log file, a DNS lookup.
FD_HEADROOM: Final = 32

_SHORTAGE: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def open_fd_count() -> int | None:
    """File descriptors this process holds now, where the system lists them (Linux, macOS)."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory)) - 1  # less the one listdir() itself held open
        except OSError:
            continue
    return None


def fd_budget(headroom: int = FD_HEADROOM) -> int | None:
    """How many more sockets this process may open before RLIMIT_NOFILE: None when unlimited or
    unknown. Always at least 1, so that a server at the edge still serves someone."""
    try:
        import resource  # here: there is none on Windows
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = open_fd_count()
    if soft == resource.RLIM_INFINITY or in_use is None:
        return None
    return max(1, soft - in_use - headroom)


async def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to ("" means every interface), as
    start_server binds them. Raises OSError when one cannot be bound (and closes the others)."""
    try:
        # A numeric address (or "") needs no resolver: no thread of the loop's pool, and bytes rather
        # than str, so that no idna codec is imported (about 10 ms at the first server's start).
        found = socket.getaddrinfo(host.encode("ascii") or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST)
    except (UnicodeEncodeError, socket.gaierror):  # a name: resolved off the loop, as asyncio does
        found = await asyncio.get_running_loop().getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):  # getaddrinfo may repeat itself
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                # One socket per family, as asyncio does: without V6ONLY the IPv6 one would also
                # claim the IPv4 port and the second bind would fail.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Listener:
    """Accepts connections on `sockets` while fewer than `limit` accepted ones are held, handing
    each (non-blocking) to `accepted`. Call `release()` once for every socket handed over, when it
    is closed."""

    def __init__(self, sockets: list[socket.socket], accepted: Callable[[socket.socket], None],
                 limit: int) -> None:
        self.sockets = sockets
        self.limit = limit
        self.held = 0  # accepted sockets not released yet
        self._accepted = accepted
        self._loop = asyncio.get_running_loop()
        self._watching = False
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self) -> None:
        self._watch()

    def release(self) -> None:
        self.held -= 1
        if not self._closed and self.held < self.limit:
            self._watch()

    def close(self) -> None:
        """Stop accepting and close the listening sockets (held connections are the server's)."""
        self._closed = True
        self._unwatch()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for sock in self.sockets:
            sock.close()

    def _watch(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if not self._watching and not self._closed:
            self._watching = True
            for sock in self.sockets:
                self._loop.add_reader(sock, self._accept, sock)

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            for sock in self.sockets:
                self._loop.remove_reader(sock)

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            if self.held >= self.limit:
                self._unwatch()  # the kernel's backlog holds the rest until release()
                return
            try:
                sock, _ = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                self._accept_failed(exc)
                return
            sock.setblocking(False)
            self.held += 1
            self._accepted(sock)

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno not in _SHORTAGE:
            log.debug("accept() failed: %r", exc)  # one connection's trouble, not the listener's
            return
        log.debug("accept() failed with %d sockets held: %r; pausing", self.held, exc)
        self._unwatch()
        if self._retry is None:
            self._retry = self._loop.call_later(RETRY_AFTER_SHORTAGE_S, self._watch)
