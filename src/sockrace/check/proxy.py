"""FaultProxy: a TCP proxy in front of any server, injecting the seeded faults of faults.py.

Each accepted connection gets its own upstream connection and two pumps, one per direction. A pump
reads what its source socket received, asks the direction's `DirectionPlan` what to do with it, and
does it: waits, cuts, merges, writes, or resets. A direction without faults is relayed in the socket
callbacks instead (Endpoint.relay_to): no task runs per read, and its pump only waits for the end.

Memory is bounded per connection: a socket receives into a fixed buffer of READ_CAPACITY bytes and
stops reading when it is full; a pump holds at most one unit (MAX_UNIT_BYTES) and waits for the
other socket to drain below WRITE_HIGH_WATER after every write. A peer that does not read therefore
stops the proxy reading from the other side, whose sender then blocks in its own kernel buffers.

Ends: an EOF from the client is passed on (the upstream may still answer, as after `shutdown(SHUT_WR)`);
an EOF from the upstream ends the connection once what it sent has been forwarded; an error on
either socket, a reset fault or closing the proxy abort both sockets. Every end is in the fault log.

Connections are bounded too: at most `max_connections` are forwarded at once; those past it are closed
at once (an "over_limit" record in the fault log each). The accept loop is the server's (listener.py): it
accepts no more than the process's open-file limit leaves room for, two descriptors a connection,
and lets the kernel's backlog hold the rest instead of failing accept() with EMFILE. A quiet
connection holds no receive buffer (see endpoint.py), so memory follows the bytes in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Final, TypedDict, Unpack

from sockrace.check.endpoint import READ_CAPACITY, WRITE_HIGH_WATER, Arrivals, Buffers, End, Endpoint
from sockrace.check.faults import (
    COALESCE_LIMIT_BYTES,
    Direction,
    DirectionPlan,
    FaultRecord,
    Faults,
)
from sockrace.check.forwarding import Forwarder, Unit
from sockrace.check.pacing import Pacer, follow
from sockrace.errors import FaultLogError as FaultLogError  # defined there, named here too
from sockrace.listener import Listener, bind, fd_budget

MAX_UNIT_BYTES: Final = COALESCE_LIMIT_BYTES + READ_CAPACITY  # the last read may push a unit over the limit
# A direction's bytes in the proxy: its receive buffer, the unit in hand, and the sending transport's
# buffer (which may exceed the high-water mark by the one write that crossed it).
MAX_BUFFERED_PER_DIRECTION: Final = READ_CAPACITY + 2 * MAX_UNIT_BYTES + WRITE_HIGH_WATER
MAX_BUFFERED_PER_CONNECTION: Final = 2 * MAX_BUFFERED_PER_DIRECTION
CONNECT_TIMEOUT_S: Final = 5.0  # a connect to a live loopback server takes well under a millisecond
CLOSE_GRACE_S: Final = 2.0  # how long a graceful close may flush to a slow reader before it is aborted
LOG_LIMIT: Final = 100_000  # records kept in `proxy.log`; `on_record` still sees every one
# Connections forwarded at once. The server's own default (1024, a common `ulimit -n`), so that a proxy
# in front of a default server refuses no more than the server would; the open-file limit usually
# binds first (two descriptors a connection), and then connections wait in the backlog instead.
DEFAULT_MAX_CONNECTIONS: Final = 1024
FDS_PER_CONNECTION: Final = 2  # the client's socket and the upstream socket


class FaultOptions(TypedDict, total=False):
    """The keyword arguments of FaultProxy that become its `Faults` (see Faults for their meaning)."""

    delay_ms: tuple[float, float] | None
    split: float
    split_max_fragments: int
    split_pause_ms: tuple[float, float]
    coalesce: float
    coalesce_max_chunks: int
    coalesce_window_ms: float
    reset: float
    reset_after_bytes: tuple[int, int]
    direction: str


@dataclass(frozen=True, slots=True)
class FlowStatistics:
    received: int  # bytes read from the source socket
    delivered: int  # bytes handed to the destination socket
    buffered: int  # bytes in the proxy now: receive buffer + unit in hand + destination's send buffer
    reading_paused: bool  # the proxy reads no more from the source until the destination drains


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    connection: int
    to_server: FlowStatistics
    to_client: FlowStatistics


@dataclass(frozen=True, slots=True)
class ProxyStatistics:
    accepted: int  # every connection accepted, those closed over the limit included
    open: tuple[ConnectionStatistics, ...]
    over_limit: int = 0  # connections closed at once because max_connections were open


class _Flow:
    """One direction of one connection: its plan, its source and destination, its counters."""

    def __init__(self, plan: DirectionPlan, source: Endpoint, destination: Endpoint,
                 pacer: Pacer | None) -> None:
        self.plan = plan
        self.forwarder = Forwarder(plan)
        self.pacer = pacer
        self.direction = plan.direction
        self.source = source
        self.destination = destination
        self.received = 0
        self.delivered = 0
        self.in_hand = 0

    def relayed(self, data: bytes) -> None:
        self.received += len(data)
        self.delivered += len(data)
        if self.pacer is not None:
            self.pacer.wrote(self.plan.connection, self.direction, data)

    def statistics(self) -> FlowStatistics:
        buffered = self.source.receiving + self.in_hand + self.destination.sending
        return FlowStatistics(self.received, self.delivered, buffered, self.source.reading_paused)


class _Link:
    """One proxied connection: the client's socket, the upstream socket once connected, the flows."""

    def __init__(self, number: int, client: Endpoint) -> None:
        self.number = number
        self.client = client
        self.upstream: Endpoint | None = None
        self.flows: tuple[_Flow, _Flow] | None = None

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return (self.client,) if self.upstream is None else (self.client, self.upstream)

    def start_flows(self, upstream: Endpoint, faults: Faults, seed: int,
                    pacer: Pacer | None) -> tuple[_Flow, _Flow]:
        self.upstream = upstream
        self.flows = (
            _Flow(DirectionPlan(faults, seed, self.number, Direction.TO_SERVER), self.client, upstream,
                  pacer),
            _Flow(DirectionPlan(faults, seed, self.number, Direction.TO_CLIENT), upstream, self.client,
                  pacer),
        )
        return self.flows

    def server_owes(self) -> bool:
        """Whether this connection waits on the server, not on the client: the upstream connect is
        under way; bytes are in the proxy on their way (a delay, a coalescing window) or wait for the
        server to read them; the server has not spoken yet (it may speak first); or the client spoke
        last (requests forwarded, nothing back since). Bytes waiting for the client to read them are
        the client's turn."""
        client, upstream = self.client, self.upstream
        if upstream is None:
            return not client.lost
        if client.lost or upstream.lost:
            return False
        if self.flows is not None:
            to_server, to_client = self.flows
            if (to_server.in_hand or client.receiving or upstream.sending
                    or to_client.in_hand or upstream.receiving):
                return True
        return upstream.last_in == 0 or client.last_in > upstream.last_in

    def statistics(self) -> ConnectionStatistics:
        idle = FlowStatistics(0, 0, self.client.receiving, self.client.reading_paused)
        if self.flows is None:
            return ConnectionStatistics(self.number, idle, FlowStatistics(0, 0, 0, False))
        return ConnectionStatistics(self.number, self.flows[0].statistics(), self.flows[1].statistics())


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
        faulting: bool = True, **options: Unpack[FaultOptions],
    ) -> None:
        self.upstream = _check_address("upstream", upstream, port_zero=False)
        self.listen = _check_address("listen", listen, port_zero=True)
        if type(seed) is not int:
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if faults is not None and options:
            raise ValueError("give either faults=Faults(...) or fault options, not both")
        if type(log_limit) is not int or log_limit < 0:
            raise ValueError(f"log_limit must be an integer >= 0, got {log_limit!r}")
        if not (isinstance(connect_timeout_s, int | float) and 0 < connect_timeout_s < float("inf")):
            raise ValueError(
                f"connect_timeout_s must be a number of seconds above 0, got {connect_timeout_s!r}")
        if type(max_connections) is not int or max_connections < 1:
            raise ValueError(f"max_connections must be an integer >= 1, got {max_connections!r}")
        self.seed = seed
        self.max_connections = max_connections
        self.faults = faults if faults is not None else Faults(**options)
        self.log: list[FaultRecord] = []
        self.log_dropped = 0
        self.records_total = 0  # kept in `log` or not
        self._on_record = on_record
        self._log_limit = log_limit
        self._connect_timeout_s = float(connect_timeout_s)
        self._pacer = pacer
        self._listener: Listener | None = None
        self._links: dict[int, _Link] = {}
        self._arrivals = Arrivals()
        self._buffers = Buffers()  # the receive buffers of every socket of this proxy
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepted = 0
        self._forwarding = 0  # accepted connections not closed yet, over the limit ones excepted
        self._over_limit = 0
        self._started_at = 0.0
        self._closing = False
        # False until start_faults(): what the connections carry before (a check's set-up loading
        # its data) goes through as it comes, and draws nothing of the seeded plans.
        self._faulting = faulting

    def start_faults(self) -> None:
        """From now on every connection, those already open included, gets its faults."""
        self._faulting = True

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
        self._started_at = asyncio.get_running_loop().time()
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

    def server_owes(self) -> bool:
        """Whether some open connection waits on the server (see _Link.server_owes): while it does, a
        call still waiting is waiting for a slow server, not stuck in the client."""
        return any(link.server_owes() for link in self._links.values())

    def arrivals(self) -> int:
        """How many reads the proxy's sockets have made so far: unchanged between two looks, nothing
        moved on the wire in either direction."""
        return self._arrivals.count

    def _record(self, connection: int, direction: Direction | None, offset: int, fault: str,
                **params: object) -> None:
        name = None if direction is None else direction.value
        self._keep(FaultRecord(self._elapsed_ms(), connection, name, offset, fault, params))

    def _keep(self, record: FaultRecord) -> None:
        self.records_total += 1
        if len(self.log) < self._log_limit:
            self.log.append(record)
        else:
            self.log_dropped += 1
        if self._on_record is not None:
            self._on_record(record)

    def _accepted_socket(self, sock: socket.socket) -> None:
        """The listener's: a connection accepted. Over the limit it is closed at once; otherwise it is
        forwarded by a task of its own, which tells the listener when both its sockets are closed."""
        assert self._listener is not None
        number = self._accepted
        self._accepted += 1
        if self._forwarding >= self.max_connections:
            self._over_limit += 1
            self._record(number, None, 0, "over_limit", peer=_peer(sock), limit=self.max_connections)
            sock.close()
            self._listener.release()
            return
        self._forwarding += 1
        task = asyncio.get_running_loop().create_task(self._serve_socket(number, sock),
                                                      name=f"sockrace proxy link {number}")
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._served, number))

    async def _serve_socket(self, number: int, sock: socket.socket) -> None:
        served = False
        try:
            try:
                await asyncio.get_running_loop().connect_accepted_socket(
                    lambda: Endpoint(on_made=functools.partial(self._accept, number), arrivals=self._arrivals,
                                     buffers=self._buffers), sock)
            except OSError:  # reset before it could be wrapped: nothing was forwarded, nothing to log
                sock.close()
                return
            link = self._links.get(number)
            if link is not None:  # None: the proxy was closing when the socket was wrapped
                served = True
                await self._serve(link)
        finally:
            unserved = None if served else self._links.pop(number, None)
            if unserved is not None:  # opened, then the proxy closed before it was served: its end is logged
                unserved.client.abort()
                self._record(number, None, 0, "close", how="cancelled")
            self._forwarding -= 1
            assert self._listener is not None
            self._listener.release()

    def _accept(self, number: int, client: Endpoint) -> None:
        """The client's socket is wrapped (Endpoint.connection_made): the pacer must see its first
        read, which may come before the task that wrapped it runs again."""
        if self._closing:
            client.abort()
            return
        self._links[number] = _Link(number, client)
        if self._pacer is not None:
            client.on_received = functools.partial(self._pacer.arrived, number)
        assert client.transport is not None
        peer = client.transport.get_extra_info("peername")
        self._record(number, None, 0, "open", peer=f"{peer[0]}:{peer[1]}" if peer else "?")

    def _served(self, number: int, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._record(number, None, 0, "error", error=repr(task.exception()))

    async def _serve(self, link: _Link) -> None:
        how = "cancelled"
        try:
            upstream = await self._connect(link)
            if upstream is None:
                how = "refused"
                return
            end = await self._run_flows(*link.start_flows(upstream, self.faults, self.seed, self._pacer))
            if end in (End.SOURCE_LOST, End.DESTINATION_LOST):
                self._note_losses(link)
            how = end.value
            if end is End.EOF:
                for endpoint in link.endpoints:
                    endpoint.close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_GRACE_S):
                        await asyncio.wait([endpoint.closed for endpoint in link.endpoints])
        finally:
            for endpoint in link.endpoints:
                endpoint.abort()
            await asyncio.wait([endpoint.closed for endpoint in link.endpoints])
            del self._links[link.number]
            moved = {flow.direction.value: flow.delivered for flow in link.flows or ()}
            self._record(link.number, None, 0, "close", how=how, **moved)

    async def _connect(self, link: _Link) -> Endpoint | None:
        host, port = self.upstream
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, upstream = await asyncio.get_running_loop().create_connection(
                    lambda: Endpoint(arrivals=self._arrivals, buffers=self._buffers), host, port)
        except OSError as exc:
            reason = (f"no answer within {self._connect_timeout_s:g} s" if isinstance(exc, TimeoutError)
                      else os.strerror(exc.errno) if exc.errno else str(exc))
            self._record(link.number, None, 0, "refused", upstream=f"{host}:{port}", error=reason)
            link.client.close()
            return None
        return upstream

    def _note_losses(self, link: _Link) -> None:
        for side, endpoint in zip(("client", "upstream"), link.endpoints, strict=False):
            if endpoint.lost:
                error = endpoint.error
                self._record(link.number, None, 0, "lost", side=side,
                             error=(error.strerror or repr(error)) if isinstance(error, OSError)
                             else repr(error) if error else "closed")

    async def _run_flows(self, to_server: _Flow, to_client: _Flow) -> End:
        """Pump both directions until the connection ends; EOF when it ended cleanly.

        An EOF from the client is passed on and the upstream's answer still forwarded; any other end
        of either direction ends the connection.
        """
        server_pump = asyncio.create_task(self._pump(to_server))
        client_pump = asyncio.create_task(self._pump(to_client))
        try:
            done, _ = await asyncio.wait((server_pump, client_pump), return_when=asyncio.FIRST_COMPLETED)
            if done == {server_pump} and server_pump.result() is End.EOF:
                to_server.destination.write_eof()
                return await client_pump
            ends = {pump.result() for pump in done}
            return next(end for end in End if end in ends)
        finally:
            for pump in (server_pump, client_pump):
                pump.cancel()
            await asyncio.gather(server_pump, client_pump, return_exceptions=True)

    async def _pump(self, flow: _Flow) -> End:
        source = flow.source
        if flow.pacer is not None and flow.pacer.replaying:
            # A replay writes what the tape holds, then relays the rest as it comes, without faults.
            end = await follow(flow.pacer, flow.plan.connection, flow.direction, source,
                               flow.destination, flow.relayed)
            if end is not None:
                if end is End.EOF:
                    self._record(flow.plan.connection, flow.direction, flow.received, "eof")
                return end
        if not flow.plan.active or (flow.pacer is not None and flow.pacer.replaying):
            relay_end = await source.relay_to(flow.destination, flow.relayed)
            if relay_end is End.EOF:
                self._record(flow.plan.connection, flow.direction, flow.received, "eof")
            return relay_end
        while True:
            chunk = await source.read()
            if not chunk:
                if source.lost:
                    return End.SOURCE_LOST
                self._record(flow.plan.connection, flow.direction, flow.received, "eof")
                return End.EOF
            flow.received += len(chunk)
            end = await self._apply(flow, chunk)
            if end is not None:
                return end

    async def _apply(self, flow: _Flow, chunk: bytes) -> End | None:
        """Forward the unit this read begins (this read, or more when the plan coalesces) as the
        plan decides, or the read as it came while the faults have not begun."""
        if not self._faulting:
            return await self._forward(flow, chunk)
        source, forwarder = flow.source, flow.forwarder
        arrived_at = source.last_arrival
        unit = forwarder.take(chunk)
        deadline = arrived_at + forwarder.window_s
        while unit is None:  # gathering: until the target is reached, the window closes or the source ends
            flow.in_hand = forwarder.in_hand
            chunk = await source.read(deadline)
            if chunk:
                flow.received += len(chunk)
            unit = forwarder.take(chunk) if chunk else forwarder.flush()
        assert unit is not None
        return await self._deliver(flow, unit, arrived_at)

    async def _deliver(self, flow: _Flow, unit: Unit, arrived_at: float) -> End | None:
        """Write one unit's pieces when its plan says, then reset the connection if it says so."""
        delivery = unit.delivery
        flow.in_hand = len(unit.data)
        for decision in delivery.decisions:
            if decision.fault != "reset":
                self._keep(FaultRecord.of(decision, self._elapsed_ms()))
        if delivery.delay_ms:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, arrived_at + delivery.delay_ms / 1000 - loop.time()))
        destination, pacer = flow.destination, flow.pacer
        for pause_ms, piece in unit.pieces():
            if pause_ms is not None:
                await asyncio.sleep(pause_ms / 1000)
            if not destination.write(piece):
                return End.DESTINATION_LOST
            if pacer is not None:
                pacer.wrote(flow.plan.connection, flow.direction, piece)
            flow.delivered += len(piece)
            flow.in_hand -= len(piece)
            if not await destination.drain():
                return End.DESTINATION_LOST
        flow.in_hand = 0
        if not delivery.reset:
            return None
        for decision in delivery.decisions:
            if decision.fault == "reset":
                self._keep(FaultRecord.of(decision, self._elapsed_ms()))
        if pacer is not None:
            pacer.reset(flow.plan.connection, flow.direction)
        flow.source.close(rst=True)
        destination.close(rst=True)
        return End.RESET

    async def _forward(self, flow: _Flow, chunk: bytes) -> End | None:
        """Write one read on unchanged, as a direction without faults would."""
        destination = flow.destination
        if not destination.write(chunk):
            return End.DESTINATION_LOST
        if flow.pacer is not None:
            flow.pacer.wrote(flow.plan.connection, flow.direction, chunk)
        flow.delivered += len(chunk)
        return None if await destination.drain() else End.DESTINATION_LOST

    def _elapsed_ms(self) -> float:
        return (asyncio.get_running_loop().time() - self._started_at) * 1000


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:  # reset already
        return "?"
    return f"{host}:{port}"


class _LogFile:
    """The fault log as JSON lines in a file, each line flushed as it is made. The first write that
    fails (disk full, ...) is kept in `error`, nothing more is written, and `failed` is called."""

    def __init__(self, path: str | os.PathLike[str], failed: Callable[[], None]) -> None:
        self.path = os.fspath(path)
        self.error: OSError | None = None
        self._failed = failed
        # A local file opened once; a record's line costs the loop no more than a print does.
        self._file: IO[str] = open(path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed by close()

    def write(self, record: FaultRecord) -> None:
        if self.error is not None:
            return
        try:
            self._file.write(record.to_json() + "\n")
        except OSError as exc:
            self.error = exc
            self._failed()

    def close(self) -> None:
        try:
            self._file.close()  # closes the file even when its last flush fails
        except OSError as exc:
            if self.error is None:
                self.error = exc

    def raise_error(self) -> None:
        if self.error is not None:
            error = self.error
            raise FaultLogError(error.errno, error.strerror or str(error), self.path) from error


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
    log_file: _LogFile | None = None
    try:
        if log_path is not None:
            log_file = _LogFile(log_path, stop.set)
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
