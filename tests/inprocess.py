"""A whole check run in-process and deterministic: sockrace's server, the clients of clients.py, seeded
faults on an in-memory link, and a loop whose clock only moves when nothing is ready to run.

Over real sockets a reply lands when the kernel says; here every byte is delivered by a timer of
the loop, at the moment the fault plan (check/faults.py, the proxy's own plan) draws for it, and
the clock jumps from timer to timer. Deadlines (asyncio.timeout) and delays then meet in the same
order on every run: the same setting gives the same outcomes, call for call.

    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        runner.run(sweep(in_process_attempt("naive"), setting, range(20)))
"""

from __future__ import annotations

import asyncio
import selectors
from collections import deque
from typing import cast

from clients import (
    CLIENTS,
    LINE_LIMIT,
    Client,
    DisconnectOnCancelClient,
    LockedClient,
    MultiplexedClient,
    NaiveClient,
)

from helpers import MemoryWriter, value
from sockrace.check import hammer
from sockrace.check.explore import Attempt, Setting
from sockrace.check.faults import Decision, Direction, DirectionPlan, Faults
from sockrace.check.forwarding import Forwarder, Unit
from sockrace.check.passes import DelegatingSelector
from sockrace.check.result import HammerResult
from sockrace.server import Server, ServerConfig

# Timers due within this much of the clock are due: the sums of float delays drift by far less.
DUE_SLACK_S = 1e-9
# An in-memory run ends within a few virtual seconds; this bounds waiting for the server to finish.
SERVER_CLOSE_S = 5.0


class _JumpingSelector(DelegatingSelector):
    """Polls the real selector (the loop's self-pipe) without blocking; when nothing is ready and
    the loop would sleep until its next timer, moves the clock there instead."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__(selectors.DefaultSelector())
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self.inner.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only another thread can wake the loop
            return self.inner.select(None)
        self._loop.now += timeout
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time: `time()` starts at 0 and jumps to the next timer when the
    loop has nothing else to do."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self.now


_EOF = b""


class FaultyWriter(MemoryWriter):
    """A MemoryWriter that delivers its writes as the proxy would its reads (forwarding.Forwarder,
    the proxy's own executor): each write is a read of the direction; a unit gathers the writes its
    coalesce target asks for, within the coalesce window from its first; it is delivered after its
    drawn delay, cut into its drawn pieces with their pauses, in order; a drawn reset ends the peer's
    stream with ConnectionResetError."""

    def __init__(self, peer: asyncio.StreamReader, plan: DirectionPlan) -> None:
        super().__init__(peer)
        self.forwarder = Forwarder(plan)
        self.loop = asyncio.get_running_loop()
        self.queue: deque[tuple[float, bytes | None]] = deque()  # (due, bytes); b"": EOF; None: reset
        self.last_due = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.window: asyncio.TimerHandle | None = None  # closes the coalescing unit being gathered
        self.unit_began = 0.0
        self.decisions: list[Decision] = []  # what the plan decided, in order

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("memory stream closed")
        if not data:
            return
        self.written += data
        if self.forwarder.in_hand == 0:
            self.unit_began = self.loop.time()
        unit = self.forwarder.take(bytes(data))
        if unit is None:
            if self.window is None:
                self.window = self.loop.call_at(self.unit_began + self.forwarder.window_s, self._flush)
            return
        self._schedule(unit)

    def _flush(self) -> None:
        unit = self.forwarder.flush()
        if unit is not None:
            self._schedule(unit)

    def _schedule(self, unit: Unit) -> None:
        if self.window is not None:
            self.window.cancel()
            self.window = None
        self.decisions.extend(unit.delivery.decisions)
        due = max(self.unit_began + unit.delivery.delay_ms / 1000, self.last_due)
        for pause_ms, piece in unit.pieces():
            if pause_ms is not None:
                due += pause_ms / 1000
            self._queue(due, bytes(piece))
        if unit.delivery.reset:
            self.closed = True
            self._queue(due, None)

    def _queue(self, due: float, chunk: bytes | None) -> None:
        self.last_due = due
        self.queue.append((due, chunk))
        if self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self._deliver)

    def _deliver(self) -> None:
        self.timer = None
        while self.queue and self.queue[0][0] <= self.loop.time() + DUE_SLACK_S:
            _, chunk = self.queue.popleft()
            if self.peer.at_eof() or self.peer.exception() is not None:
                continue
            if chunk is None:
                self.peer.set_exception(ConnectionResetError("connection reset (seeded fault)"))
            elif chunk is _EOF:
                self.peer.feed_eof()
            else:
                self.peer.feed_data(chunk)
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._deliver)

    def close(self) -> None:
        if not self.closed:
            self._flush()  # the source ended: the unit being gathered goes as it is
        if not self.closed:
            self.closed = True
            self._queue(max(self.last_due, self.loop.time()), _EOF)

    def write_eof(self) -> None:
        self._flush()
        self._queue(max(self.last_due, self.loop.time()), _EOF)


class InProcessServer:
    """sockrace's server, reached over FaultyWriter links drawn from (faults, seed): connection n's
    plans are the ones the proxy would draw for its connection n."""

    def __init__(self, faults: Faults, seed: int) -> None:
        self.server = Server(ServerConfig())
        self.faults, self.seed = faults, seed
        self.connections = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def open_connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        number = self.connections
        self.connections += 1
        client_reader = asyncio.StreamReader(limit=LINE_LIMIT)
        server_reader = asyncio.StreamReader()
        client_writer = FaultyWriter(server_reader, DirectionPlan(self.faults, self.seed, number,
                                                                  Direction.TO_SERVER))
        server_writer = FaultyWriter(client_reader, DirectionPlan(self.faults, self.seed, number,
                                                                  Direction.TO_CLIENT))
        handler = self.server.handle_connection(server_reader, cast(asyncio.StreamWriter, server_writer))
        self.tasks.append(asyncio.get_running_loop().create_task(handler))
        return client_reader, cast(asyncio.StreamWriter, client_writer)

    async def load(self, count: int) -> None:
        """k<i> = v<i> for every call, set over a connection of its own with no faults."""
        faults, self.faults = self.faults, Faults()
        try:
            reader, writer = await self.open_connection()
        finally:
            self.faults = faults
        writer.write(b"".join(f"SET k{i} {value(i)}\n".encode() for i in range(count)))
        for _ in range(count):
            assert (await reader.readline()).startswith(b"OK")
        writer.close()

    async def close(self) -> None:
        await asyncio.wait_for(asyncio.gather(*self.tasks), SERVER_CLOSE_S)


class _InMemory:
    """Opens (and reopens) the connection of a clients.py client in memory, to `server`."""

    server: InProcessServer
    reader: asyncio.StreamReader | None
    writer: asyncio.StreamWriter | None

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await self.server.open_connection()
        return self.reader, self.writer


class _Naive(_InMemory, NaiveClient):
    pass


class _Locked(_InMemory, LockedClient):
    pass


class _DisconnectOnCancel(_InMemory, DisconnectOnCancelClient):
    pass


class _Multiplexed(_InMemory, MultiplexedClient):
    pass


IN_MEMORY: dict[str, type[_Naive | _Locked | _DisconnectOnCancel | _Multiplexed]] = {
    "naive": _Naive,
    "locked": _Locked,
    "disconnect-on-cancel": _DisconnectOnCancel,
    "multiplexed": _Multiplexed,
}
assert IN_MEMORY.keys() == CLIENTS.keys()


def in_process_client(name: str, server: InProcessServer) -> Client:
    """The client `name` of clients.py, connecting (and reconnecting) to `server` in memory."""
    client = IN_MEMORY[name]("memory", 0)
    client.server = server
    return client


def in_process_attempt(name: str) -> Attempt:
    """An attempt (explore.Attempt) that runs the client `name` against a fresh in-process server:
    call i is GET k<i>, which must return v<i>."""

    async def attempt(setting: Setting) -> HammerResult:
        server = InProcessServer(setting.faults, setting.seed)
        await server.load(setting.tasks * setting.calls)
        client = in_process_client(name, server)
        try:
            return await hammer(lambda i: client.get(f"k{i}"), value, tasks=setting.tasks,
                                calls=setting.calls, timeout_ms=setting.timeout_ms, seed=setting.seed,
                                label=name)
        finally:
            await client.aclose()
            await server.close()

    return attempt
