"""A sockrace check scenario for redis-py's asyncio client on one shared connection.

    sockrace check examples/redis_single_connection.py:scenario --upstream 127.0.0.1:6379

`redis.asyncio.Redis(host, port, single_connection_client=True)` sends every command of every task
over one socket. Call i is `GET k{i}` and must return "v{i}" (replies are decoded to str, so that a
crossed reply reads as the value it is); the keys are written before the first call. A client that
leaves a cancelled command's reply on the socket hands it to the next caller: redis-py 4.5.3 does
(CVE-2023-28859), 4.5.4 and later close the connection instead.

Works with redis-py 4.5.3, 4.5.4 and 8.x (examples/requirements-redis-*.txt pin the versions).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

# redis-py is not a dependency of sockrace: present only where the example runs.
import redis.asyncio  # type: ignore[import-not-found, unused-ignore]

# Enough keys for any run the defaults make (10 tasks x 20 calls) and for much larger ones; writing
# them takes a few milliseconds.
KEYS = 20_000
# Keys per MSET, so that loading sends a few commands of moderate size rather than one huge one.
LOAD_BATCH = 2_000


def key(i: int) -> str:
    return f"k{i}"


def value(i: int) -> str:
    return f"v{i}"


def expect(i: int) -> str:
    if not 0 <= i < KEYS:
        # Without its key, GET answers None, which would read as a wrong reply rather than a bad run.
        raise ValueError(f"the scenario loads {KEYS:,} keys: run at most {KEYS:,} calls (tasks x calls)")
    return value(i)


async def load(client: Any, count: int = KEYS) -> None:
    """Write k0..k{count-1} with the values v0..v{count-1}."""
    for start in range(0, count, LOAD_BATCH):
        await client.mset({key(i): value(i) for i in range(start, min(start + LOAD_BATCH, count))})


async def close(client: Any) -> None:
    # aclose() arrived in redis-py 5.0.1, which deprecates close(); 4.5.x has only close().
    closer = getattr(client, "aclose", None) or client.close
    await closer()


async def scenario(
    address: tuple[str, int],
) -> AsyncIterator[tuple[Callable[[int], Awaitable[object]], Callable[[int], object]]]:
    """Yield (call, expect) for a client on `address`; close the client afterwards."""
    host, port = address
    client = redis.asyncio.Redis(host=host, port=port, single_connection_client=True,
                                 decode_responses=True)
    try:
        await load(client)

        async def call(i: int) -> object:
            return await client.get(key(i))

        yield call, expect
    finally:
        await close(client)
