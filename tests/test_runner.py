"""run_check through a real FaultProxy and server: a hung run is told by whose turn it is, at once,
and a slow correct one still passes (hammer.py's TURN_* and nothing_can_wake)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from helpers import ThreadedServer, write_scenario
from sockrace.check.hammer import MIN_WIRE_QUIET_S
from sockrace.check.oracle import CallVerdict
from sockrace.check.runner import CheckConfig, run_check

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

# One connection; call 0 asks and reads its reply; every other call reads a reply nobody asked for
# (as a call whose reply an earlier call took): the server owes nothing, every byte is delivered.
HUNG = '''
import asyncio

async def hung(address):
    reader, writer = await asyncio.open_connection(*address)

    async def call(i):
        if i == 0:
            writer.write(b"ECHO 0\\n")
            await writer.drain()
        return (await reader.readline()).decode().strip()

    try:
        yield call, (lambda i: f"OK {i}")
    finally:
        writer.close()
'''
# Each call asks, then lets its reply sit in the socket for 100 ms of its own timer before reading it.
DAWDLES = '''
import asyncio

async def dawdles(address):
    reader, writer = await asyncio.open_connection(*address)
    lock = asyncio.Lock()

    async def call(i):
        async with lock:
            writer.write(f"ECHO {i}\\n".encode())
            await writer.drain()
            await asyncio.sleep(0.1)
            return (await reader.readline()).decode().strip()

    try:
        yield call, (lambda i: f"OK {i}")
    finally:
        writer.close()
'''


async def test_a_hung_run_is_stuck_as_soon_as_nothing_can_wake_it(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, "hung", textwrap.dedent(HUNG))
    with ThreadedServer() as server:
        run = await run_check(CheckConfig(scenario, server.address, tasks=1, calls=3, timeout_ms=None,
                                          deadline_s=20))
    result = run.result
    assert result.outcomes[0].verdict is CallVerdict.CORRECT
    assert result.stuck == 1
    assert result.stalled_s is not None
    assert result.stalled_s < MIN_WIRE_QUIET_S / 2  # not the bound: nothing could wake the call
    assert result.elapsed_s < MIN_WIRE_QUIET_S


async def test_a_client_that_dawdles_on_its_own_timer_passes(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, "dawdles", textwrap.dedent(DAWDLES))
    with ThreadedServer() as server:
        run = await run_check(CheckConfig(scenario, server.address, tasks=2, calls=2, timeout_ms=None,
                                          deadline_s=20))
    assert (run.result.correct, run.result.stuck, run.result.stalled_s) == (4, 0, None)


async def test_a_slow_server_is_still_waited_for(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, "slow", '''
        import asyncio

        async def slow(address):
            reader, writer = await asyncio.open_connection(*address)
            lock = asyncio.Lock()

            async def call(i):
                async with lock:
                    writer.write(f"SLEEP 300 v{i}\\n".encode())
                    await writer.drain()
                    return (await reader.readline()).decode().strip()

            try:
                yield call, (lambda i: f"OK v{i}")
            finally:
                writer.close()
    ''')
    with ThreadedServer() as server:
        run = await run_check(CheckConfig(scenario, server.address, tasks=2, calls=1, timeout_ms=None,
                                          deadline_s=20))
    assert (run.result.correct, run.result.stuck) == (2, 0)
