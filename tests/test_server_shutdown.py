"""Shutdown under load: SIGTERM or Ctrl-C while a hundred clients are busy, against a real process."""

from __future__ import annotations

import asyncio
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

# A request whose reply is as big as itself, so that the replies the server owes keep pace with what
# it reads; a batch is about 10 MB, more than a loopback connection's buffers usually take in.
REQUEST = b"ECHO " + b"x" * 1000 + b"\n"
BATCH = 10_000
# After the server has closed, the client holds the reset or, behind at most the server's send
# buffer of replies (a few MB), the FIN: reading to the end takes milliseconds on loopback.
END_SEEN_WITHIN_S = 5.0


class NeverReadingClient:
    """A connection that sends many requests and reads nothing: the server's replies back up into
    its own transport, so that closing it has unsent bytes to wait for. Only once the server has
    closed does it read, to see how the connection ended.

    Reading paused and nothing left to send, an asyncio transport is watched by nothing in the loop:
    the reset or FIN that ends it would never be noticed. Hence the read at the end, and the
    top-ups while waiting for the server to be stuck: the server's kernel may take in many MB.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        transport = writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        self.transport = transport
        self.requests = 0

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> NeverReadingClient:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect, to keep the window small
        sock.connect(address)
        client = cls(*await asyncio.open_connection(sock=sock))
        client.transport.pause_reading()
        client.send_batch()
        return client

    def send_batch(self) -> None:
        self.writer.write(REQUEST * BATCH)
        self.requests += BATCH

    def unsent(self) -> int:
        return self.writer.transport.get_write_buffer_size()

    async def stuck(self) -> None:
        """Until the server has stopped reading what the client sends (stuck on the replies it
        cannot send): what the client has not sent then stays the same, look after look."""
        sizes = [-1]

        def unchanged() -> bool:
            if self.unsent() == 0 and not self.writer.is_closing():  # the server took it all in
                self.send_batch()
            sizes.append(self.unsent())
            return len(set(sizes[-20:])) == 1

        await wait_until(unchanged)

    async def replies_until_the_end(self) -> int:
        """Read until the connection ends (EOF or reset): how many replies arrived before the end.
        Call it once the server has closed; fails the test if the end does not come."""
        self.transport.resume_reading()
        replies = 0
        try:
            async with asyncio.timeout(END_SEEN_WITHIN_S):
                while chunk := await self.reader.read(1 << 16):
                    replies += chunk.count(b"\n")
        except ConnectionError:  # the server closed with requests unread, so its kernel reset it
            pass
        except TimeoutError:
            pytest.fail(f"the connection was still open {END_SEEN_WITHIN_S:g} s after the server closed")
        finally:
            self.transport.abort()
        return replies

    def abort(self) -> None:
        self.transport.abort()


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
        client = await NeverReadingClient.connect(server.address)
        try:
            # Bytes left in the server's transport can only come from full socket buffers: the
            # server is stuck until the client reads, which it does not do while the server lives.
            await wait_until(lambda: any(c.out.get_write_buffer_size() > 0
                                         for c in server._connections.values()))
            await client.stuck()
            connection_tasks = set(server._tasks)
            if cut_by == "idle timeout":
                # Its task ends when the close that followed the idle timeout has timed out and aborted.
                await wait_until(lambda: not server._tasks)
            else:
                await server.close()  # the same, after the grace, for every connection
            replies = await client.replies_until_the_end()
        finally:
            client.abort()
    assert replies < client.requests  # cut off: not every reply owed was delivered
    # Neither cancelled nor failed: that is what asyncio would report as a traceback.
    assert [t for t in connection_tasks if t.cancelled() or t.exception()] == []
    errors.check()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.slow
async def test_sigterm_with_a_client_that_never_reads_prints_nothing_on_stderr() -> None:
    async with ServerProcess() as server:
        client = await NeverReadingClient.connect(server.address)
        try:
            await client.stuck()
            code = await server.stop(signal.SIGTERM)  # the grace ends, then the close times out
        finally:
            client.abort()
    assert code == 0
    assert server.stderr == ""
    assert server.stdout_lines[-1].startswith("sockrace server shutting down (1 connections open)")
