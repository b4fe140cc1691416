"""FaultProxy: a TCP proxy in front of any server, injecting the seeded faults of faults.py.

Each accepted connection gets its own upstream connection and two pumps, one per direction (link.py:
a pump hands what its source socket received to the direction's plan, forwarding.py executes it).
The fault log is faultlog.py's.

Memory is bounded per connection: a socket receives into a fixed buffer of READ_CAPACITY bytes and
stops reading when it is full; a pump holds at most one unit (MAX_UNIT_BYTES) and waits for the
other socket to drain below WRITE_HIGH_WATER after every write. A peer that does not read therefore
stops the proxy reading from the other side, whose sender then blocks in its own kernel buffers.

Connections are bounded too: at most `max_connections` are forwarded at once; those past it are closed
at once (an "over_limit" record in the fault log each). The accept loop is the server's (listener.py): it
accepts no more than the process's open-file limit leaves room for, two descriptors a connection,
and lets the kernel's backlog hold the rest instead of failing accept() with EMFILE. A quiet
connection holds no receive buffer (see endpoint.py), so memory follows the bytes in flight.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Final

from sockrace.check.endpoint import Arrivals, Buffers, Endpoint
from sockrace.check.faultlog import LOG_LIMIT, FaultLog, LogFile
from sockrace.check.faults import FaultRecord, Faults
from sockrace.check.link import ConnectionStatistics, Link, Pumps
from sockrace.check.pacing import Pacer
from sockrace.errors import FaultLogError as FaultLogError  # defined there, named here too
from sockrace.listener import Listener, bind, fd_budget

CONNECT_TIMEOUT_S: Final = 5.0  # a connect to a live loopback server takes well under a millisecond
# Connections forwarded at once. The server's own default (1024, a common `ulimit -n`), so that a proxy
# in front of a default server refuses no more than the server would; the open-file limit usually
# binds first (two descriptors a connection), and then connections wait in the backlog instead.
DEFAULT_MAX_CONNECTIONS: Final = 1024
FDS_PER_CONNECTION: Final = 2  # the client's socket and the upstream socket
# FaultProxy's keyword arguments that make its Faults: Faults' own fields, named once, there.
FAULT_OPTIONS: Final = frozenset(f.name for f in fields(Faults))


@dataclass(frozen=True, slots=True)
class ProxyStatistics:
    accepted: int  # every connection accepted, those closed over the limit included
    open: tuple[ConnectionStatistics, ...]
    over_limit: int = 0  # connections closed at once because max_connections were open


def _check_address(name: str, value: object, *, port_zero: bool) -> tuple[str, int]:
    low = 0 if port_zero else 1
    message = f"{name} must be (host, port) with a port from {low} to 65535, got {value!r}"
    if not (isinstance(value, tuple | list) and len(value) == 2):
        raise ValueError(message)
    host, port = value
    if not (isinstance(host, str) and host and type(port) is int and low <= port <= 65535):
        raise ValueError(message)
    return host, port


class FaultProxy:
    """A seeded fault-injecting TCP proxy: `async with FaultProxy(upstream=(host, port), seed=S,
    split=True) as proxy:` then connect to (proxy.host, proxy.port).

    Listens on `listen` (default 127.0.0.1 on a free port); every accepted connection is forwarded to
    its own connection to `upstream`. Fault options are those of `Faults` (or pass `faults=`); all are
    off by default. `proxy.log` lists what was done (FaultRecord, at most `log_limit`; `on_record`, which
    must not raise, sees every record as it is made). A refused upstream closes the client at once.
    At most `max_connections` connections are forwarded at once; those past it are closed at once and
    logged ("over_limit"). `pacer` (pacing.py) is told every write and reset; one that follows a tape
    decides them instead. Raises ValueError for bad arguments, OSError when it cannot listen.
    """

    def __init__(
        self, upstream: tuple[str, int], seed: int = 0, *, listen: tuple[str, int] = ("127.0.0.1", 0),
        faults: Faults | None = None, on_record: Callable[[FaultRecord], None] | None = None,
        log_limit: int = LOG_LIMIT, connect_timeout_s: float = CONNECT_TIMEOUT_S,
        pacer: Pacer | None = None, max_connections: int = DEFAULT_MAX_CONNECTIONS,
        faulting: bool = True, **options: Any,
    ) -> None:
        self.upstream = _check_address("upstream", upstream, port_zero=False)
        self.listen = _check_address("listen", listen, port_zero=True)
        if type(seed) is not int:
            raise ValueError(f"seed must be an integer, got {seed!r}")
        for name in options:
            if name not in FAULT_OPTIONS:  # the error a keyword missing from the signature would raise
                raise TypeError(f"FaultProxy() got an unexpected keyword argument {name!r}")
        if faults is not None and options:
            raise ValueError("give either faults=Faults(...) or fault options, not both")
        self._log = FaultLog(log_limit, on_record)
        if not (isinstance(connect_timeout_s, int | float) and 0 < connect_timeout_s < float("inf")):
            raise ValueError(
                f"connect_timeout_s must be a number of seconds above 0, got {connect_timeout_s!r}")
        if type(max_connections) is not int or max_connections < 1:
            raise ValueError(f"max_connections must be an integer >= 1, got {max_connections!r}")
        self.seed = seed
        self.max_connections = max_connections
        self.faults = faults if faults is not None else Faults(**options)
        self._pacer = pacer
        self._listener: Listener | None = None
        self._links: dict[int, Link] = {}
        self._arrivals = Arrivals()
        self._buffers = Buffers()  # the receive buffers of every socket of this proxy
        # faulting=False until start_faults(): what the connections carry before (a check's set-up
        # loading its data) goes through as it comes, and draws nothing of the seeded plans.
        self._pumps = Pumps(self.upstream, float(connect_timeout_s), self.faults, seed, pacer,
                                      self._log, self._new_endpoint, faulting=faulting)
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepted = 0
        self._serving = 0  # accepted connections not closed yet, over the limit ones excepted
        self._over_limit = 0
        self._closing = False

    @property
    def log(self) -> list[FaultRecord]:
        return self._log.records

    @property
    def log_dropped(self) -> int:
        return self._log.dropped

    @property
    def records_total(self) -> int:
        """Every record made, kept in `log` or not."""
        return self._log.total

    def start_faults(self, *, delay_ms: tuple[float, float] | None = None) -> None:
        """From now on every connection, those already open included, gets its faults; with
        `delay_ms`, its delays drawn in that range instead (a range calibrated on what ran before:
        nothing was drawn of the plans until now, so the seed decides as it would have)."""
        if delay_ms is not None:
            self.faults = replace(self.faults, delay_ms=delay_ms)
            self._pumps.faults = self.faults
            for link in self._links.values():
                for flow in link.flows or ():
                    flow.plan.calibrate_delays(delay_ms)
        self._pumps.faulting = True

    @property
    def address(self) -> tuple[str, int]:
        if self._listener is None or self._closing:
            raise RuntimeError("the proxy is not listening: use `async with FaultProxy(...)` or start()")
        host, port = self._listener.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    async def start(self) -> FaultProxy:
        """Listen; raises OSError when the address cannot be bound."""
        if self._listener is not None:
            raise RuntimeError("the proxy is already started")
        self._log.start()
        sockets = await bind(*self.listen)
        # One over the limit, so that the connection past it is accepted, logged and closed at once
        # rather than left waiting in the backlog; but no more than the open-file limit leaves room for.
        limit = self.max_connections + 1
        budget = fd_budget()
        if budget is not None:
            limit = min(limit, max(1, budget // FDS_PER_CONNECTION))
        self._listener = Listener(sockets, self._accepted_socket, limit)
        self._listener.start()
        return self

    async def close(self) -> None:
        """Stop listening and abort every connection; returns when all are closed (also when called
        again, or while another close is under way)."""
        if self._listener is None:
            return
        if not self._closing:
            self._closing = True
            self._listener.close()
            for task in self._tasks:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def statistics(self) -> ProxyStatistics:
        return ProxyStatistics(self._accepted, tuple(link.statistics() for link in self._links.values()),
                               self._over_limit)

    def own_sockets(self) -> tuple[frozenset[int], tuple[str, int] | None]:
        """The descriptors of the proxy's own sockets (listening, and both ends it holds of every
        connection) and the address its clients connect to (None once closed): what tells the stuck
        watch a socket of the wire from one a client keeps to elsewhere (hammer.nothing_can_wake)."""
        fds: set[int] = set()
        if self._listener is not None:
            fds.update(sock.fileno() for sock in self._listener.sockets)
        for link in self._links.values():
            for endpoint in link.endpoints:
                sock = None if endpoint.transport is None else endpoint.transport.get_extra_info("socket")
                if sock is not None and sock.fileno() >= 0:
                    fds.add(sock.fileno())
        address = None if self._listener is None or self._closing else self.address
        return frozenset(fds), address

    def server_owes(self) -> bool:
        """Whether some open connection waits on the server (see link.Link.server_owes): while it does,
        a call still waiting is waiting for a slow server, not stuck in the client."""
        return any(link.server_owes() for link in self._links.values())

    def arrivals(self) -> int:
        """How many reads the proxy's sockets have made so far: unchanged between two looks, nothing
        moved on the wire in either direction."""
        return self._arrivals.count

    def _new_endpoint(self, on_made: Callable[[Endpoint], None] | None = None) -> Endpoint:
        return Endpoint(on_made=on_made, arrivals=self._arrivals, buffers=self._buffers)

    def _accepted_socket(self, sock: socket.socket) -> None:
        """The listener's: a connection accepted. Over the limit it is closed at once; otherwise it is
        forwarded by a task of its own, which tells the listener when both its sockets are closed."""
        assert self._listener is not None
        number = self._accepted
        self._accepted += 1
        if self._serving >= self.max_connections:
            self._over_limit += 1
            self._log.note(number, None, 0, "over_limit", peer=_peer(sock), limit=self.max_connections)
            sock.close()
            self._listener.release()
            return
        self._serving += 1
        task = asyncio.get_running_loop().create_task(self._serve_socket(number, sock),
                                                      name=f"sockrace proxy link {number}")
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._served, number))

    async def _serve_socket(self, number: int, sock: socket.socket) -> None:
        served = False
        try:
            try:
                await asyncio.get_running_loop().connect_accepted_socket(
                    functools.partial(self._new_endpoint, functools.partial(self._accept, number)), sock)
            except OSError:  # reset before it could be wrapped: nothing was forwarded, nothing to log
                sock.close()
                return
            link = self._links.get(number)
            if link is not None:  # None: the proxy was closing when the socket was wrapped
                served = True
                await self._pumps.serve(link, self._ended)
        finally:
            unserved = None if served else self._links.pop(number, None)
            if unserved is not None:  # opened, then the proxy closed before it was served: its end is logged
                unserved.client.abort()
                self._log.note(number, None, 0, "close", how="cancelled")
            self._serving -= 1
            assert self._listener is not None
            self._listener.release()

    def _accept(self, number: int, client: Endpoint) -> None:
        """The client's socket is wrapped (Endpoint.connection_made): the pacer must see its first
        read, which may come before the task that wrapped it runs again."""
        if self._closing:
            client.abort()
            return
        self._links[number] = Link(number, client)
        if self._pacer is not None:
            client.on_received = functools.partial(self._pacer.arrived, number)
        assert client.transport is not None
        peer = client.transport.get_extra_info("peername")
        self._log.note(number, None, 0, "open", peer=f"{peer[0]}:{peer[1]}" if peer else "?")

    def _ended(self, link: Link) -> None:
        del self._links[link.number]

    def _served(self, number: int, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.note(number, None, 0, "error", error=repr(task.exception()))


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:  # reset already
        return "?"
    return f"{host}:{port}"


async def serve_proxy(
    upstream: tuple[str, int], *, faults: Faults, seed: int = 0, listen: tuple[str, int] = ("127.0.0.1", 0),
    announce: Callable[[str], None], log_path: str | os.PathLike[str] | None = None,
    log: Callable[[FaultRecord], None] | None = None, stop: asyncio.Event | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> None:
    """Run a FaultProxy until SIGINT or SIGTERM (or `stop` is set), then close it and its connections.

    `announce` receives status lines (where it listens, then a summary). Every fault record, as it
    is made, is written to `log_path` as one line of JSON and passed to `log`. Raises ValueError for
    bad arguments and OSError when the log cannot be opened or the address not bound, before
    anything is announced. At most `max_connections` are forwarded at once (see FaultProxy).

    A write to `log_path` that fails (disk full, ...) stops the proxy as a signal would, but without
    the summary, and raises FaultLogError once every connection is closed: a fault log with a hole
    in it would tell a wrong story, and forwarding on without one would hide the faults it injects.
    """
    sinks = [log] if log is not None else []

    def record(entry: FaultRecord) -> None:
        for sink in sinks:
            sink(entry)

    proxy = FaultProxy(upstream, seed, listen=listen, faults=faults, log_limit=0, on_record=record,
                       max_connections=max_connections)
    stop = stop if stop is not None else asyncio.Event()
    log_file: LogFile | None = None
    try:
        if log_path is not None:
            log_file = LogFile(log_path, stop.set)
            sinks.append(log_file.write)
        await _serve_until_signalled(
            proxy, announce, stop, failed=lambda: log_file is not None and log_file.error is not None)
    finally:
        if log_file is not None:
            log_file.close()
    if log_file is not None:
        log_file.raise_error()


async def _serve_until_signalled(
    proxy: FaultProxy, announce: Callable[[str], None], stop: asyncio.Event, *,
    failed: Callable[[], bool] = lambda: False,
) -> None:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    upstream, seed, faults = proxy.upstream, proxy.seed, proxy.faults
    try:
        async with proxy:
            host, port = proxy.address
            announce(f"sockrace proxy listening on {host}:{port}, forwarding to {upstream[0]}:{upstream[1]} "
                     f"(seed {seed}; faults: {faults.describe()})")
            await stop.wait()
            open_at_stop = len(proxy.statistics().open)
        if failed():  # the caller says why it stopped
            return
        statistics = proxy.statistics()
        over_limit = (f"; closed at once, over the limit of {proxy.max_connections}: {statistics.over_limit}"
                      if statistics.over_limit else "")
        announce(f"sockrace proxy stopped ({open_at_stop} connections open); "
                 f"connections served: {statistics.accepted - statistics.over_limit}{over_limit}; "
                 f"fault log records: {proxy.records_total}")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
