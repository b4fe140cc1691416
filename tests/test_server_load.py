"""Load: a thousand connections at once, each raced by ten coroutines through the `locked` strategy."""

from __future__ import annotations

import asyncio
import resource
from collections import Counter

import pytest

from helpers import LoopErrors, wait_until
from sockrace.client import Locked
from sockrace.connection import SharedConnection
from sockrace.race import race
from sockrace.server import Server, ServerConfig
from sockrace.workload import Plan, Verdict, WorkloadConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(180)]

CONNECTIONS = 1000
COROUTINES_PER_CONNECTION = 10
REQUESTS_PER_COROUTINE = 10  # 100 requests per connection, 100,000 in all
CONNECT_WAVE = 100  # asyncio's default listen backlog: connecting in waves avoids SYN retries


def ensure_file_descriptors(needed: int) -> None:
    """Raise the soft limit on open files to `needed` if the hard limit allows; skip otherwise."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def test_thousand_connections_hundred_requests_each_none_lost_none_wrong() -> None:
    # Both ends of every connection live in this process, plus the listener and some slack.
    ensure_file_descriptors(2 * CONNECTIONS + 200)
    errors = LoopErrors().install()
    plans = [
        Plan.build(WorkloadConfig(concurrency=COROUTINES_PER_CONNECTION, requests=REQUESTS_PER_COROUTINE,
                                  seed=number))
        for number in range(CONNECTIONS)
    ]
    async with Server(ServerConfig(port=0, max_connections=CONNECTIONS)) as server:
        host, port = server.address
        connections: list[SharedConnection] = []
        try:
            for _ in range(0, CONNECTIONS, CONNECT_WAVE):
                connections += await asyncio.gather(
                    *(SharedConnection.open(host, port) for _ in range(CONNECT_WAVE))
                )
            await wait_until(lambda: server.store.counters.connections == CONNECTIONS)
            # A generous stall timeout: with a thousand connections on one loop a slow turn is not a loss.
            runs = [race(Locked(conn), plan, stall_timeout=30)
                    for conn, plan in zip(connections, plans, strict=True)]
            results = await asyncio.gather(*runs)
        finally:
            await asyncio.gather(*(conn.close() for conn in connections))
        assert server.store.counters.total_connections == CONNECTIONS
    totals: Counter[Verdict] = Counter()
    for result in results:
        totals.update(result.counts)
    expected = CONNECTIONS * COROUTINES_PER_CONNECTION * REQUESTS_PER_COROUTINE
    verdicts = ", ".join(f"{v.value} {totals[v]}" for v in Verdict)
    print(f"\n{CONNECTIONS} connections, {expected} requests: {verdicts}")
    assert totals == {Verdict.CORRECT: expected}
    assert server.store.counters.requests == expected
    errors.check()
