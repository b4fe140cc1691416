"""FaultProxy over real loopback sockets: forwarding, faults, bounds, ends, shutdown, the fault log."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import signal
import socket
import struct
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import settle
from sockrace.check import Direction, FaultProxy, FaultRecord, Faults, serve_proxy, simulate
from sockrace.check import proxy as proxy_module
from sockrace.check.endpoint import READ_CAPACITY, End
from sockrace.check.faults import DirectionPlan
from sockrace.check.link import MAX_BUFFERED_PER_DIRECTION, Flow, FlowStatistics, Pumps
from sockrace.check.proxy import FaultLogError
from sockrace.server import Server

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

DEADLINE_S = 10.0  # every wait on the network in these tests; a loopback round trip takes microseconds


class Upstream(asyncio.Protocol):
    """One connection of RecordingServer: echoes, never reads ("sink"), or sends without end ("flood")."""

    def __init__(self, server: RecordingServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.append(self)
        if self.server.mode in ("sink", "flood"):
            transport.pause_reading()
        if self.server.mode == "flood":
            self.resume_writing()

    def data_received(self, data: bytes) -> None:
        self.server.reads.append(data)
        if self.server.mode == "echo" and self.transport is not None:
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        while not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"f" * 65536)
            self.server.flooded += 65536

    def die(self, *, rst: bool) -> None:
        assert self.transport is not None
        if rst:
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        else:
            self.transport.close()


class RecordingServer:
    """A tiny upstream that records every read it makes (one data_received per recv())."""

    def __init__(self, mode: str = "echo", *, small_buffers: bool = False) -> None:
        self.mode = mode
        self.small_buffers = small_buffers
        self.reads: list[bytes] = []
        self.connections: list[Upstream] = []
        self.flooded = 0
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def __aenter__(self) -> RecordingServer:
        listener = socket.create_server(("127.0.0.1", 0))
        if self.small_buffers:  # inherited by accepted sockets: the kernel holds little for us
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        self._server = await asyncio.get_running_loop().create_server(lambda: Upstream(self), sock=listener)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.abort()
        await self._server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[RecordingServer]:
    async with RecordingServer("echo") as server:
        yield server


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait for an observable state of the proxy or a peer, failing after DEADLINE_S."""
    async with asyncio.timeout(DEADLINE_S):
        while not condition():  # noqa: ASYNC110 - the states polled here have no event to wait on
            await asyncio.sleep(0.001)
    assert condition(), what


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(DEADLINE_S):
        return await asyncio.open_connection(proxy.host, proxy.port)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(DEADLINE_S):
            await writer.wait_closed()
    except OSError:  # the proxy reset it: closed all the same
        pass


async def lock_step(proxy: FaultProxy, lines: int) -> list[bytes]:
    reader, writer = await connect(proxy)
    replies = []
    async with asyncio.timeout(DEADLINE_S):
        for i in range(lines):
            writer.write(b"ECHO c0.%d.payload-%d\n" % (i, i))
            await writer.drain()
            replies.append(await reader.readline())
        writer.write_eof()
        assert await reader.read() == b""
    await close(writer)
    await wait_until(lambda: not proxy.statistics().open, "the proxy closed the connection")
    return replies


def faults_of(proxy: FaultProxy, fault: str) -> list[FaultRecord]:
    return [record for record in proxy.log if record.fault == fault]


async def test_forwards_both_ways_and_logs_how_the_connection_went(server: Server) -> None:
    async with FaultProxy(upstream=server.address, seed=1) as proxy:
        assert proxy.host == "127.0.0.1"
        replies = await lock_step(proxy, 5)
    assert replies == [b"OK c0.%d.payload-%d\n" % (i, i) for i in range(5)]
    assert [(r.fault, r.direction) for r in proxy.log] == [
        ("open", None), ("eof", "to_server"), ("eof", "to_client"), ("close", None)]
    assert proxy.log[-1].params == {"how": "eof", "to_server": 5 * 20, "to_client": 5 * 18}
    assert proxy.log[1].offset == 100


async def test_split_coalesce_and_delay_keep_the_bytes_exact(echo: RecordingServer) -> None:
    stream = random.Random(5).randbytes(1 << 20)
    faults = Faults(delay_ms=(0, 1), split=True, split_pause_ms=(0, 0.2), coalesce=0.5, coalesce_window_ms=1)
    async with FaultProxy(echo.address, seed=9, faults=faults) as proxy:
        reader, writer = await connect(proxy)

        async def send() -> None:
            pieces = random.Random(6)
            position = 0
            while position < len(stream):
                size = pieces.randint(1, 8192)
                writer.write(stream[position:position + size])
                position += size
                await writer.drain()
            writer.write_eof()

        async with asyncio.timeout(DEADLINE_S * 2):
            sending = asyncio.create_task(send())
            received = await reader.read()  # to EOF: the echo's EOF ends the connection
            await sending
        await close(writer)
    assert len(received) == len(stream)
    assert received == stream
    for fault in ("split", "coalesce", "delay"):
        assert {r.direction for r in faults_of(proxy, fault)} == {"to_server", "to_client"}, fault


async def test_split_writes_each_fragment_separately(echo: RecordingServer) -> None:
    message = b"ECHO " + b"x" * 200 + b"\n"
    faults = Faults(split=True, split_max_fragments=5, split_pause_ms=(20, 20), direction="to_server")
    async with FaultProxy(echo.address, seed=3, faults=faults) as proxy:
        reader, writer = await connect(proxy)
        writer.write(message)
        async with asyncio.timeout(DEADLINE_S):
            assert await reader.readexactly(len(message)) == message
        await close(writer)
    [split] = faults_of(proxy, "split")
    fragments = split.params["fragments"]
    assert len(fragments) >= 2
    assert [len(read) for read in echo.reads] == fragments, "the upstream read each fragment on its own"


async def test_coalesce_delivers_several_reads_in_one_write(echo: RecordingServer) -> None:
    lines = [b"ECHO c%d\n" % i for i in range(4)]
    faults = Faults(coalesce=True, coalesce_max_chunks=4, coalesce_window_ms=DEADLINE_S * 1000,
                    direction="to_server")
    async with FaultProxy(echo.address, seed=2, faults=faults) as proxy:
        target = first_coalesce_target(proxy)
        reader, writer = await connect(proxy)
        sent = 0
        for line in lines[:target]:
            writer.write(line)
            sent += len(line)
            await wait_until(has_received(proxy, sent), "the proxy read the line on its own")
        expected = b"".join(lines[:target])
        async with asyncio.timeout(DEADLINE_S):
            assert await reader.readexactly(len(expected)) == expected
        await close(writer)
    assert echo.reads[0] == expected, "the upstream got every line in one read"
    [merge, *_] = faults_of(proxy, "coalesce")
    assert merge.params == {"target": target, "chunks": target, "bytes": len(expected)}


def first_coalesce_target(proxy: FaultProxy) -> int:
    """The coalesce target the proxy draws for the first unit to the server on connection 0."""
    return DirectionPlan(proxy.faults, proxy.seed, 0, Direction.TO_SERVER).coalesce_target()


def has_received(proxy: FaultProxy, count: int) -> Callable[[], bool]:
    """Whether the proxy has read `count` bytes from the client of its one connection."""
    def check() -> bool:
        [connection] = proxy.statistics().open
        return connection.to_server.received == count
    return check


def decisions(log: list[FaultRecord]) -> list[tuple[Any, ...]]:
    """The log without times and peer ports: what must repeat exactly for the same seed."""
    return [(r.connection, r.direction, r.offset, r.fault, sorted(r.params.items()))
            for r in log if r.fault != "open"]


async def test_the_same_seed_gives_the_same_fault_log(server: Server) -> None:
    faults = Faults(delay_ms=(0, 2), split=True, split_pause_ms=(0, 0.5), coalesce=0.3, coalesce_window_ms=1)
    logs = []
    for seed in (4, 4, 5):
        async with FaultProxy(server.address, seed, faults=faults) as proxy:
            replies = await lock_step(proxy, 8)
        assert replies == [b"OK c0.%d.payload-%d\n" % (i, i) for i in range(8)]
        logs.append(decisions(proxy.log))
    assert len(faults_of(proxy, "split")) >= 8
    assert logs[0] == logs[1]
    assert logs[0] != logs[2]


async def test_the_proxy_decides_as_the_pure_plan_does_for_the_same_reads(server: Server) -> None:
    faults = Faults(delay_ms=(0, 1), split=True, split_pause_ms=(0, 0.5))
    async with FaultProxy(server.address, seed=12, faults=faults) as proxy:
        replies = await lock_step(proxy, 6)  # one request or reply per read: the reads are known
    requests = [b"ECHO c0.%d.payload-%d\n" % (i, i) for i in range(6)]
    for direction, reads in ((Direction.TO_SERVER, requests), (Direction.TO_CLIENT, replies)):
        planned = simulate(faults, 12, reads, connection=0, direction=direction).decisions
        assert [(r.offset, r.fault, r.params) for r in proxy.log
                if r.direction == direction.value and r.fault in ("delay", "split")] == \
            [(d.offset, d.fault, d.params) for d in planned]


async def test_an_upstream_that_does_not_answer_the_connect_is_given_up() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        queued = [socket.socket() for _ in range(3)]  # fill the backlog: later SYNs are dropped
        for sock in queued:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(listener.getsockname())
        try:
            async with FaultProxy(listener.getsockname(), connect_timeout_s=0.2) as proxy:
                reader, writer = await connect(proxy)
                async with asyncio.timeout(DEADLINE_S):
                    assert await reader.read() == b""
                await close(writer)
        finally:
            for sock in queued:
                sock.close()
    [refused] = faults_of(proxy, "refused")
    assert refused.params["error"] == "no answer within 0.2 s"


async def test_reset_aborts_both_sides_with_an_rst_at_the_seeded_byte(echo: RecordingServer) -> None:
    async with FaultProxy(echo.address, seed=8, reset=True, reset_after_bytes=(10, 20),
                          direction="to_server") as proxy:
        reader, writer = await connect(proxy)
        writer.write(b"x" * 100)
        async with asyncio.timeout(DEADLINE_S):
            with pytest.raises(ConnectionResetError):
                await reader.read(1000)
        await close(writer)
        await wait_until(lambda: not proxy.statistics().open, "the proxy dropped the connection")
    [reset] = faults_of(proxy, "reset")
    assert 10 <= reset.offset == reset.params["after_bytes"] <= 20
    assert proxy.log[-1].params == {"how": "reset", "to_server": reset.offset, "to_client": 0}


async def test_a_refused_upstream_closes_the_client_at_once() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: a connect is refused
        async with FaultProxy(("127.0.0.1", port), seed=1) as proxy:
            reader, writer = await connect(proxy)
            async with asyncio.timeout(DEADLINE_S):
                assert await reader.read() == b""
            await close(writer)
            await wait_until(lambda: not proxy.statistics().open, "the proxy dropped the connection")
    [refused] = faults_of(proxy, "refused")
    assert refused.params == {"upstream": f"127.0.0.1:{port}", "error": "Connection refused"}
    assert proxy.log[-1].params["how"] == "refused"


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
async def test_an_upstream_dying_mid_run_closes_the_client(echo: RecordingServer, rst: bool) -> None:
    async with FaultProxy(echo.address, seed=1) as proxy:
        reader, writer = await connect(proxy)
        writer.write(b"hello\n")
        async with asyncio.timeout(DEADLINE_S):
            assert await reader.readline() == b"hello\n"
            echo.connections[0].die(rst=rst)
            try:
                assert await reader.read() == b""
            except ConnectionResetError:
                assert rst
        await close(writer)
        await wait_until(lambda: not proxy.statistics().open, "the proxy dropped the connection")
    ends = [(r.fault, r.direction, r.params.get("side")) for r in proxy.log[1:]]
    if rst:
        assert ("lost", None, "upstream") in ends
        assert proxy.log[-1].params["how"] == "source lost"
    else:
        assert ends == [("eof", "to_client", None), ("close", None, None)]


def flow(proxy: FaultProxy, direction: str) -> FlowStatistics:
    [connection] = proxy.statistics().open
    statistics: FlowStatistics = getattr(connection, direction)
    return statistics


# Slow: the proxy's kernel send buffer grows to its maximum before it stops taking bytes, at the pace
# of the kernel's zero-window probes.
@pytest.mark.slow
async def test_a_server_that_never_reads_stops_the_proxy_reading_from_the_client() -> None:
    sink = RecordingServer("sink", small_buffers=True)
    async with sink, FaultProxy(sink.address, seed=1) as proxy:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        client.connect(proxy.address)
        reader, writer = await asyncio.open_connection(sock=client)
        block = b"b" * (1 << 20)
        await wait_until(lambda: bool(proxy.statistics().open), "the proxy accepted")

        def paused() -> bool:
            if writer.transport.get_write_buffer_size() < len(block):
                writer.write(block)  # keep the client pushing until the proxy stops reading
            return flow(proxy, "to_server").reading_paused

        await wait_until(paused, "the proxy stopped reading from the client")
        held = flow(proxy, "to_server")
        await asyncio.sleep(0.05)  # time in which a proxy that kept reading would have read on
        assert flow(proxy, "to_server").received == held.received
        assert held.buffered <= MAX_BUFFERED_PER_DIRECTION
        assert writer.transport.get_write_buffer_size() > 0, "the client's bytes wait on the client's side"
        writer.transport.abort()
        del reader


@pytest.mark.slow
async def test_a_client_that_never_reads_stops_the_proxy_reading_from_the_server() -> None:
    flood = RecordingServer("flood", small_buffers=True)
    async with flood, FaultProxy(flood.address, seed=1) as proxy:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        client.connect(proxy.address)
        client.setblocking(False)
        await wait_until(lambda: bool(proxy.statistics().open) and flow(proxy, "to_client").reading_paused,
                         "the proxy stopped reading from the server")
        held = flow(proxy, "to_client")
        await asyncio.sleep(0.05)  # time in which a proxy that kept reading would have read on
        assert flow(proxy, "to_client").received == held.received
        assert held.buffered <= MAX_BUFFERED_PER_DIRECTION
        assert held.received < flood.flooded
        client.close()


PIPELINED_SETS = 10_000  # about 150 kB of requests: more than the proxy's receive buffer holds


async def test_requests_sent_before_the_upstream_connects_are_all_forwarded(server: Server) -> None:
    requests = b"".join(b"SET k%d v%d\n" % (i, i) for i in range(PIPELINED_SETS))
    async with FaultProxy(server.address, seed=1) as proxy:
        reader, writer = await connect(proxy)
        writer.write(requests)  # at once: the proxy is still connecting upstream when they arrive
        async with asyncio.timeout(DEADLINE_S):
            replies = [await reader.readuntil(b"\n") for _ in range(PIPELINED_SETS)]
        await close(writer)
    assert set(replies) == {b"OK\n"}


@pytest.mark.parametrize("faults", [{}, {"split": True, "split_pause_ms": (0, 0)}], ids=["relay", "faulted"])
async def test_a_direction_whose_source_filled_its_buffer_before_forwarding_began_forwards_everything(
    echo: RecordingServer, faults: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    pump = Pumps.pump

    async def pump_once_the_source_stopped_reading(pumps: Pumps, flow: Flow) -> End:
        # The worst case, made certain: each direction begins only after its source has filled
        # the receive buffer and stopped reading (client to server, then the echo back).
        await wait_until(lambda: flow.source.reading_paused, f"{flow.direction.value}: the buffer filled")
        return await pump(pumps, flow)

    monkeypatch.setattr(Pumps, "pump", pump_once_the_source_stopped_reading)
    stream = random.Random(7).randbytes(4 * READ_CAPACITY)
    async with FaultProxy(echo.address, seed=1, **faults) as proxy:
        reader, writer = await connect(proxy)
        writer.write(stream)
        async with asyncio.timeout(DEADLINE_S):
            echoed = await reader.readexactly(len(stream))
        await close(writer)
    assert echoed == stream


async def test_closing_the_proxy_closes_every_connection_and_leaves_no_task(echo: RecordingServer) -> None:
    before = asyncio.all_tasks()
    proxy = FaultProxy(echo.address, seed=1, delay_ms=(DEADLINE_S * 1000, DEADLINE_S * 1000))
    await proxy.start()
    clients = [await connect(proxy) for _ in range(3)]
    clients[0][1].write(b"held in a delay when the proxy closes\n")
    await wait_until(lambda: len(faults_of(proxy, "delay")) == 1 and len(proxy.statistics().open) == 3,
                     "three connections, one byte stream delayed")
    await proxy.close()
    assert asyncio.all_tasks() - before == set()
    assert proxy.statistics().open == ()
    for reader, writer in clients:
        async with asyncio.timeout(DEADLINE_S):
            assert await reader.read() == b""
        await close(writer)
    assert sorted(r.params["how"] for r in faults_of(proxy, "close")) == ["cancelled"] * 3
    await proxy.close()  # a second close does nothing


async def test_garbage_from_a_client_ends_cleanly(server: Server) -> None:
    async with FaultProxy(server.address, seed=1, split=True) as proxy:
        reader, writer = await connect(proxy)
        writer.write(bytes(range(256)) * 4 + b"\n")
        writer.write_eof()
        async with asyncio.timeout(DEADLINE_S):
            reply = await reader.read()
        assert reply.startswith(b"ERR")
        await close(writer)
        await wait_until(lambda: not proxy.statistics().open, "the proxy dropped the connection")
    assert faults_of(proxy, "error") == []
    assert proxy.log[-1].fault == "close"


async def test_the_log_keeps_at_most_its_limit_and_on_record_sees_all(server: Server) -> None:
    seen: list[FaultRecord] = []
    async with FaultProxy(server.address, seed=1, split=True, split_pause_ms=(0, 0),
                          log_limit=3, on_record=seen.append) as proxy:
        await lock_step(proxy, 3)
    assert len(proxy.log) == 3
    assert proxy.log == seen[:3]
    assert proxy.records_total == len(seen) == 3 + proxy.log_dropped
    assert proxy.log_dropped > 0


async def test_listens_where_it_is_told() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with FaultProxy(("127.0.0.1", 9), listen=("127.0.0.1", port)) as proxy:
        assert proxy.address == ("127.0.0.1", port)


async def test_the_address_is_there_only_while_listening() -> None:
    proxy = FaultProxy(("127.0.0.1", 9))
    with pytest.raises(RuntimeError, match="the proxy is not listening"):
        _ = proxy.port


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"upstream": ("127.0.0.1",)},
         r"upstream must be \(host, port\) with a port from 1 to 65535, got \('127.0.0.1',\)"),
        ({"upstream": ("127.0.0.1", 0)}, r"upstream must be .* got \('127.0.0.1', 0\)"),
        ({"upstream": ("", 80)}, r"upstream must be .* got \('', 80\)"),
        ({"listen": ("127.0.0.1", 70000)}, r"listen must be \(host, port\) with a port from 0 to 65535"),
        ({"seed": "1"}, r"seed must be an integer, got '1'"),
        ({"faults": Faults(), "split": True}, r"give either faults=Faults\(...\) or fault options, not both"),
        ({"log_limit": -1}, r"log_limit must be an integer >= 0, got -1"),
        ({"connect_timeout_s": 0}, r"connect_timeout_s must be a number of seconds above 0, got 0"),
        ({"max_connections": 0}, r"max_connections must be an integer >= 1, got 0"),
        ({"max_connections": 2.5}, r"max_connections must be an integer >= 1, got 2.5"),
        ({"split": 2}, r"split must be a share between 0 and 1"),
    ],
)
def test_bad_arguments_are_refused_in_one_sentence(arguments: dict[str, Any], message: str) -> None:
    arguments = {"upstream": ("127.0.0.1", 9), **arguments}
    with pytest.raises(ValueError, match=message):
        FaultProxy(**arguments)


def test_a_misspelt_fault_option_is_refused_by_its_name() -> None:
    """The fault options are Faults' fields, not a list of FaultProxy's own: a name that is not one
    is refused as Python refuses an unknown keyword."""
    with pytest.raises(TypeError, match=r"^FaultProxy\(\) got an unexpected keyword argument 'splitt'$"):
        FaultProxy(("127.0.0.1", 9), splitt=True)
    assert FaultProxy(("127.0.0.1", 9), split=True, coalesce_window_ms=2).faults == Faults(
        split=True, coalesce_window_ms=2)


async def test_serve_proxy_announces_logs_and_stops_on_sigterm(
    server: Server, tmp_path: Path,
) -> None:
    lines: list[str] = []
    records: list[str] = []
    listening = asyncio.Event()

    def announce(line: str) -> None:
        lines.append(line)
        listening.set()

    serving = asyncio.create_task(serve_proxy(
        server.address, faults=Faults(split=True), seed=7, announce=announce,
        log=lambda record: records.append(record.to_json()), log_path=tmp_path / "faults.jsonl"))
    async with asyncio.timeout(DEADLINE_S):
        await listening.wait()
        port = int(lines[0].split()[4].rstrip(",").rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ECHO x\n")
        assert await reader.readline() == b"OK x\n"
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop while serve_proxy runs
        await serving
        assert await reader.read() == b""
    await close(writer)
    host, upstream_port = server.address
    assert lines[0] == (f"sockrace proxy listening on 127.0.0.1:{port}, forwarding to {host}:{upstream_port} "
                        "(seed 7; faults: split)")
    assert lines[1] == f"sockrace proxy stopped (1 connections open); connections served: 1; " \
                       f"fault log records: {len(records)}"
    assert '"fault":"split"' in records[1]
    assert (tmp_path / "faults.jsonl").read_text().splitlines() == records
    assert [json.loads(line)["fault"] for line in records][-1] == "close"


async def test_serve_proxy_stops_when_told_and_refuses_bad_input_before_listening(
    server: Server, tmp_path: Path,
) -> None:
    lines: list[str] = []
    stop = asyncio.Event()
    stop.set()
    async with asyncio.timeout(DEADLINE_S):
        await serve_proxy(server.address, faults=Faults(), announce=lines.append, stop=stop)
    assert lines[1] == (
        "sockrace proxy stopped (0 connections open); connections served: 0; fault log records: 0")
    with pytest.raises(ValueError, match="seed must be an integer"):
        await serve_proxy(server.address, faults=Faults(), seed=1.5,  # type: ignore[arg-type]
                          announce=lines.append, log_path=tmp_path / "never.jsonl")
    assert not (tmp_path / "never.jsonl").exists()
    with pytest.raises(FileNotFoundError):
        await serve_proxy(server.address, faults=Faults(), announce=lines.append,
                          log_path=tmp_path / "missing" / "log.jsonl")
    assert len(lines) == 2


async def test_the_proxy_tells_whether_the_server_owes_something(echo: RecordingServer) -> None:
    async with FaultProxy(upstream=echo.address, seed=1) as proxy:
        assert not proxy.server_owes()  # no connection: nobody owes anything
        reader, writer = await connect(proxy)
        await wait_until(lambda: len(echo.connections) == 1, "the proxy connected upstream")
        assert proxy.server_owes()  # the server has not spoken yet (some protocols greet first)
        moved = proxy.arrivals()
        writer.write(b"ping\n")
        async with asyncio.timeout(DEADLINE_S):
            assert await reader.readline() == b"ping\n"
        assert proxy.arrivals() >= moved + 2  # one read each way at least
        assert not proxy.server_owes()  # the server answered what it was sent: the client's turn
        writer.write(b"more\n")
        await wait_until(lambda: proxy.arrivals() >= moved + 3, "the proxy read the client's bytes")
        # Sent, not yet echoed back (or echoed and read): owed until the reply is through.
        async with asyncio.timeout(DEADLINE_S):
            assert await reader.readline() == b"more\n"
        assert not proxy.server_owes()
        await close(writer)
        await wait_until(lambda: not proxy.statistics().open, "the proxy closed the connection")
        assert not proxy.server_owes()


async def test_a_server_that_never_answers_owes_for_ever() -> None:
    async with RecordingServer("sink") as sink, FaultProxy(upstream=sink.address, seed=1) as proxy:
        _, writer = await connect(proxy)
        await wait_until(lambda: len(sink.connections) == 1, "the proxy connected upstream")
        writer.write(b"GET k\n")
        await wait_until(lambda: proxy.arrivals() >= 1, "the proxy read the request")
        for _ in range(5):
            await asyncio.sleep(0)
            assert proxy.server_owes()
        await close(writer)


# ------------------------------------------------------------------ bounds on connections and memory


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> bytes:
    writer.write(line)
    async with asyncio.timeout(DEADLINE_S):
        return await reader.readline()


async def closed_by_the_proxy(reader: asyncio.StreamReader) -> bool:
    """Whether the proxy closed this connection (a FIN or a reset), within DEADLINE_S."""
    try:
        async with asyncio.timeout(DEADLINE_S):
            return await reader.read() == b""
    except ConnectionResetError:
        return True


async def test_connections_past_max_connections_are_closed_at_once_and_logged(echo: RecordingServer) -> None:
    async with FaultProxy(echo.address, seed=1, max_connections=2) as proxy:
        kept = [await connect(proxy) for _ in range(2)]
        for reader, writer in kept:
            assert await round_trip(reader, writer, b"forwarded\n") == b"forwarded\n"
        reader, writer = await connect(proxy)
        assert await closed_by_the_proxy(reader)
        await close(writer)
        assert len(echo.connections) == 2  # never forwarded
        assert proxy.statistics().over_limit == 1
        assert [(r.connection, r.params["limit"]) for r in faults_of(proxy, "over_limit")] == [(2, 2)]
        await close(kept[0][1])
        await wait_until(lambda: len(proxy.statistics().open) == 1, "the proxy closed the first connection")
        reader, writer = await connect(proxy)  # a place freed is a place taken
        assert await round_trip(reader, writer, b"in again\n") == b"in again\n"
        await close(writer)
        await close(kept[1][1])
    assert (proxy.statistics().accepted, proxy.statistics().over_limit) == (4, 1)


async def test_the_proxy_accepts_no_more_than_the_open_file_limit_leaves_room_for(
    echo: RecordingServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Room for two connections of two descriptors each; the third waits in the kernel's backlog, as it
    # does for the server, instead of failing accept() with EMFILE (or its upstream connect).
    monkeypatch.setattr(proxy_module, "fd_budget", lambda: 2 * proxy_module.FDS_PER_CONNECTION)
    async with FaultProxy(echo.address, seed=1) as proxy:
        clients = [await connect(proxy) for _ in range(3)]  # connect() returns once in the backlog
        await wait_until(lambda: len(echo.connections) == 2, "two connections forwarded")
        await settle()  # loop passes in which a wrong accept would happen
        assert (proxy.statistics().accepted, len(echo.connections)) == (2, 2)
        await close(clients[0][1])
        reader, writer = clients[2]
        assert await round_trip(reader, writer, b"my turn\n") == b"my turn\n"
        for _, writer in clients[1:]:
            await close(writer)
    assert (proxy.statistics().accepted, proxy.statistics().over_limit) == (3, 0)


QUIET_CONNECTIONS = 40  # enough that the per-connection figure is not a rounding of fixed costs


async def test_a_quiet_connection_holds_no_receive_buffer(server: Server) -> None:
    # Each socket held a READ_CAPACITY buffer from its accept to its close: 2 x 64 KiB a connection,
    # which glibc's malloc then kept (2,000 connections took the proxy from 26 to 338 MiB for good).
    check_sources = tracemalloc.Filter(True, str(Path(proxy_module.__file__).parent / "*"))
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        async with FaultProxy(server.address, seed=1, log_limit=0) as proxy:
            await lock_step(proxy, 1)  # first-use allocations are not per-connection costs

            def traced() -> int:
                snapshot = tracemalloc.take_snapshot().filter_traces([check_sources])
                return sum(stat.size for stat in snapshot.statistics("filename"))

            before = traced()
            clients = [await connect(proxy) for _ in range(QUIET_CONNECTIONS)]
            for reader, writer in clients:
                assert await round_trip(reader, writer, b"PING\n") == b"OK PONG\n"
            per_connection = (traced() - before) / QUIET_CONNECTIONS
            for _, writer in clients:
                await close(writer)
            await wait_until(lambda: not proxy.statistics().open, "the proxy closed every connection")
    finally:
        if not was_tracing:
            tracemalloc.stop()
    assert per_connection < READ_CAPACITY / 2, f"{per_connection / 1024:.1f} KiB per quiet connection"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
async def test_a_log_that_cannot_be_written_stops_serve_proxy_and_closes_its_connections(
    echo: RecordingServer,
) -> None:
    # A write error used to escape into Endpoint.connection_made: every connection left unforwarded,
    # the proxy serving on as if nothing happened.
    lines: list[str] = []
    listening = asyncio.Event()

    def announce(line: str) -> None:
        lines.append(line)
        listening.set()

    serving = asyncio.create_task(serve_proxy(echo.address, faults=Faults(), seed=1, announce=announce,
                                              log_path="/dev/full"))
    async with asyncio.timeout(DEADLINE_S):
        await listening.wait()
    port = int(lines[0].split()[4].rstrip(",").rsplit(":", 1)[1])
    async with asyncio.timeout(DEADLINE_S):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    with pytest.raises(FaultLogError) as raised:
        async with asyncio.timeout(DEADLINE_S):
            await serving  # stops by itself
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, "/dev/full")
    assert raised.value.strerror == "No space left on device"
    assert await closed_by_the_proxy(reader)
    await close(writer)
    assert len(lines) == 1  # where it listened; no summary of a run whose log has a hole


async def test_faults_begin_when_started_on_the_connections_already_open(server: Server) -> None:
    # A check's set-up (loading data) goes through the proxy before its calls: its bytes pass as they
    # come and draw nothing from the seeded plans, until start_faults(), which reaches open connections.
    async with FaultProxy(upstream=server.address, seed=1, delay_ms=(1, 1), split=True,
                          faulting=False) as proxy:
        reader, writer = await connect(proxy)
        async with asyncio.timeout(DEADLINE_S):
            for i in range(3):
                writer.write(b"ECHO c0.%d.before\n" % i)
                assert await reader.readline() == b"OK c0.%d.before\n" % i
        assert [r.fault for r in proxy.log] == ["open"]
        proxy.start_faults()
        async with asyncio.timeout(DEADLINE_S):
            writer.write(b"ECHO c0.3.after\n")
            assert await reader.readline() == b"OK c0.3.after\n"
        faults = {r.fault for r in proxy.log}
        assert {"delay", "split"} <= faults
        await close(writer)
