"""Abrupt endings: the server survives whatever a peer does to its end of the connection.

Every test installs a recording exception handler on the loop (nothing may reach it), checks that
the server logged the event at debug level only, and that other clients are still served after it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import pytest

from helpers import LineClient, LoopErrors, wait_until
from sockrace.server import Server, ServerConfig

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


async def disconnect_mid_line(server: Server) -> None:
    conn = await LineClient.connect(server.address)
    await conn.send(b"PING\nECHO half a li")
    await conn.aclose()


async def reset_while_idle(server: Server) -> None:
    conn = await LineClient.connect(server.address)
    assert await conn.request(b"PING\n") == b"OK PONG\n"
    conn.set_reset_on_close()
    await conn.aclose()


async def reset_mid_line(server: Server) -> None:
    conn = await LineClient.connect(server.address)
    await conn.send(b"ECHO never finish")
    conn.set_reset_on_close()
    await conn.aclose()


async def reset_during_sleep(server: Server) -> None:
    conn = await LineClient.connect(server.address)
    await conn.send(b"PING\nSLEEP 50 late\nPING\n")
    assert await conn.read_line() == b"OK PONG\n"  # the server is now inside SLEEP
    conn.set_reset_on_close()
    await conn.aclose()


async def reset_with_replies_unread(server: Server) -> None:
    """The server is blocked in drain() on replies the client will never read when the reset comes."""
    conn = await LineClient.connect(server.address)
    assert await conn.request(b"SET big " + b"v" * 4000 + b"\n") == b"OK\n"
    requests_before = server.store.counters.requests
    await conn.send(b"GET big\n" * 20_000)  # 80 MB of replies if the server answered them all
    await wait_until(lambda: server.store.counters.requests > requests_before + 100)
    conn.set_reset_on_close()
    await conn.aclose()


async def close_with_replies_unread(server: Server) -> None:
    conn = await LineClient.connect(server.address)
    await conn.send(b"ECHO unread\n" * 50_000)
    await conn.aclose()


async def half_close_then_vanish(server: Server) -> None:
    conn = await LineClient.connect(server.address)
    await conn.send(b"SLEEP 20 x\n")
    await conn.stream.send_eof()
    await conn.aclose()


ABRUPT_ENDINGS: list[Callable[[Server], Awaitable[None]]] = [
    disconnect_mid_line,
    reset_while_idle,
    reset_mid_line,
    reset_during_sleep,
    reset_with_replies_unread,
    close_with_replies_unread,
    half_close_then_vanish,
]


@pytest.mark.parametrize("out_of_order", [False, True], ids=["in order", "out of order"])
@pytest.mark.parametrize("ending", ABRUPT_ENDINGS, ids=lambda f: f.__name__)
async def test_abrupt_ending_is_survived_quietly(
    out_of_order: bool, ending: Callable[[Server], Awaitable[None]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors = LoopErrors().install()
    async with Server(ServerConfig(port=0, out_of_order=out_of_order)) as server:
        bystander = await LineClient.connect(server.address)
        assert await bystander.request(b"PING\n") == b"OK PONG\n"

        await ending(server)
        await wait_until(lambda: server.store.counters.connections == 1)  # only the bystander is left

        assert await bystander.request(b"ECHO still served\n") == b"OK still served\n"
        async with await anyio.connect_tcp(*server.address) as newcomer:
            await newcomer.send(b"PING\n")
            assert await newcomer.receive() == b"OK PONG\n"
        await bystander.aclose()
    errors.check()
    loud = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert loud == [], [r.getMessage() for r in loud]


async def test_reset_is_logged_at_debug_level(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sockrace.server")
    await reset_with_replies_unread(server)
    await wait_until(lambda: server.store.counters.connections == 0)
    ended = [r for r in caplog.records if r.name == "sockrace.server" and "ended" in r.getMessage()]
    assert len(ended) == 1
    assert ended[0].levelno == logging.DEBUG
    assert "ConnectionResetError" in ended[0].getMessage()


async def test_half_close_after_the_last_request_still_gets_every_reply(server: Server) -> None:
    errors = LoopErrors().install()
    conn = await LineClient.connect(server.address)
    requests = b"".join(b"ECHO %d\n" % i for i in range(10_000)) + b"SLEEP 20 slow\nPING\n"
    await conn.send(requests)
    await conn.stream.send_eof()
    replies = await conn.read_to_eof()
    await conn.aclose()
    assert replies == b"".join(b"OK %d\n" % i for i in range(10_000)) + b"OK slow\nOK PONG\n"
    errors.check()


async def test_out_of_order_replies_to_a_departed_client_are_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Late replies finishing after the client closed must not make asyncio log send() failures."""
    caplog.set_level(logging.DEBUG)
    errors = LoopErrors().install()
    async with Server(ServerConfig(port=0, out_of_order=True)) as server:
        conn = await LineClient.connect(server.address)
        await conn.send(b"".join(b"#%d SLEEP %d late\n" % (i, 5 + i) for i in range(40)))
        await wait_until(lambda: server.store.counters.requests == 40)
        await conn.aclose()  # goes away without reading: every reply finishes after it left
        await wait_until(lambda: server.store.counters.connections == 0)
    errors.check()
    loud = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert loud == [], [r.getMessage() for r in loud]
