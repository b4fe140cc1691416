"""Shutdown under load: SIGTERM or Ctrl-C while a hundred clients are busy, against a real process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
from dataclasses import dataclass

import anyio
import pytest

from helpers import LineClient, LoopErrors, ServerProcess, wait_until
from sockrace import server as server_module
from sockrace.server import Server, ServerConfig

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

CLIENTS = 100
WARM_UP = 5  # round trips every client completes before the signal, so that all are truly active

STOPPED = re.compile(
    r"sockrace server shutting down \((\d+) connections open\); "
    r"requests answered: (\d+); connections served: (\d+)"
)


@dataclass
class ClientRecord:
    replies: int = 0
    ended_by: str = ""  # "eof" (clean close) or the exception that ended it


async def busy_client(address: tuple[str, int], number: int, record: ClientRecord, warmed: list[int],
                      all_warm: anyio.Event) -> None:
    """Request, reply, request... until the server closes; every reply must answer its request."""
    async with await anyio.connect_tcp(*address) as stream:
        conn = LineClient(stream)
        while True:
            text = b"%d.%d" % (number, record.replies)
            # Some requests keep the server busy for a while, so shutdown finds connections mid-request.
            line = b"SLEEP 50 " + text if record.replies % 3 == 1 else b"ECHO " + text
            try:
                await conn.send(line + b"\n")
                reply = await conn.read_line()
            except anyio.IncompleteRead:
                record.ended_by = "eof"
                return
            except (anyio.BrokenResourceError, OSError) as exc:
                record.ended_by = repr(exc)
                return
            assert reply == b"OK " + text + b"\n"
            record.replies += 1
            if record.replies == WARM_UP:
                warmed.append(number)
                if len(warmed) == CLIENTS:
                    all_warm.set()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_shutdown_under_load_answers_what_it_read_and_closes_cleanly(sig: signal.Signals) -> None:
    records = [ClientRecord() for _ in range(CLIENTS)]
    warmed: list[int] = []
    all_warm = anyio.Event()
    async with ServerProcess() as server, anyio.create_task_group() as clients:
        for number, record in enumerate(records):
            clients.start_soon(busy_client, server.address, number, record, warmed, all_warm)
        await all_warm.wait()
        code = await server.stop(sig)
    assert code == 0
    assert server.stderr == ""
    assert len(server.stdout_lines) == 2, server.stdout_lines
    assert server.stdout_lines[0].startswith("sockrace server listening on 127.0.0.1:")
    stopped = STOPPED.fullmatch(server.stdout_lines[1])
    assert stopped is not None, server.stdout_lines[1]
    open_at_shutdown, answered, connections = map(int, stopped.groups())
    assert (connections, open_at_shutdown) == (CLIENTS, CLIENTS)
    assert [r.ended_by for r in records] == ["eof"] * CLIENTS  # closed cleanly: no reset, no error
    # Every request the server read was answered, and every answer reached its client.
    print(f"\n{sig.name}: {answered} requests answered on {connections} connections, "
          f"{sum(r.replies for r in records)} replies received, {CLIENTS} clean closes")
    assert sum(r.replies for r in records) == answered
    assert all(r.replies >= WARM_UP for r in records)


async def test_idle_server_stops_at_once_on_sigterm() -> None:
    async with ServerProcess() as server:
        code = await server.stop(signal.SIGTERM)
    assert code == 0
    assert server.stderr == ""
    assert server.stdout_lines == [
        f"sockrace server listening on 127.0.0.1:{server.address[1]}",
        "sockrace server shutting down (0 connections open); requests answered: 0; connections served: 0",
    ]



# ------------------------------------------------------------------ clients that never read


async def stuffed_connection(address: tuple[str, int]) -> asyncio.StreamWriter:
    """A connection that sends many requests and reads nothing: the server's replies back up into
    its own transport, so that closing it has unsent bytes to wait for."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect, to keep the window small
    sock.connect(address)
    _, writer = await asyncio.open_connection(sock=sock)
    transport = writer.transport
    assert isinstance(transport, asyncio.ReadTransport)
    transport.pause_reading()
    writer.write((b"ECHO " + b"x" * 1000 + b"\n") * 10_000)
    return writer


async def stuck(writer: asyncio.StreamWriter) -> None:
    """Until the server has stopped reading what `writer` sends (stuck on the replies it cannot send):
    what the client has not sent then stays the same, look after look."""
    sizes = [-1]

    def unchanged() -> bool:
        sizes.append(writer.transport.get_write_buffer_size())
        return sizes[-1] > 0 and len(set(sizes[-20:])) == 1

    await wait_until(unchanged)


async def cut_off(writer: asyncio.StreamWriter) -> None:
    """Until the server has cut the connection (the client's pending writes then fail)."""
    with contextlib.suppress(OSError):
        await asyncio.wait_for(writer.wait_closed(), 20)
    writer.transport.abort()


@pytest.mark.parametrize("cut_by", ["idle timeout", "shutdown"])
async def test_a_client_that_never_reads_is_cut_off_without_a_traceback(
    cut_by: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Closing such a connection times out and aborts; a second wait on the close used to raise
    # the CancelledError of the first one's timeout, which 3.11 and 3.12 print as a traceback.
    monkeypatch.setattr(server_module, "SHUTDOWN_GRACE_S", 0.3)
    errors = LoopErrors().install()
    config = ServerConfig(port=0, idle_timeout_s=0.3 if cut_by == "idle timeout" else 0)
    async with Server(config) as server:
        writer = await stuffed_connection(server.address)
        # Bytes left in the server's transport can only come from full socket buffers: the server
        # is stuck until the client reads, which it never does.
        await wait_until(lambda: any(c.out.get_write_buffer_size() > 0 for c in server._connections.values()))
        if cut_by == "shutdown":
            await server.close()
        await cut_off(writer)
    errors.check()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.slow
async def test_sigterm_with_a_client_that_never_reads_prints_nothing_on_stderr() -> None:
    async with ServerProcess() as server:
        writer = await stuffed_connection(server.address)
        try:
            await stuck(writer)
            code = await server.stop(signal.SIGTERM)  # the grace ends, then the close times out
        finally:
            writer.transport.abort()
    assert code == 0
    assert server.stderr == ""
    assert server.stdout_lines[-1].startswith("sockrace server shutting down (1 connections open)")
