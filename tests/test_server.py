"""The server, driven by an independent client written with anyio (not sockrace's own client)."""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest

from helpers import LineClient
from sockrace.server import Server, ServerConfig
from sockrace.serving import READ_SIZE

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]


async def connect(server: Server) -> LineClient:
    return await LineClient.connect(server.address)


async def test_documented_replies(server: Server) -> None:
    client = await connect(server)
    async with client.stream:
        assert await client.request(b"PING\n") == b"OK PONG\n"
        assert await client.request(b"ECHO hi there\n") == b"OK hi there\n"
        assert await client.request(b"INCR visits\n") == b"OK 1\n"
        assert await client.request(b"INCR visits 10\n") == b"OK 11\n"
        assert await client.request(b"SET name ada lovelace\n") == b"OK\n"
        assert await client.request(b"GET name\n") == b"OK ada lovelace\n"
        assert await client.request(b"GET nothing\n") == b"ERR NOKEY no such key 'nothing'\n"
        assert await client.request(b"SLEEP 1 later\n") == b"OK later\n"
        assert await client.request(b"#r7 ECHO tagged\n") == b"#r7 OK tagged\n"
        assert await client.request(b"ping\r\n") == b"OK PONG\n"
        assert await client.request(b"BOGUS\n") == b"ERR UNKNOWN unknown verb 'BOGUS'\n"
        stats = await client.request(b"STATS\n")
        assert stats.startswith(b"OK connections=1 ")
        # NOKEY is an answer about the data; only the unparseable BOGUS counts as a protocol error.
        assert b" requests=12 errors=1 keys=2\n" in stats
        assert await client.request(b"QUIT\n") == b"OK BYE\n"
        assert await client.read_to_eof() == b""


async def test_pipelined_requests_answered_in_order_in_one_read(server: Server) -> None:
    client = await connect(server)
    async with client.stream:
        await client.send(b"".join(b"ECHO %d\n" % i for i in range(500)))
        assert [await client.read_line() for _ in range(500)] == [b"OK %d\n" % i for i in range(500)]


async def test_request_split_across_writes_is_one_request(server: Server) -> None:
    client = await connect(server)
    async with client.stream:
        for piece in (b"EC", b"HO sp", b"lit\r", b"\n"):
            await client.send(piece)
            await anyio.wait_all_tasks_blocked()
        assert await client.read_line() == b"OK split\n"


async def test_bad_line_gets_one_error_and_the_connection_stays_usable(server: Server) -> None:
    client = await connect(server)
    async with client.stream:
        assert await client.request(b"ECHO \xff\xfe\n") == b"ERR BADLINE line is not valid UTF-8\n"
        assert await client.request(b"\n") == b"ERR EMPTY empty request\n"
        assert await client.request(b"PING\n") == b"OK PONG\n"


async def test_unterminated_last_line_is_answered_at_eof(server: Server) -> None:
    client = await connect(server)
    async with client.stream:
        await client.send(b"PING\nECHO last")
        await client.stream.send_eof()
        assert await client.read_to_eof() == b"OK PONG\nOK last\n"


async def test_connections_share_the_store(server: Server) -> None:
    first, second = await connect(server), await connect(server)
    async with first.stream, second.stream:
        assert await first.request(b"INCR shared\n") == b"OK 1\n"
        assert await second.request(b"INCR shared\n") == b"OK 2\n"


async def test_latency_option_still_answers_in_order() -> None:
    async with Server(ServerConfig(port=0, delay_ms=1, jitter_ms=3, seed=4)) as server:
        client = await connect(server)
        async with client.stream:
            await client.send(b"ECHO a\nECHO b\nECHO c\n")
            assert [await client.read_line() for _ in range(3)] == [b"OK a\n", b"OK b\n", b"OK c\n"]


async def test_close_finishes_in_flight_reply_then_closes(server: Server) -> None:
    client = await connect(server)
    async with client.stream:
        await client.send(b"SLEEP 200 done\n")
        # Polling the server's own counter is the observation itself; there is no event to wait on.
        while server.store.counters.requests == 0:  # noqa: ASYNC110
            await asyncio.sleep(0)
        idle = await connect(server)
        async with idle.stream:
            await server.close()
            assert await client.read_to_eof() == b"OK done\n"
            assert await idle.read_to_eof() == b""
    assert server.store.counters.connections == 0


async def test_closed_server_refuses_new_connections() -> None:
    async with Server(ServerConfig(port=0)) as server:
        host, port = server.address
    with pytest.raises(OSError, match="All connection attempts failed"):
        await anyio.connect_tcp(host, port)


async def test_address_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="server is not started"):
        _ = Server().address


async def test_connections_receive_at_most_read_size_per_recv(server: Server) -> None:
    # asyncio's default of 256 KiB per recv() costs three system calls per read (see limit_recv_size).
    client = await connect(server)
    async with client.stream:
        assert await client.request(b"PING\n") == b"OK PONG\n"
        (conn,) = server._connections.values()
        assert getattr(conn.out, "max_size", None) == READ_SIZE


# ------------------------------------------------------------------------------ the idle sweeper
# No timer in the event loop enforces the idle timeout: activity only moves a deadline, and a
# background thread asks the loop a few times per timeout to close the connections idle past theirs.


def sweeper_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "sockrace idle sweeper"]


async def test_serving_requests_leaves_no_timer_pending_in_the_event_loop() -> None:
    # A pending timer makes asyncio's loop compute a select() timeout on every pass; the idle
    # timeout must not cost that on the hot path. asyncio has no public list of pending timers:
    # BaseEventLoop keeps them in _scheduled.
    loop = asyncio.get_running_loop()

    def pending_timers() -> list[asyncio.TimerHandle]:
        return [timer for timer in loop._scheduled if not timer.cancelled()]  # type: ignore[attr-defined]

    async with Server(ServerConfig(port=0, idle_timeout_s=60)) as server:
        conn = await LineClient.connect(server.address)
        try:
            for index in range(20):
                assert await conn.request(b"ECHO %d\n" % index) == b"OK %d\n" % index
                assert pending_timers() == []
        finally:
            await conn.aclose()


async def test_the_sweeper_thread_lives_as_long_as_its_server() -> None:
    assert sweeper_threads() == []
    async with Server(ServerConfig(port=0, idle_timeout_s=60)):
        assert len(sweeper_threads()) == 1
    assert sweeper_threads() == []
    async with Server(ServerConfig(port=0, idle_timeout_s=0)):  # no timeout: nothing to sweep
        assert sweeper_threads() == []
