"""The drivers that serve one connection (serving.py): out of order, --unsafe-incr, and what one
out-of-order connection may hold and leave behind."""

from __future__ import annotations

import asyncio
import time
import tracemalloc

import anyio
import pytest

from helpers import LineClient, LoopErrors, MemoryLink, wait_until
from sockrace.server import SHUTDOWN_GRACE_S, Server, ServerConfig
from sockrace.serving import MAX_OWED_BYTES


@pytest.mark.anyio
@pytest.mark.timeout(10)
async def test_out_of_order_answers_each_request_when_it_is_done() -> None:
    async with Server(ServerConfig(port=0, out_of_order=True)) as server:
        client = await LineClient.connect(server.address)
        async with client.stream:
            await client.send(b"#s SLEEP 100 slow\n#f ECHO fast\nPING\n")
            first = [await client.read_line() for _ in range(2)]
            assert sorted(first) == [b"#f OK fast\n", b"OK PONG\n"]
            assert await client.read_line() == b"#s OK slow\n"


@pytest.mark.anyio
@pytest.mark.timeout(10)
async def test_in_order_is_still_the_default() -> None:
    async with Server(ServerConfig(port=0)) as server:
        client = await LineClient.connect(server.address)
        async with client.stream:
            await client.send(b"#s SLEEP 50 slow\n#f ECHO fast\n")
            assert [await client.read_line() for _ in range(2)] == [b"#s OK slow\n", b"#f OK fast\n"]


@pytest.mark.anyio
@pytest.mark.timeout(10)
async def test_out_of_order_quit_waits_for_the_replies_owed_then_closes() -> None:
    async with Server(ServerConfig(port=0, out_of_order=True)) as server:
        client = await LineClient.connect(server.address)
        async with client.stream:
            await client.send(b"#s SLEEP 50 owed\nQUIT\nECHO after quit\n")
            assert await client.read_to_eof() == b"#s OK owed\nOK BYE\n"


@pytest.mark.anyio
@pytest.mark.timeout(10)
async def test_out_of_order_eof_answers_what_is_owed_and_an_unterminated_last_line() -> None:
    async with Server(ServerConfig(port=0, out_of_order=True)) as server:
        client = await LineClient.connect(server.address)
        async with client.stream:
            await client.send(b"#s SLEEP 30 owed\nECHO last")
            await client.stream.send_eof()
            assert await client.read_to_eof() == b"#s OK owed\nOK last\n"


@pytest.mark.anyio
@pytest.mark.timeout(10)
async def test_out_of_order_bad_lines_get_errors_and_the_connection_stays_usable() -> None:
    async with Server(ServerConfig(port=0, out_of_order=True, max_line=16)) as server:
        client = await LineClient.connect(server.address)
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
        client = await LineClient.connect(server.address)
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


# ------------------------------------------------------------ what an out-of-order connection may hold
def requests_in_progress() -> list[asyncio.Task[object]]:
    """The tasks running out-of-order requests, in every connection of every server."""
    return [task for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "__qualname__", "") == "_OutOfOrder._answer"]


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_a_reset_cancels_the_work_of_that_connection_and_close_keeps_its_grace() -> None:
    errors = LoopErrors().install()
    server = Server(ServerConfig(port=0, out_of_order=True))
    async with server:
        bystander = await LineClient.connect(server.address)
        assert await bystander.request(b"PING\n") == b"OK PONG\n"
        gone = await LineClient.connect(server.address)
        await gone.send(b"".join(b"#%d SLEEP 60000 x\n" % index for index in range(5000)))
        await wait_until(lambda: len(requests_in_progress()) >= 100)
        gone.set_reset_on_close()
        await gone.aclose()
        await wait_until(lambda: server.store.counters.connections == 1)  # only the bystander
        assert requests_in_progress() == []
        assert await bystander.request(b"#b ECHO still served\n") == b"#b OK still served\n"
        await bystander.aclose()
        started = time.monotonic()
    assert time.monotonic() - started < SHUTDOWN_GRACE_S
    errors.check()


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_shutdown_cuts_requests_in_progress_at_the_grace_and_leaves_none() -> None:
    server = Server(ServerConfig(port=0, out_of_order=True))
    async with server:
        client = await LineClient.connect(server.address)
        await client.send(b"".join(b"#%d SLEEP 60000 x\n" % index for index in range(3000)))
        await wait_until(lambda: len(requests_in_progress()) >= 100)
        started = time.monotonic()
    assert time.monotonic() - started < SHUTDOWN_GRACE_S + 1
    assert requests_in_progress() == []
    await client.aclose()


# Per connection that sends without reading: the bound (MAX_OWED_BYTES of replies and requests in
# progress) plus what any connection holds while busy (one read, its framed lines, the stream's
# buffer), with headroom for the allocator. Unbounded, each connection held about 10.9 MiB.
MAX_BYTES_PER_CONNECTION = MAX_OWED_BYTES + 1024 * 1024
GREEDY_CONNECTIONS = 8
GREEDY_REQUESTS = 6000


async def held_per_greedy_connection(config: ServerConfig) -> float:
    """Traced memory per connection once GREEDY_CONNECTIONS clients have each sent GREEDY_REQUESTS
    tagged GETs of a 4 KB value without reading, and the server has stopped reading them."""
    async with Server(config) as server:
        setup = await LineClient.connect(server.address)
        assert await setup.request(b"SET k " + b"v" * 4096 + b"\n") == b"OK\n"
        await setup.aclose()
        requests = b"".join(b"#%d GET k\n" % index for index in range(GREEDY_REQUESTS))
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            clients = [await LineClient.connect(server.address) for _ in range(GREEDY_CONNECTIONS)]
            async with anyio.create_task_group() as senders:
                for client in clients:
                    senders.start_soon(client.send, requests)
                await wait_until_stalled(server)
                held = tracemalloc.get_traced_memory()[0] - before
                senders.cancel_scope.cancel()
        finally:
            tracemalloc.stop()
        for client in clients:
            client.set_reset_on_close()
            await client.aclose()
    return held / GREEDY_CONNECTIONS


async def wait_until_stalled(server: Server) -> None:
    """Until the server's request count stops moving for five polls in a row: it reads no more."""
    previous, unchanged = -1, 0
    with anyio.fail_after(20):
        while unchanged < 5:
            answered = server.store.counters.requests
            unchanged = unchanged + 1 if answered == previous else 0
            previous = answered
            await anyio.sleep(0.05)
    assert previous < GREEDY_CONNECTIONS * GREEDY_REQUESTS + 1, "the server read every request"


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("delay_ms", [0.0, 1.0], ids=["answered at once", "every request a task"])
async def test_a_connection_that_does_not_read_holds_a_bounded_amount(delay_ms: float) -> None:
    held = await held_per_greedy_connection(ServerConfig(port=0, out_of_order=True, delay_ms=delay_ms))
    print(f"\n{held / 1024:.0f} KiB per connection")
    assert held < MAX_BYTES_PER_CONNECTION
