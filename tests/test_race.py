"""race.py: whole runs through each strategy, judged; stalls, timeouts and peers that hang up.

Most runs go over the in-memory MemoryLink (helpers.race_in_memory), where the same seed gives the
same interleaving and the counts are exact; a few go over TCP to a real server, where only the
promises (never a wrong answer) are checked. What each strategy does on its own is tested in
test_client.py.
"""

from __future__ import annotations

import asyncio

import pytest

from helpers import (
    CountingConnects,
    MemoryLink,
    MemoryWriter,
    SilentPeer,
    assert_accounted,
    free_port,
    race_in_memory,
)
from sockrace import workload
from sockrace.client import STRATEGIES, Guarded, Locked, LockedCancelSafe, Strategy
from sockrace.connection import MAX_REOPEN_ATTEMPTS, SharedConnection
from sockrace.outcome import RunResult
from sockrace.race import race, run_mode
from sockrace.server import Server, ServerConfig
from sockrace.workload import Plan, Verdict, WorkloadConfig

# What each strategy promises. A new strategy must be placed here, so that it is held to account.
PERFECT = {"locked", "locked-cancel-safe", "pipelined", "multiplexed"}  # every reply reaches its asker
FAIL_FAST = {"guarded"}  # never a wrong answer: a collision is an error that names the request in flight
RACY = {"unsafe"}  # wrong answers expected under concurrency


def check_promise(result: RunResult) -> None:
    assert_accounted(result)
    if result.mode in PERFECT:
        assert result.count(Verdict.CORRECT) == result.requests, result.counts
    elif result.mode in FAIL_FAST:
        assert result.count(Verdict.CORRECT) + result.count(Verdict.ERROR) == result.requests, result.counts
        assert set(result.error_types) <= {"ConnectionBusyError"}, result.error_types
        # Concurrency is what this check is run with: the guard must have fired.
        assert result.count(Verdict.ERROR) > 0
    else:
        assert result.mode in RACY


def test_every_strategy_states_its_promise() -> None:
    assert set(STRATEGIES) == PERFECT | FAIL_FAST | RACY


def _counts(result: RunResult) -> dict[str, int]:
    return {v.value: result.count(v) for v in Verdict if result.count(v)}


@pytest.mark.asyncio
@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("split_writes", "expected"),
    [
        (False, {"correct": 4, "crossed": 44, "error": 2}),
        (True, {"corrupted": 48, "error": 2}),
    ],
)
async def test_unsafe_exact_counts_for_a_fixed_seed(split_writes: bool, expected: dict[str, int]) -> None:
    config = WorkloadConfig(concurrency=10, requests=5, seed=7, split_writes=split_writes)
    first = await race_in_memory("unsafe", config)
    again = await race_in_memory("unsafe", config)
    assert _counts(first) == expected
    assert [o.verdict for o in again.outcomes] == [o.verdict for o in first.outcomes]
    assert set(first.error_types) == {"RuntimeError"}
    assert_accounted(first)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_unsafe_records_asyncios_own_reader_collision() -> None:
    result = await race_in_memory("unsafe", WorkloadConfig(concurrency=10, requests=5, seed=7))
    errors = [o.error for o in result.outcomes if o.verdict is Verdict.ERROR]
    assert errors
    assert all("readuntil() called while another coroutine is already waiting" in (e or "") for e in errors)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_crossed_reply_names_its_real_owner() -> None:
    result = await race_in_memory("unsafe", WorkloadConfig(concurrency=10, requests=5, seed=7))
    crossed = [o for o in result.outcomes if o.verdict is Verdict.CROSSED]
    assert crossed
    for outcome in crossed:
        assert outcome.owner is not None
        assert outcome.owner is not outcome.step
        assert outcome.received == f"OK {outcome.owner.payload}\n".encode()


@pytest.mark.asyncio
@pytest.mark.timeout(10)
@pytest.mark.parametrize("mode", sorted(STRATEGIES))
@pytest.mark.parametrize("split_writes", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_strategy_keeps_its_promise_in_memory(mode: str, split_writes: bool, seed: int) -> None:
    config = WorkloadConfig(concurrency=20, requests=5, seed=seed, split_writes=split_writes)
    check_promise(await race_in_memory(mode, config))


@pytest.mark.asyncio
@pytest.mark.timeout(20)
@pytest.mark.parametrize("mode", sorted(STRATEGIES))
@pytest.mark.parametrize("split_writes", [False, True])
async def test_strategy_keeps_its_promise_over_tcp(mode: str, split_writes: bool) -> None:
    config = WorkloadConfig(concurrency=50, requests=10, seed=3, split_writes=split_writes)
    async with Server(ServerConfig(port=0)) as server:
        host, port = server.address
        result = await run_mode(host, port, STRATEGIES[mode], config)
    check_promise(result)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_single_coroutine_is_correct_even_unsafe() -> None:
    result = await race_in_memory("unsafe", WorkloadConfig(concurrency=1, requests=20, seed=5))
    assert result.perfect


@pytest.mark.asyncio
@pytest.mark.timeout(10)
@pytest.mark.parametrize("strategy", list(STRATEGIES.values()))
async def test_a_stalled_run_counts_lost_instead_of_hanging(strategy: type[Strategy]) -> None:
    peer = SilentPeer()
    plan = Plan.build(WorkloadConfig(concurrency=3, requests=2, seed=1))
    running = strategy(peer.connection)
    result = await race(running, plan, stall_timeout=0.05)
    await running.aclose()
    assert_accounted(result)
    assert result.count(Verdict.LOST) >= 1
    assert result.count(Verdict.CORRECT) == 0


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_peer_closing_mid_run_becomes_errors_not_a_crash() -> None:
    reader = asyncio.StreamReader()
    sink = asyncio.StreamReader()
    connection = SharedConnection(reader, MemoryWriter(sink))
    reader.feed_eof()  # the server hung up before answering anything
    result = await race(Locked(connection), Plan.build(WorkloadConfig(concurrency=4, requests=2)))
    assert_accounted(result)
    assert result.error_types == {"ConnectionBrokenError": 8}
    await connection.close()


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_guarded_never_answers_wrong_under_the_full_workload() -> None:
    link = MemoryLink(Server(ServerConfig()))
    try:
        result = await race(Guarded(link.connection), Plan.build(WorkloadConfig(concurrency=30, requests=5)))
    finally:
        await link.close()
    assert result.count(Verdict.CROSSED) == result.count(Verdict.CORRUPTED) == result.count(Verdict.LOST) == 0
    # Coroutine 0 enters first and is served; every other coroutine collides with a request in flight.
    assert result.count(Verdict.CORRECT) == 5
    assert result.error_types == {"ConnectionBusyError": 145}


# ----------------------------------------------------------------- timeouts


@pytest.mark.asyncio
@pytest.mark.timeout(10)
@pytest.mark.parametrize("mode", sorted(STRATEGIES))
async def test_timeouts_are_errors_never_wrong_answers(mode: str) -> None:
    peer = SilentPeer()
    strategy = STRATEGIES[mode](peer.connection)
    plan = Plan.build(WorkloadConfig(concurrency=3, requests=2))
    try:
        result = await race(strategy, plan, request_timeout=0.005, stall_timeout=5)
    finally:
        await strategy.aclose()
    assert result.count(Verdict.ERROR) == result.requests == 6
    assert result.request_timeout_s == 0.005
    timeouts = [o.error for o in result.outcomes if o.error and o.error.startswith("TimeoutError")]
    assert timeouts  # guarded refuses the others as busy or broken before their time runs out
    assert set(timeouts) == {"TimeoutError: no reply within 5 ms"}


@pytest.mark.asyncio
@pytest.mark.timeout(10)
@pytest.mark.parametrize("mode", ["locked-cancel-safe", "pipelined", "multiplexed"])
async def test_fixes_never_answer_wrong_under_timeouts(mode: str) -> None:
    """Requests time out all over the run (each SLEEP 150 holds up the in-order server); however
    the timeouts fall, the fixes give no wrong answer, and every request is accounted for."""
    link = MemoryLink(Server(ServerConfig()))
    config = WorkloadConfig(concurrency=4, requests=6, seed=3, slow_every=6, slow_ms=150)
    strategy = STRATEGIES[mode](link.connection)
    try:
        result = await race(strategy, Plan.build(config), request_timeout=0.03)
    finally:
        await strategy.aclose()
        await link.close()
    assert sum(result.counts.values()) == result.requests == 24
    assert set(result.error_types) == {"TimeoutError"}
    assert result.count(Verdict.CROSSED) == result.count(Verdict.CORRUPTED) == result.count(Verdict.LOST) == 0
    assert result.count(Verdict.ERROR) >= 4  # at least the four SLEEP 150 requests


# ----------------------------------------------------------------- unreachable and vanishing servers


def _no_plan(config: WorkloadConfig) -> Plan:
    raise AssertionError(f"a plan of {config.total} requests was built before connecting")


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_an_unreachable_server_fails_before_a_huge_plan_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The largest plan a run may have (hundreds of MB): built only once there is somebody to send it to.
    monkeypatch.setattr(workload.Plan, "build", staticmethod(_no_plan))
    huge = WorkloadConfig(concurrency=1_000, requests=workload.MAX_TOTAL_REQUESTS // 1_000)
    with pytest.raises(ConnectionRefusedError):
        await run_mode("127.0.0.1", free_port(), Locked, huge)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_locked_cancel_safe_gives_up_reopening_a_server_that_went_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    listener = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    connection = await SharedConnection.open(*listener.sockets[0].getsockname()[:2])
    listener.close()  # no new connection is accepted: every reopen is refused
    counting = CountingConnects()
    monkeypatch.setattr(asyncio, "open_connection", counting)
    strategy = LockedCancelSafe(connection)
    try:
        # The first request times out with its reply owed; each later one has to reopen.
        plan = Plan.build(WorkloadConfig(concurrency=1, requests=40))
        result = await race(strategy, plan, request_timeout=0.02)
    finally:
        await strategy.aclose()
        await connection.close()
        for writer in held:
            writer.transport.abort()
        await listener.wait_closed()
    assert counting.attempts == MAX_REOPEN_ATTEMPTS
    # Some requests time out while a reopen waits its turn; once the attempts are spent, every
    # request fails at once, saying so.
    assert set(result.error_types) == {"TimeoutError", "ConnectionBrokenError"}
    assert (result.outcomes[-1].error or "").startswith("ConnectionBrokenError: gave up reopening")
