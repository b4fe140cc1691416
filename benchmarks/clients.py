"""The client side of one measured run: a reference client or a sockrace strategy, timed request by request.

This runs in a client process (benchmarks/worker.py), under whichever sockrace its PYTHONPATH names.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, NamedTuple, TypeVar

from benchmarks import reference
from benchmarks.serve import running_server
from benchmarks.variants import Variant
from sockrace.client import STRATEGIES
from sockrace.workload import Plan, Verdict

try:
    from sockrace.connection import SharedConnection
except ImportError:  # `run.py --against` a tree from before connection.py was split out of client.py
    from sockrace.client import SharedConnection  # type: ignore[attr-defined, no-redef, unused-ignore]

# Any run taking longer than this is broken (a lost reply), not slow.
RUN_TIMEOUT_S: Final = 60.0

T = TypeVar("T")


class Run(NamedTuple):
    """One measured run of a client."""

    rate: float  # requests per second
    latencies: list[float]  # seconds, one per request
    wrong: int  # replies that did not answer their request
    client_cpu_s: float  # CPU time of this process while the requests ran (not connecting or judging)


async def drive(
    rows: Sequence[Sequence[T]], roundtrip: Callable[[T], Awaitable[bytes]]
) -> tuple[float, float, list[float], list[list[bytes]]]:
    """Run one coroutine per row, each sending its row's requests one after the other.

    Returns the elapsed seconds, the CPU seconds of this process meanwhile, every request's latency,
    and the replies row by row. Raises whatever `roundtrip` raises (a benchmark run is all or nothing).
    """
    latencies: list[float] = []
    replies: list[list[bytes]] = [[] for _ in rows]
    clock = time.perf_counter

    async def one(row: Sequence[T], received: list[bytes]) -> None:
        for request in row:
            sent_at = clock()
            received.append(await roundtrip(request))
            latencies.append(clock() - sent_at)

    started, cpu_started = clock(), time.process_time()
    async with asyncio.TaskGroup() as tasks:
        for row, received in zip(rows, replies, strict=True):
            tasks.create_task(one(row, received))
    return clock() - started, time.process_time() - cpu_started, latencies, replies


async def run_client(variant: Variant, plan: Plan, host: str, port: int) -> Run:
    """One run of `variant`'s client against the server at host:port.

    Raises OSError and whatever the client raises.
    """
    if variant.client == "reference windowed":
        return await run_windowed(variant, plan, host, port)
    if variant.mode is None:
        client = await reference.open_client(variant.client.removeprefix("reference "), host, port)
        try:
            lines = [[step.line for step in row] for row in plan.steps]
            elapsed, cpu, latencies, replies = await drive(lines, client.roundtrip)
        finally:
            await client.aclose()
    else:
        connection = await SharedConnection.open(host, port)
        strategy = STRATEGIES[variant.mode](connection)
        try:
            elapsed, cpu, latencies, replies = await drive(plan.steps, strategy.roundtrip)
        finally:
            await strategy.aclose()
            await connection.close()
    # Judged after the clock stopped, so that checking costs no client anything.
    wrong = sum(
        plan.judge(step, reply)[0] is not Verdict.CORRECT
        for row, got in zip(plan.steps, replies, strict=True)
        for step, reply in zip(row, got, strict=True)
    )
    return Run(len(latencies) / elapsed, latencies, wrong, cpu)


async def run_windowed(variant: Variant, plan: Plan, host: str, port: int) -> Run:
    """One run of the windowed load generator: `variant.concurrency` requests always in flight."""
    lines = [step.line for row in plan.steps for step in row]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        latencies, received = await reference.windowed_load(reader, writer, lines, variant.concurrency)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    # Checked after the clock stopped: every reply, in order.
    got = received.split(b"\n")[:-1]
    expected = [b"OK " + line[len(b"ECHO ") : -1] for line in lines]
    wrong = sum(a != b for a, b in zip(got, expected, strict=False)) + abs(len(got) - len(expected))
    return Run(len(lines) / elapsed, latencies, wrong, cpu)


async def measure_once(variant: Variant, plan: Plan, address: tuple[str, int] | None) -> Run:
    """One run against the server at `address`, or (None) against one started on this loop."""
    async with asyncio.timeout(RUN_TIMEOUT_S):
        if address is not None:
            return await run_client(variant, plan, *address)
        async with running_server(variant.server) as (host, port):
            return await run_client(variant, plan, host, port)
