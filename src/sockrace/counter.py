"""`sockrace counter`: the lost update, the race of the seed tutorial, in memory and on a server.

In memory: N coroutines each read a shared value, yield, add one, yield, write it back. Every
coroutine reads before any writes, so all of them write 1. An asyncio.Lock around the three steps
makes the total N.

On a server: many clients, each on its own connection (no shared socket here), INCR one key. The
default INCR has no await between its read and its write, so it is atomic on an event loop; with
`--unsafe-incr` the server yields in between, and concurrent INCRs write back stale values.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final

from sockrace.connection import SharedConnection
from sockrace.outcome import CounterResult, IncrRace
from sockrace.protocol import Get, Incr, Ok, format_request, parse_reply
from sockrace.server import Server, ServerConfig

DEFAULT_COROUTINES: Final = 10_000  # as in the seed tutorial
# 50 connections x 20 INCRs: enough that many INCRs arrive in the same loop pass (and overlap),
# few enough to finish in a fraction of a second.
DEFAULT_CLIENTS: Final = 50
DEFAULT_INCREMENTS: Final = 20
COUNTER_KEY: Final = "counter"


@contextmanager
def cycle_collector_paused() -> Iterator[None]:
    """Keep the cyclic garbage collector off inside the block; leave it as it was found.

    10,000 tasks created at once are 10,000 live objects the collector walks again and again while
    they are made: hundreds of collections that free next to nothing and take a good share of the
    demo's time. Reference counting still frees every task as it ends.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def shared_counter(coroutines: int, lock: asyncio.Lock | None = None) -> int:
    """The seed tutorial's program: the final value after `coroutines` read-yield-add-yield-writes.

    The program is the tutorial's; only the cyclic collector is paused while it runs (it finds no
    garbage there, see cycle_collector_paused).
    """
    value = 0

    async def task() -> None:
        nonlocal value
        tmp = value
        await asyncio.sleep(0)
        tmp = tmp + 1
        await asyncio.sleep(0)
        value = tmp

    async def locked_task(lock: asyncio.Lock) -> None:
        async with lock:
            await task()

    with cycle_collector_paused():
        if lock is None:
            await asyncio.gather(*(task() for _ in range(coroutines)))
        else:
            await asyncio.gather(*(locked_task(lock) for _ in range(coroutines)))
    return value


async def _request(connection: SharedConnection, line: bytes) -> str:
    """Send one request and return the payload of its OK reply.

    Raises RuntimeError on an ERR reply, ConnectionBrokenError when the server closed the connection.
    """
    connection.write(line)
    await connection.writer.drain()
    reply = parse_reply(await connection.read_line())
    if not isinstance(reply, Ok):
        raise RuntimeError(f"server refused {line.decode().strip()!r}: {reply}")
    return reply.payload


async def increment_over(
    connections: Sequence[SharedConnection], increments: int, key: str = COUNTER_KEY
) -> None:
    """Every connection INCRs `key` `increments` times, one request at a time; all at once."""
    line = format_request(Incr(key=key))

    async def client(connection: SharedConnection) -> None:
        for _ in range(increments):
            await _request(connection, line)

    await asyncio.gather(*(client(c) for c in connections))


async def read_counter(connection: SharedConnection, key: str = COUNTER_KEY) -> int:
    return int(await _request(connection, format_request(Get(key=key))))


async def server_incr_race(
    clients: int = DEFAULT_CLIENTS, increments: int = DEFAULT_INCREMENTS, *, unsafe_incr: bool
) -> IncrRace:
    """Start a server on a free loopback port, let `clients` connections INCR one key, read it back.

    Raises OSError when the server cannot bind or be reached.
    """
    async with Server(ServerConfig(port=0, unsafe_incr=unsafe_incr)) as server:
        host, port = server.address
        connections: list[SharedConnection] = []
        try:
            for _ in range(clients):
                connections.append(await SharedConnection.open(host, port))
            await increment_over(connections, increments)
            final = await read_counter(connections[0])
        finally:
            for connection in connections:
                await connection.close()
    return IncrRace(unsafe_incr, clients, increments, final)


async def counter(
    coroutines: int = DEFAULT_COROUTINES, clients: int = DEFAULT_CLIENTS, increments: int = DEFAULT_INCREMENTS
) -> CounterResult:
    """Run both races, each without and with its fix. Raises OSError when the server cannot bind."""
    return CounterResult(
        coroutines,
        await shared_counter(coroutines),
        await shared_counter(coroutines, asyncio.Lock()),
        await server_incr_race(clients, increments, unsafe_incr=True),
        await server_incr_race(clients, increments, unsafe_incr=False),
    )
