"""The strategies beyond the lock: pipelined, multiplexed, locked-cancel-safe, guarded; and timeouts.

Most tests script the peer by hand (a StreamReader the test feeds, a writer the test reads), so
every interleaving is set by explicit yields and the counts are exact. Where a real server is
needed it runs over the in-memory MemoryLink, and where a timeout must fire before a reply, the
reply is a SLEEP several times longer than the timeout: the timer heap orders them, not luck.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import pytest

from helpers import MemoryLink, MemoryWriter
from sockrace.client import (
    FLUSH_AT_LINES,
    STRATEGIES,
    ConnectionBrokenError,
    ConnectionBusyError,
    Guarded,
    Locked,
    LockedCancelSafe,
    Multiplexed,
    Pipelined,
    SharedConnection,
    Strategy,
    Unsafe,
)
from sockrace.protocol import Echo, Sleep, format_request
from sockrace.race import race
from sockrace.server import Server, ServerConfig
from sockrace.workload import Plan, Step, Verdict, WorkloadConfig

T = TypeVar("T")


def step(coroutine: int, payload: str, *, sleep_ms: int = 0, split_at: int = 0, pause: int = 0) -> Step:
    request = Sleep(ms=sleep_ms, text=payload) if sleep_ms else Echo(text=payload)
    return Step(coroutine, 0, payload, format_request(request), pause, split_at, 2 if split_at else 0)


def plan_of(*steps: Step) -> Plan:
    config = WorkloadConfig(concurrency=len(steps), requests=1)
    return Plan(config, tuple((s,) for s in steps), {s.payload: s for s in steps})


async def settle(n: int = 10) -> None:
    """Let every ready task run until it blocks (more passes than any path here needs)."""
    for _ in range(n):
        await asyncio.sleep(0)


class ScriptedPeer:
    """The far end of a connection, played by the test: it sees what the client wrote and feeds the
    replies it likes. `reopen()` on the connection gives a fresh pair, recorded in `opened`."""

    def __init__(self) -> None:
        self.opened: list[tuple[asyncio.StreamReader, asyncio.StreamReader]] = []
        reader, writer = self._pair()
        self.connection = SharedConnection(reader, writer, opener=self._open)

    def _pair(self) -> tuple[asyncio.StreamReader, MemoryWriter]:
        to_client, to_server = asyncio.StreamReader(), asyncio.StreamReader()
        self.opened.append((to_client, to_server))
        return to_client, MemoryWriter(to_server)

    async def _open(self) -> tuple[asyncio.StreamReader, MemoryWriter]:
        return self._pair()

    @property
    def sent(self) -> bytes:
        """Everything the client wrote on the current connection."""
        to_server = self.opened[-1][1]
        return bytes(to_server._buffer)  # what is buffered is exactly what arrived

    def reply(self, line: bytes) -> None:
        self.opened[-1][0].feed_data(line)

    def close(self) -> None:
        self.opened[-1][0].feed_eof()


async def cancelled(awaitable: Awaitable[T]) -> None:
    """Start `awaitable`, let it block, cancel it, and wait until the cancellation has landed."""
    task = asyncio.ensure_future(awaitable)
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ----------------------------------------------------------------- the cancellation race, every mode


@dataclass(frozen=True)
class AfterTimeout:
    """What the request AFTER a timed-out one gets, per strategy."""

    verdict: Verdict | None  # None: it raised `error`
    error: type[Exception] | None = None
    dropped: int = 0
    reopened: int = 0


AFTER_TIMEOUT = {
    "unsafe": AfterTimeout(Verdict.CROSSED),
    "locked": AfterTimeout(Verdict.CROSSED),  # the stale reply of the cancelled request
    "locked-cancel-safe": AfterTimeout(Verdict.CORRECT, reopened=1),
    "guarded": AfterTimeout(None, ConnectionBrokenError),
    "pipelined": AfterTimeout(Verdict.CORRECT, dropped=1),
    "multiplexed": AfterTimeout(Verdict.CORRECT, dropped=1),
}


def test_every_strategy_has_a_stated_outcome_after_a_timeout() -> None:
    assert set(AFTER_TIMEOUT) == set(STRATEGIES)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
@pytest.mark.parametrize("mode", sorted(STRATEGIES))
async def test_request_after_a_timed_out_one(mode: str) -> None:
    """CVE-2023-28858/28859 in miniature: a request times out after its write; what does the next get?"""
    slow, next_one = step(0, "slow", sleep_ms=200), step(1, "next")
    plan = plan_of(slow, next_one)
    link = MemoryLink(Server(ServerConfig()))  # in order, as Redis: the slow reply comes first
    strategy = STRATEGIES[mode](link.connection)
    expected = AFTER_TIMEOUT[mode]
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await strategy.roundtrip(slow)
        if expected.error is not None:
            with pytest.raises(expected.error, match=r"request c0\.0 'SLEEP 200 slow' was abandoned"):
                await strategy.roundtrip(next_one)
        else:
            verdict, owner = plan.judge(next_one, await strategy.roundtrip(next_one))
            assert verdict is expected.verdict
            assert owner is (slow if verdict is Verdict.CROSSED else next_one)
        assert strategy.dropped == expected.dropped
        assert link.connection.reopened == expected.reopened
    finally:
        await strategy.aclose()
        await link.close()


# ----------------------------------------------------------------- pipelined


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_pipelined_writes_without_waiting_and_answers_in_fifo_order() -> None:
    peer = ScriptedPeer()
    strategy = Pipelined(peer.connection)
    a, b = step(0, "a"), step(1, "b")
    first = asyncio.ensure_future(strategy.roundtrip(a))
    second = asyncio.ensure_future(strategy.roundtrip(b))
    await settle()
    assert peer.sent == b"ECHO a\nECHO b\n"  # both written before any reply: no lock held across the wait
    peer.reply(b"OK a\nOK b\n")
    assert await first == b"OK a\n"
    assert await second == b"OK b\n"
    await strategy.aclose()


def record_writes(connection: SharedConnection) -> list[bytes]:
    """Every write() call's bytes on the connection's in-memory writer, from now on."""
    writes: list[bytes] = []
    writer = connection.writer
    assert isinstance(writer, MemoryWriter)
    original = writer.write
    writer.write = lambda data: (writes.append(data), original(data))[-1]  # type: ignore[method-assign]
    return writes


@pytest.mark.asyncio
@pytest.mark.timeout(5)
@pytest.mark.parametrize("count", [5, FLUSH_AT_LINES + 10])
async def test_pipelined_writes_of_one_pass_leave_in_one_write_per_full_batch(count: int) -> None:
    peer = ScriptedPeer()
    writes = record_writes(peer.connection)
    strategy = Pipelined(peer.connection)
    lines = [b"ECHO p%d\n" % i for i in range(count)]
    tasks = [asyncio.ensure_future(strategy.roundtrip(step(i, f"p{i}"))) for i in range(count)]
    await settle()
    # A batch that fills up is written by the coroutine that filled it; the rest of the pass leaves
    # in the flush at its end. Order is kept.
    batches = range(0, count, FLUSH_AT_LINES)
    assert writes == [b"".join(lines[start : start + FLUSH_AT_LINES]) for start in batches]
    peer.reply(b"".join(b"OK p%d\n" % i for i in range(count)))
    assert await asyncio.gather(*tasks) == [b"OK p%d\n" % i for i in range(count)]
    await strategy.aclose()


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_pipelined_reply_of_a_cancelled_request_keeps_its_place_and_is_dropped() -> None:
    peer = ScriptedPeer()
    strategy = Pipelined(peer.connection)
    await cancelled(strategy.roundtrip(step(0, "gone")))
    waiting = asyncio.ensure_future(strategy.roundtrip(step(1, "here")))
    await settle()
    peer.reply(b"OK gone\nOK here\n")
    assert await waiting == b"OK here\n"
    assert strategy.dropped == 1
    await strategy.aclose()


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_pipelined_trusts_the_order_so_reordered_replies_cross() -> None:
    peer = ScriptedPeer()
    strategy = Pipelined(peer.connection)
    first = asyncio.ensure_future(strategy.roundtrip(step(0, "a")))
    second = asyncio.ensure_future(strategy.roundtrip(step(1, "b")))
    await settle()
    peer.reply(b"OK b\nOK a\n")
    assert (await first, await second) == (b"OK b\n", b"OK a\n")
    await strategy.aclose()


# ----------------------------------------------------------------- multiplexed


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_multiplexed_tags_each_request_and_routes_replies_by_tag() -> None:
    peer = ScriptedPeer()
    strategy = Multiplexed(peer.connection)
    first = asyncio.ensure_future(strategy.roundtrip(step(0, "a")))
    second = asyncio.ensure_future(strategy.roundtrip(step(1, "b")))
    await settle()
    assert peer.sent == b"#1 ECHO a\n#2 ECHO b\n"
    peer.reply(b"#2 OK b\n#1 OK a\n")  # out of order: the tags still match
    assert (await first, await second) == (b"#1 OK a\n", b"#2 OK b\n")
    assert strategy.dropped == 0
    await strategy.aclose()


@pytest.mark.asyncio
@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "stray",
    [b"#1 OK abandoned\n", b"#99 OK never asked\n", b"OK untagged\n", b"#bad tag! OK x\n", b"garbage\n"],
)
async def test_multiplexed_drops_and_counts_replies_it_cannot_deliver(stray: bytes) -> None:
    peer = ScriptedPeer()
    strategy = Multiplexed(peer.connection)
    await cancelled(strategy.roundtrip(step(0, "abandoned")))  # tag 1 is abandoned
    waiting = asyncio.ensure_future(strategy.roundtrip(step(1, "mine")))
    await settle()
    peer.reply(stray + b"#2 OK mine\n")
    assert await waiting == b"#2 OK mine\n"
    assert strategy.dropped == 1
    await strategy.aclose()


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_multiplexed_holds_nothing_across_the_wait() -> None:
    peer = ScriptedPeer()
    strategy = Multiplexed(peer.connection)
    tasks = [asyncio.ensure_future(strategy.roundtrip(step(i, f"m{i}"))) for i in range(50)]
    await settle()
    assert peer.sent.count(b"\n") == 50  # all fifty in flight at once, none answered yet
    peer.reply(b"".join(b"#%d OK m%d\n" % (i + 1, i) for i in reversed(range(50))))
    replies = await asyncio.gather(*tasks)
    assert replies == [b"#%d OK m%d\n" % (i + 1, i) for i in range(50)]
    await strategy.aclose()


@pytest.mark.asyncio
@pytest.mark.timeout(5)
@pytest.mark.parametrize("strategy_class", [Pipelined, Multiplexed])
async def test_split_writes_are_never_interleaved_by_reader_task_strategies(
    strategy_class: type[Strategy],
) -> None:
    peer = ScriptedPeer()
    strategy = strategy_class(peer.connection)
    steps = [step(i, f"split{i}", split_at=3) for i in range(4)]
    tasks = [asyncio.ensure_future(strategy.roundtrip(s)) for s in steps]
    await settle(30)
    lines = peer.sent.splitlines()
    assert [line.rpartition(b" ")[2] for line in lines] == [b"split0", b"split1", b"split2", b"split3"]
    peer.reply(b"".join(b"%sOK split%d\n" % (b"#%d " % (i + 1) if strategy_class is Multiplexed else b"", i)
                        for i in range(4)))
    await asyncio.gather(*tasks)
    await strategy.aclose()


# ----------------------------------------------------------------- reader task life cycle


@pytest.mark.asyncio
@pytest.mark.timeout(5)
@pytest.mark.parametrize("strategy_class", [Pipelined, Multiplexed])
async def test_eof_fails_the_waiting_and_every_later_request(strategy_class: type[Strategy]) -> None:
    peer = ScriptedPeer()
    strategy = strategy_class(peer.connection)
    waiting = asyncio.ensure_future(strategy.roundtrip(step(0, "a")))
    await settle()
    peer.close()
    with pytest.raises(ConnectionResetError, match="the server closed the connection"):
        await waiting
    with pytest.raises(ConnectionResetError, match="connection unusable: the server closed the connection"):
        await strategy.roundtrip(step(1, "b"))
    await strategy.aclose()


@pytest.mark.asyncio
@pytest.mark.timeout(5)
@pytest.mark.parametrize("strategy_class", [Pipelined, Multiplexed])
async def test_aclose_ends_the_reader_task(strategy_class: type[Strategy]) -> None:
    peer = ScriptedPeer()
    strategy = strategy_class(peer.connection)
    waiting = asyncio.ensure_future(strategy.roundtrip(step(0, "a")))
    await settle()
    readers = [t for t in asyncio.all_tasks() if t.get_name() == f"sockrace {strategy.name} reader"]
    assert len(readers) == 1
    await strategy.aclose()
    assert readers[0].done()
    with pytest.raises(ConnectionResetError, match="connection closed"):
        await waiting  # a request still waiting when the strategy closes is told so, not left hanging


# ----------------------------------------------------------------- locked-cancel-safe


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_locked_reads_the_stale_reply_of_a_cancelled_request() -> None:
    peer = ScriptedPeer()
    strategy = Locked(peer.connection)
    await cancelled(strategy.roundtrip(step(0, "cancelled")))
    waiting = asyncio.ensure_future(strategy.roundtrip(step(1, "next")))
    await settle()
    peer.reply(b"OK cancelled\nOK next\n")
    assert await waiting == b"OK cancelled\n"  # somebody else's data: the 2023 redis-py bug


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_locked_cancel_safe_closes_at_once_and_reopens_before_the_next_request() -> None:
    peer = ScriptedPeer()
    strategy = LockedCancelSafe(peer.connection)
    first_writer = peer.connection.writer
    await cancelled(strategy.roundtrip(step(0, "cancelled")))
    assert first_writer.is_closing()  # closed now, not at the next request
    assert peer.connection.reopened == 0
    waiting = asyncio.ensure_future(strategy.roundtrip(step(1, "next")))
    await settle()
    assert len(peer.opened) == 2
    assert peer.sent == b"ECHO next\n"
    peer.reply(b"OK next\n")
    assert await waiting == b"OK next\n"
    assert peer.connection.reopened == 1


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_locked_cancel_safe_keeps_the_connection_when_nothing_was_abandoned() -> None:
    peer = ScriptedPeer()
    strategy = LockedCancelSafe(peer.connection)
    for name in ("a", "b", "c"):
        waiting = asyncio.ensure_future(strategy.roundtrip(step(0, name)))
        await settle()
        peer.reply(f"OK {name}\n".encode())
        assert await waiting == f"OK {name}\n".encode()
    assert peer.connection.reopened == 0
    assert len(peer.opened) == 1


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_a_connection_without_opener_cannot_be_reopened() -> None:
    connection = SharedConnection(asyncio.StreamReader(), MemoryWriter(asyncio.StreamReader()))
    strategy = LockedCancelSafe(connection)
    await cancelled(strategy.roundtrip(step(0, "x")))
    with pytest.raises(RuntimeError, match="cannot be reopened: it was made without an opener"):
        await strategy.roundtrip(step(1, "y"))


# ----------------------------------------------------------------- guarded


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_guarded_names_the_request_in_flight_the_moment_a_second_coroutine_enters() -> None:
    peer = ScriptedPeer()
    strategy = Guarded(peer.connection)
    in_flight = asyncio.ensure_future(strategy.roundtrip(step(3, "first")))
    await settle()
    sent_before = peer.sent
    with pytest.raises(
        ConnectionBusyError, match=r"^another request is in flight on this connection: c3\.0 'ECHO first'$"
    ):
        await strategy.roundtrip(step(4, "second"))
    assert peer.sent == sent_before  # refused before writing anything
    peer.reply(b"OK first\n")
    assert await in_flight == b"OK first\n"
    peer.reply(b"OK later\n")
    assert await strategy.roundtrip(step(5, "later")) == b"OK later\n"  # free again once answered


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


# ----------------------------------------------------------------- timeouts in race()


class _SilentPeer:
    def __init__(self) -> None:
        self.connection = SharedConnection(asyncio.StreamReader(), MemoryWriter(asyncio.StreamReader()))


@pytest.mark.asyncio
@pytest.mark.timeout(10)
@pytest.mark.parametrize("mode", sorted(STRATEGIES))
async def test_timeouts_are_errors_never_wrong_answers(mode: str) -> None:
    peer = _SilentPeer()
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


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_split_write_cancelled_halfway_still_sends_a_whole_line() -> None:
    peer = ScriptedPeer()
    strategy = Unsafe(peer.connection)
    await cancelled(strategy.roundtrip(step(0, "halfway", split_at=4, pause=0)))
    assert peer.sent == b"ECHO halfway\n"
