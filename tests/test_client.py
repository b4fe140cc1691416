from __future__ import annotations

import asyncio

import pytest

from helpers import MemoryLink, MemoryWriter
from sockrace.client import READ_SIZE, STRATEGIES, Locked, SharedConnection, Strategy
from sockrace.outcome import RunResult
from sockrace.race import race, run_mode
from sockrace.server import Server, ServerConfig
from sockrace.workload import Plan, Verdict, WorkloadConfig

# What each strategy promises. A new strategy must be placed here, so that it is held to account.
PERFECT = {"locked", "locked-cancel-safe", "pipelined", "multiplexed"}  # every reply reaches its asker
FAIL_FAST = {"guarded"}  # never a wrong answer: a collision is an error that names the request in flight
RACY = {"unsafe"}  # wrong answers expected under concurrency


def assert_accounted(result: RunResult) -> None:
    """Every planned request has exactly one verdict."""
    assert sum(result.count(v) for v in Verdict) == result.requests == result.plan.config.total


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


async def _race_in_memory(mode: str, config: WorkloadConfig) -> RunResult:
    link = MemoryLink(Server(ServerConfig()))
    try:
        return await race(STRATEGIES[mode](link.connection), Plan.build(config))
    finally:
        await link.close()


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
    first = await _race_in_memory("unsafe", config)
    again = await _race_in_memory("unsafe", config)
    assert _counts(first) == expected
    assert [o.verdict for o in again.outcomes] == [o.verdict for o in first.outcomes]
    assert set(first.error_types) == {"RuntimeError"}
    assert_accounted(first)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_unsafe_records_asyncios_own_reader_collision() -> None:
    result = await _race_in_memory("unsafe", WorkloadConfig(concurrency=10, requests=5, seed=7))
    errors = [o.error for o in result.outcomes if o.verdict is Verdict.ERROR]
    assert errors
    assert all("readuntil() called while another coroutine is already waiting" in (e or "") for e in errors)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_crossed_reply_names_its_real_owner() -> None:
    result = await _race_in_memory("unsafe", WorkloadConfig(concurrency=10, requests=5, seed=7))
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
    check_promise(await _race_in_memory(mode, config))


@pytest.mark.asyncio
@pytest.mark.timeout(20)
@pytest.mark.parametrize("mode", sorted(STRATEGIES))
@pytest.mark.parametrize("split_writes", [False, True])
async def test_strategy_keeps_its_promise_over_tcp(mode: str, split_writes: bool) -> None:
    config = WorkloadConfig(concurrency=50, requests=10, seed=3, split_writes=split_writes)
    async with Server(ServerConfig(port=0)) as server:
        host, port = server.address
        result = await run_mode(host, port, STRATEGIES[mode], Plan.build(config))
    check_promise(result)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_single_coroutine_is_correct_even_unsafe() -> None:
    result = await _race_in_memory("unsafe", WorkloadConfig(concurrency=1, requests=20, seed=5))
    assert result.perfect


class _SilentPeer:
    """A connection whose server never answers: every read waits forever."""

    def __init__(self) -> None:
        self.sink = asyncio.StreamReader()
        self.connection = SharedConnection(asyncio.StreamReader(), MemoryWriter(self.sink))


@pytest.mark.asyncio
@pytest.mark.timeout(10)
@pytest.mark.parametrize("strategy", list(STRATEGIES.values()))
async def test_a_stalled_run_counts_lost_instead_of_hanging(strategy: type[Strategy]) -> None:
    peer = _SilentPeer()
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
    assert result.error_types == {"IncompleteReadError": 8}
    await connection.close()


@pytest.mark.asyncio
async def test_writing_to_a_closed_connection_is_a_clear_error() -> None:
    connection = SharedConnection(asyncio.StreamReader(), MemoryWriter(asyncio.StreamReader()))
    await connection.close()
    with pytest.raises(ConnectionResetError, match="connection is closed"):
        connection.write(b"PING\n")


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_opened_and_reopened_connections_receive_at_most_read_size_per_recv() -> None:
    # asyncio's default of 256 KiB per recv() costs three system calls per reply read (see
    # sockrace.loop.limit_recv_size); a reopened connection must not fall back to it.
    async with Server(ServerConfig(port=0)) as server:
        connection = await SharedConnection.open(*server.address)
        try:
            assert getattr(connection.writer.transport, "max_size", None) == READ_SIZE
            await connection.reopen()
            assert getattr(connection.writer.transport, "max_size", None) == READ_SIZE
        finally:
            await connection.close()
