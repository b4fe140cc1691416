"""run_check through a real FaultProxy and server: a hung run is told by whose turn it is, at once,
and a slow correct one still passes (hammer.py's TURN_* and nothing_can_wake)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ThreadedServer, line_service, service_process, write_scenario
from sockrace.check.hammer import MIN_WIRE_QUIET_S
from sockrace.check.runner import CheckConfig, run_check

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

# One connection; the first call made asks twice (for itself and for a value no call expects) and
# reads its reply; the second reads the other reply (a wrong value: the run has failed); every other
# call reads a reply nobody asked for (as a call whose reply an earlier call took): the server owes
# nothing, every byte is delivered.
HUNG = '''
import asyncio

async def hung(address):
    reader, writer = await asyncio.open_connection(*address)
    asked = []

    async def call(i):
        if not asked:
            asked.append(i)
            writer.write(f"ECHO {i}\\nECHO nobody\\n".encode())
            await writer.drain()
        return (await reader.readline()).decode().strip()

    try:
        yield call, (lambda i: f"OK {i}")
    finally:
        writer.close()
'''
# The same without the wrong value: the first call made asks and reads its reply, the next waits for
# a reply nobody asked for.
HUNG_NOTHING_WRONG = HUNG.replace("\\nECHO nobody", "")
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


async def test_a_hung_run_that_has_failed_is_stuck_as_soon_as_nothing_can_wake_it(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, "hung", textwrap.dedent(HUNG))
    with ThreadedServer() as server:
        run = await run_check(CheckConfig(scenario, server.address, tasks=1, calls=3, timeout_ms=None,
                                          deadline_s=20))
    result = run.result
    assert sorted(o.verdict.value for o in result.outcomes) == ["correct", "stuck", "wrong"]
    assert result.stalled_s is not None
    assert result.stalled_s < MIN_WIRE_QUIET_S / 2  # not the bound: nothing could wake the call
    assert result.elapsed_s < MIN_WIRE_QUIET_S


async def test_a_hung_run_with_nothing_else_wrong_is_stuck_at_the_bound(tmp_path: Path) -> None:
    # Whose turn it is cannot tell this from a server that paused in the middle of a reply (below):
    # the wire's quiet bound decides.
    scenario = write_scenario(tmp_path, "hung", textwrap.dedent(HUNG_NOTHING_WRONG))
    with ThreadedServer() as server:
        run = await run_check(CheckConfig(scenario, server.address, tasks=1, calls=3, timeout_ms=None,
                                          deadline_s=20))
    result = run.result
    assert sorted(o.verdict.value for o in result.outcomes) == ["correct", "stuck", "unfinished"]
    assert result.stalled_s is not None
    assert result.stalled_s >= MIN_WIRE_QUIET_S


# A server in a process of its own that answers each line in two writes 60 ms apart: b"OK v", then
# the rest of the value and b"\n" (a slow server streaming its reply; a server process descheduled
# between two writes of one reply on a busy machine). 60 ms: many times the few ms in which whose
# turn it is decides, well inside the wire's quarter-second bound.
PAUSES_MID_REPLY = line_service("""
    value = line.split()[-1]
    connection.sendall(b"OK " + value[:1])
    time.sleep(0.06)
    connection.sendall(value[1:] + b"\\n")
""")

LOCKED = '''
import asyncio

async def locked(address):
    reader, writer = await asyncio.open_connection(*address)
    lock = asyncio.Lock()

    async def call(i):
        async with lock:
            writer.write(f"GET v{i}\\n".encode())
            await writer.drain()
            return (await reader.readline()).decode().strip()

    try:
        yield call, (lambda i: f"OK v{i}")
    finally:
        writer.close()
'''


@pytest.fixture
def pauses_mid_reply() -> Iterator[tuple[str, int]]:
    with service_process(PAUSES_MID_REPLY) as port:
        yield "127.0.0.1", port


async def test_a_server_that_pauses_in_the_middle_of_a_reply_is_waited_for(
        tmp_path: Path, pauses_mid_reply: tuple[str, int]) -> None:
    # Between the two writes the server owes nothing that the wire can see (it has spoken last),
    # no byte moves and nothing in this process could wake the calls: a correct client, not stuck.
    scenario = write_scenario(tmp_path, "locked", textwrap.dedent(LOCKED))
    run = await run_check(CheckConfig(scenario, pauses_mid_reply, tasks=2, calls=3, timeout_ms=None,
                                      deadline_s=20))
    assert (run.result.correct, run.result.stuck, run.result.stalled_s) == (6, 0, None), run.result.explain()
    assert run.result.ok


async def test_a_client_that_dawdles_on_its_own_timer_passes(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, "dawdles", textwrap.dedent(DAWDLES))
    with ThreadedServer() as server:
        run = await run_check(CheckConfig(scenario, server.address, tasks=2, calls=2, timeout_ms=None,
                                          deadline_s=20))
    assert (run.result.correct, run.result.stuck, run.result.stalled_s) == (4, 0, None)


async def test_a_slow_server_is_still_waited_for(tmp_path: Path) -> None:
    slow = LOCKED.replace("locked", "slow").replace("GET v", "SLEEP 300 v")  # each reply 300 ms late
    scenario = write_scenario(tmp_path, "slow", slow)
    with ThreadedServer() as server:
        run = await run_check(CheckConfig(scenario, server.address, tasks=2, calls=1, timeout_ms=None,
                                          deadline_s=20))
    assert (run.result.correct, run.result.stuck) == (2, 0)
