"""Server options for the demonstrations: --out-of-order (anyio client) and --unsafe-incr (in memory)."""

from __future__ import annotations

import asyncio

import pytest
from test_server import connect

from helpers import MemoryLink
from sockrace.server import Server, ServerConfig


@pytest.mark.anyio
@pytest.mark.timeout(10)
async def test_out_of_order_answers_each_request_when_it_is_done() -> None:
    async with Server(ServerConfig(port=0, out_of_order=True)) as server:
        client = await connect(server)
        async with client.stream:
            await client.send(b"#s SLEEP 100 slow\n#f ECHO fast\nPING\n")
            first = [await client.read_line() for _ in range(2)]
            assert sorted(first) == [b"#f OK fast\n", b"OK PONG\n"]
            assert await client.read_line() == b"#s OK slow\n"


@pytest.mark.anyio
@pytest.mark.timeout(10)
async def test_in_order_is_still_the_default() -> None:
    async with Server(ServerConfig(port=0)) as server:
        client = await connect(server)
        async with client.stream:
            await client.send(b"#s SLEEP 50 slow\n#f ECHO fast\n")
            assert [await client.read_line() for _ in range(2)] == [b"#s OK slow\n", b"#f OK fast\n"]


@pytest.mark.anyio
@pytest.mark.timeout(10)
async def test_out_of_order_quit_waits_for_the_replies_owed_then_closes() -> None:
    async with Server(ServerConfig(port=0, out_of_order=True)) as server:
        client = await connect(server)
        async with client.stream:
            await client.send(b"#s SLEEP 50 owed\nQUIT\nECHO after quit\n")
            assert await client.read_to_eof() == b"#s OK owed\nOK BYE\n"


@pytest.mark.anyio
@pytest.mark.timeout(10)
async def test_out_of_order_eof_answers_what_is_owed_and_an_unterminated_last_line() -> None:
    async with Server(ServerConfig(port=0, out_of_order=True)) as server:
        client = await connect(server)
        async with client.stream:
            await client.send(b"#s SLEEP 30 owed\nECHO last")
            await client.stream.send_eof()
            assert await client.read_to_eof() == b"#s OK owed\nOK last\n"


@pytest.mark.anyio
@pytest.mark.timeout(10)
async def test_out_of_order_bad_lines_get_errors_and_the_connection_stays_usable() -> None:
    async with Server(ServerConfig(port=0, out_of_order=True, max_line=16)) as server:
        client = await connect(server)
        async with client.stream:
            too_long = b"ECHO " + b"x" * 40 + b"\n"
            assert await client.request(too_long) == b"ERR TOOLONG line longer than 16 bytes\n"
            assert await client.request(b"FLY\n") == b"ERR UNKNOWN unknown verb 'FLY'\n"
            assert await client.request(b"#t PING\n") == b"#t OK PONG\n"


@pytest.mark.anyio
@pytest.mark.timeout(10)
async def test_out_of_order_close_delivers_the_reply_in_progress() -> None:
    server = Server(ServerConfig(port=0, out_of_order=True))
    async with server:
        client = await connect(server)
        async with client.stream:
            await client.send(b"#s SLEEP 200 done\n")
            # Polling the server's own counter is the observation itself; there is no event to wait on.
            while server.store.counters.requests == 0:  # noqa: ASYNC110
                await asyncio.sleep(0)
            await server.close()
            assert await client.read_to_eof() == b"#s OK done\n"
    assert server.store.counters.connections == 0


async def _incr_from_each(server: Server, links: int, key: str = "k") -> list[bytes]:
    """Each link sends one INCR in the same loop pass; returns the replies in link order."""
    memory = [MemoryLink(server) for _ in range(links)]
    try:
        for link in memory:
            link.connection.write(f"INCR {key}\n".encode())
        return [await link.connection.read_line() for link in memory]
    finally:
        for link in memory:
            await link.close()


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_unsafe_incr_loses_the_updates_of_concurrent_connections() -> None:
    server = Server(ServerConfig(unsafe_incr=True))
    # All three read 0 before any writes back: the seed tutorial's race, one INCR per connection.
    assert await _incr_from_each(server, 3) == [b"OK 1\n"] * 3
    assert server.store.get("k") == "1"


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_default_incr_is_atomic_under_the_same_interleaving() -> None:
    server = Server(ServerConfig())
    assert await _incr_from_each(server, 3) == [b"OK 1\n", b"OK 2\n", b"OK 3\n"]
    assert server.store.get("k") == "3"


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_unsafe_incr_alone_is_still_correct_and_still_refuses_text() -> None:
    server = Server(ServerConfig(unsafe_incr=True))
    link = MemoryLink(server)
    try:
        for expected in (b"OK 1\n", b"OK 6\n"):
            link.connection.write(b"INCR n\n" if expected == b"OK 1\n" else b"INCR n 5\n")
            assert await link.connection.read_line() == expected
        link.connection.write(b"SET t text\nINCR t\n")
        assert await link.connection.read_line() == b"OK\n"
        assert await link.connection.read_line() == b"ERR NOTINT value at 't' is not an integer\n"
    finally:
        await link.close()
