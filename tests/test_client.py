"""client.py: the shared connection, and each strategy on its own.

Most tests script the peer by hand (helpers.ScriptedPeer: a StreamReader the test feeds, a writer
the test reads), so every interleaving is set by explicit yields and the results are exact. Where
a real server is needed it runs over the in-memory MemoryLink, and where a timeout must fire
before a reply, the reply is a SLEEP several times longer than the timeout: the timer heap orders
them, not luck. How whole runs come out is tested in test_race.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import (
    CountingConnects,
    MemoryLink,
    MemoryWriter,
    ScriptedPeer,
    cancelled,
    one_step,
    plan_of,
    settle,
)
from sockrace import client
from sockrace.client import (
    FLUSH_AT_LINES,
    STRATEGIES,
    Guarded,
    Locked,
    LockedCancelSafe,
    Multiplexed,
    Pipelined,
    Strategy,
    Unsafe,
)
from sockrace.connection import MAX_REOPEN_ATTEMPTS, READ_SIZE, SharedConnection
from sockrace.errors import ConnectionBrokenError, ConnectionBusyError, ConnectionClosedError
from sockrace.server import Server, ServerConfig
from sockrace.workload import Verdict

# ----------------------------------------------------------------- the shared connection


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


@pytest.mark.asyncio
async def test_writing_to_a_connection_closed_here_is_a_closed_error() -> None:
    connection = SharedConnection(asyncio.StreamReader(), MemoryWriter(asyncio.StreamReader()))
    await connection.close()
    with pytest.raises(ConnectionClosedError, match=r"^connection is closed$"):
        connection.write(b"PING\n")


@pytest_asyncio.fixture
async def deaf_listener() -> AsyncIterator[tuple[str, int]]:
    """A TCP listener that accepts and never reads: once the socket buffers fill, nothing leaves."""
    accepted: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cast(asyncio.Transport, writer.transport).pause_reading()  # not even asyncio's buffer takes the bytes
        accepted.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()
        for writer in accepted:
            writer.transport.abort()
        await server.wait_closed()


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_closing_gives_up_on_a_peer_that_stopped_reading(
    deaf_listener: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "CLOSE_TIMEOUT_S", 0.1)
    connection = await SharedConnection.open(*deaf_listener)
    connection.write(b"x" * (64 * 1024 * 1024))  # far more than the socket buffers hold: most stays unsent
    await settle()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await connection.close()  # waited for ever for the unsent bytes before it had a bound
    assert loop.time() - started < 2
    assert connection.writer.is_closing()


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_reopening_a_refused_connection_backs_off_and_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    async with Server(ServerConfig(port=0)) as server:
        connection = await SharedConnection.open(*server.address)
    # The server is gone: every attempt to reopen is refused.
    counting = CountingConnects()
    monkeypatch.setattr(asyncio, "open_connection", counting)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(MAX_REOPEN_ATTEMPTS):
        with pytest.raises(ConnectionBrokenError, match=r"^cannot reopen the connection: ") as refused:
            await connection.reopen()
        assert isinstance(refused.value.__cause__, ConnectionRefusedError)
    for _ in range(100):
        with pytest.raises(ConnectionBrokenError, match=r"^gave up reopening the connection after 5 failed"):
            await connection.reopen()
    assert counting.attempts == MAX_REOPEN_ATTEMPTS
    # Waits of 10, 20, 40 and 80 ms between the five attempts.
    assert loop.time() - started >= 0.15
    await connection.close()


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
    slow, next_one = one_step(0, "slow", sleep_ms=200), one_step(1, "next")
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
    a, b = one_step(0, "a"), one_step(1, "b")
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

    def write(data: bytes) -> None:
        writes.append(data)
        original(data)

    writer.write = write  # type: ignore[method-assign]
    return writes


@pytest.mark.asyncio
@pytest.mark.timeout(5)
@pytest.mark.parametrize("count", [5, FLUSH_AT_LINES + 10])
async def test_pipelined_writes_of_one_pass_leave_in_one_write_per_full_batch(count: int) -> None:
    peer = ScriptedPeer()
    writes = record_writes(peer.connection)
    strategy = Pipelined(peer.connection)
    lines = [b"ECHO p%d\n" % i for i in range(count)]
    tasks = [asyncio.ensure_future(strategy.roundtrip(one_step(i, f"p{i}"))) for i in range(count)]
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
@pytest.mark.parametrize("strategy_class", [Pipelined, Multiplexed])
async def test_a_full_batch_leaves_early_only_while_the_server_owes_less_than_a_batch(
    strategy_class: type[Pipelined | Multiplexed],
) -> None:
    peer = ScriptedPeer()
    writes = record_writes(peer.connection)
    strategy = strategy_class(peer.connection)

    async def one_pass(count: int) -> list[int]:
        """`count` requests in one pass, answered once written; the lines of each write."""
        del writes[:]
        tasks = [asyncio.ensure_future(strategy.roundtrip(one_step(i, f"p{i}"))) for i in range(count)]
        await settle()
        replies = b"".join(writes).replace(b"ECHO ", b"OK ")
        peer.reply(replies)
        assert await asyncio.gather(*tasks) == replies.splitlines(keepends=True)
        return [write.count(b"\n") for write in writes]

    # The first full batch leaves at once (the server has nothing to do); the second finds the
    # first still unanswered, so it waits for the end of the pass.
    assert await one_pass(2 * FLUSH_AT_LINES + 10) == [FLUSH_AT_LINES, FLUSH_AT_LINES + 10]
    # Every reply in: the next pass starts with a server short of work again.
    assert await one_pass(FLUSH_AT_LINES + 10) == [FLUSH_AT_LINES, 10]
    await strategy.aclose()


@pytest.mark.asyncio
@pytest.mark.timeout(5)
@pytest.mark.parametrize("strategy_class", [Pipelined, Multiplexed])
async def test_the_usual_request_is_queued_at_once_and_its_future_returned(
    strategy_class: type[Pipelined | Multiplexed],
) -> None:
    peer = ScriptedPeer()
    strategy = strategy_class(peer.connection)
    first = strategy.roundtrip(one_step(0, "first"))
    assert asyncio.iscoroutine(first)  # it starts the reader task: the coroutine's way
    tasks = [asyncio.ensure_future(first)]
    await settle()
    sent_before = peer.sent
    usual = strategy.roundtrip(one_step(1, "usual"))
    split = strategy.roundtrip(one_step(2, "split", split_at=2))
    assert isinstance(usual, asyncio.Future)
    assert peer.sent == sent_before  # queued with no await: the batch leaves at the end of the pass
    assert asyncio.iscoroutine(split)  # a split write waits halfway: the coroutine's way
    tasks += [asyncio.ensure_future(request) for request in (usual, split)]
    await settle()
    peer.reply(peer.sent.replace(b"ECHO ", b"OK "))
    replies = await asyncio.gather(*tasks)
    assert [reply.rsplit(b" ", 1)[1] for reply in replies] == [b"first\n", b"usual\n", b"split\n"]
    await strategy.aclose()


@pytest.mark.asyncio
@pytest.mark.timeout(5)
@pytest.mark.parametrize("strategy_class", [Pipelined, Multiplexed])
async def test_a_caller_that_stops_waiting_on_the_returned_future_gets_no_reply_and_takes_none(
    strategy_class: type[Pipelined | Multiplexed],
) -> None:
    peer = ScriptedPeer()
    strategy = strategy_class(peer.connection)
    first = asyncio.ensure_future(strategy.roundtrip(one_step(0, "first")))
    await settle()
    abandoned = strategy.roundtrip(one_step(1, "abandoned"))
    assert isinstance(abandoned, asyncio.Future)
    await cancelled(abandoned)
    waiting = asyncio.ensure_future(strategy.roundtrip(one_step(2, "mine")))
    await settle()
    peer.reply(peer.sent.replace(b"ECHO ", b"OK "))
    assert (await first).endswith(b"OK first\n")
    assert (await waiting).endswith(b"OK mine\n")
    assert strategy.dropped == 1  # the abandoned request's reply, handed to nobody
    await strategy.aclose()


@pytest.mark.asyncio
@pytest.mark.timeout(5)
@pytest.mark.parametrize("strategy_class", [Pipelined, Multiplexed])
async def test_a_request_that_starts_a_batch_waits_for_the_drain_while_bytes_are_unsent(
    strategy_class: type[Pipelined | Multiplexed],
) -> None:
    peer = ScriptedPeer()
    writer = peer.opened[-1][1]
    drained = asyncio.Event()
    unsent = 0

    def write_buffer_size() -> int:
        return unsent

    async def drain() -> None:
        if unsent:
            await drained.wait()

    writer.get_write_buffer_size = write_buffer_size  # type: ignore[method-assign]
    writer.drain = drain  # type: ignore[method-assign]
    strategy = strategy_class(peer.connection)
    first = asyncio.ensure_future(strategy.roundtrip(one_step(0, "a")))
    await settle()
    peer.reply(peer.sent.replace(b"ECHO ", b"OK "))
    assert (await first).endswith(b"OK a\n")
    unsent = 1  # the transport still holds bytes: the next batch's first request feels it
    blocked = asyncio.ensure_future(strategy.roundtrip(one_step(1, "b")))
    await settle()
    peer.reply(peer.sent.splitlines(keepends=True)[-1].replace(b"ECHO ", b"OK "))
    await settle()
    assert not blocked.done()  # its reply is in, but its drain() still waits
    drained.set()
    assert (await blocked).endswith(b"OK b\n")
    await strategy.aclose()


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_pipelined_reply_of_a_cancelled_request_keeps_its_place_and_is_dropped() -> None:
    peer = ScriptedPeer()
    strategy = Pipelined(peer.connection)
    await cancelled(strategy.roundtrip(one_step(0, "gone")))
    waiting = asyncio.ensure_future(strategy.roundtrip(one_step(1, "here")))
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
    first = asyncio.ensure_future(strategy.roundtrip(one_step(0, "a")))
    second = asyncio.ensure_future(strategy.roundtrip(one_step(1, "b")))
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
    first = asyncio.ensure_future(strategy.roundtrip(one_step(0, "a")))
    second = asyncio.ensure_future(strategy.roundtrip(one_step(1, "b")))
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
    await cancelled(strategy.roundtrip(one_step(0, "abandoned")))  # tag 1 is abandoned
    waiting = asyncio.ensure_future(strategy.roundtrip(one_step(1, "mine")))
    await settle()
    peer.reply(stray + b"#2 OK mine\n")
    assert await waiting == b"#2 OK mine\n"
    assert strategy.dropped == 1
    await strategy.aclose()


# Replies to tags of two lengths (b"#9 " and b"#10 ": the reader tries a reply's tag as a slice of
# the last tag's length first), out of order, with the late reply of an abandoned request (#3) and
# strays that a wrong slice or prefix would hand to somebody: #1 again, #1 without its space, #10
# with more after it, a tag never issued, no tag, an empty line.
_CROSSING_REPLIES: tuple[bytes, ...] = (
    b"#12 OK m11\n", b"#1 OK m0\n", b"#1 OK again\n", b"#10 OK m9\n", b"#1\n", b"#2 OK m1\n",
    b"#10x OK m9\n", b"#11 OK m10\n", b"#4 OK m3\n", b"#5 OK m4\n", b"#13 OK never asked\n", b"#6 OK m5\n",
    b"OK untagged\n", b"#7 OK m6\n", b"\n", b"#8 OK m7\n", b"#9 OK m8\n", b"#3 OK m2\n",
)
_CROSSING_STRAYS = 7  # the lines above that answer nobody, #3's late reply included


async def _multiplexed_replies_in_reads(replies: list[bytes], cuts: list[int]) -> tuple[list[bytes], int]:
    """Twelve requests (#3 abandoned), `replies` joined and fed cut at `cuts` (a read per piece);
    returns the reply each other request got by then, in request order, and the count of replies
    dropped."""
    peer = ScriptedPeer()
    strategy = Multiplexed(peer.connection)
    waiting = [asyncio.ensure_future(strategy.roundtrip(one_step(i, f"m{i}"))) for i in range(12)]
    await settle()
    waiting.pop(2).cancel()
    await settle()
    data = b"".join(replies)
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        peer.reply(data[start:end])
        await settle()
    # Looked at, not awaited: a reply handed to the wrong future leaves another waiting for ever.
    got = [future.result() if future.done() else b"(still waiting)" for future in waiting]
    await strategy.aclose()
    return got, strategy.dropped


@pytest.mark.timeout(30)
def test_multiplexed_routes_replies_by_whole_tag_however_the_reads_are_cut() -> None:
    data_size = len(b"".join(_CROSSING_REPLIES))
    expected = [b"#%d OK m%d\n" % (i + 1, i) for i in range(12) if i != 2]

    async def every_cut() -> None:
        for cut in range(data_size + 1):
            got, dropped = await _multiplexed_replies_in_reads(list(_CROSSING_REPLIES), [cut])
            assert (got, dropped) == (expected, _CROSSING_STRAYS), cut

    asyncio.run(every_cut())


@given(order=st.permutations(_CROSSING_REPLIES), cut_fractions=st.lists(st.floats(0, 1), max_size=4))
@settings(deadline=None, max_examples=50)
def test_multiplexed_routes_replies_in_any_order_and_reads(
    order: list[bytes], cut_fractions: list[float]
) -> None:
    first, again = order.index(b"#1 OK m0\n"), order.index(b"#1 OK again\n")
    if again < first:  # the first reply to #1 is #1's: the other one is the stray
        order[first], order[again] = order[again], order[first]
    size = len(b"".join(order))
    cuts = sorted(round(fraction * size) for fraction in cut_fractions)
    got, dropped = asyncio.run(_multiplexed_replies_in_reads(order, cuts))
    assert got == [b"#%d OK m%d\n" % (i + 1, i) for i in range(12) if i != 2]
    assert dropped == _CROSSING_STRAYS


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_multiplexed_tags_count_up_from_one_across_every_thousand() -> None:
    peer = ScriptedPeer()
    strategy = Multiplexed(peer.connection)
    count = 2_005
    waiting = [asyncio.ensure_future(strategy.roundtrip(one_step(i, f"m{i}"))) for i in range(count)]
    await settle()
    assert peer.sent == b"".join(b"#%d ECHO m%d\n" % (i + 1, i) for i in range(count))
    peer.reply(b"".join(b"#%d OK m%d\n" % (i + 1, i) for i in reversed(range(count))))
    assert await asyncio.gather(*waiting) == [b"#%d OK m%d\n" % (i + 1, i) for i in range(count)]
    assert strategy.dropped == 0
    await strategy.aclose()


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_multiplexed_holds_nothing_across_the_wait() -> None:
    peer = ScriptedPeer()
    strategy = Multiplexed(peer.connection)
    tasks = [asyncio.ensure_future(strategy.roundtrip(one_step(i, f"m{i}"))) for i in range(50)]
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
    steps = [one_step(i, f"split{i}", split_at=3) for i in range(4)]
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
    waiting = asyncio.ensure_future(strategy.roundtrip(one_step(0, "a")))
    await settle()
    peer.close()
    with pytest.raises(ConnectionBrokenError, match=r"^the server closed the connection$"):
        await waiting
    unusable = r"^connection unusable: the server closed the connection$"
    with pytest.raises(ConnectionBrokenError, match=unusable):
        await strategy.roundtrip(one_step(1, "b"))
    await strategy.aclose()


@pytest.mark.asyncio
@pytest.mark.timeout(5)
@pytest.mark.parametrize("strategy_class", [Pipelined, Multiplexed])
async def test_aclose_ends_the_reader_task(strategy_class: type[Strategy]) -> None:
    peer = ScriptedPeer()
    strategy = strategy_class(peer.connection)
    waiting = asyncio.ensure_future(strategy.roundtrip(one_step(0, "a")))
    await settle()
    readers = [t for t in asyncio.all_tasks() if t.get_name() == f"sockrace {strategy.name} reader"]
    assert len(readers) == 1
    await strategy.aclose()
    assert readers[0].done()
    with pytest.raises(ConnectionClosedError, match=r"^connection closed$"):
        await waiting  # a request still waiting when the strategy closes is told so, not left hanging


# ----------------------------------------------------------------- locked-cancel-safe


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_locked_reads_the_stale_reply_of_a_cancelled_request() -> None:
    peer = ScriptedPeer()
    strategy = Locked(peer.connection)
    await cancelled(strategy.roundtrip(one_step(0, "cancelled")))
    waiting = asyncio.ensure_future(strategy.roundtrip(one_step(1, "next")))
    await settle()
    peer.reply(b"OK cancelled\nOK next\n")
    assert await waiting == b"OK cancelled\n"  # somebody else's data: the 2023 redis-py bug


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_locked_cancel_safe_closes_at_once_and_reopens_before_the_next_request() -> None:
    peer = ScriptedPeer()
    strategy = LockedCancelSafe(peer.connection)
    first_writer = peer.connection.writer
    await cancelled(strategy.roundtrip(one_step(0, "cancelled")))
    assert first_writer.is_closing()  # closed now, not at the next request
    assert peer.connection.reopened == 0
    waiting = asyncio.ensure_future(strategy.roundtrip(one_step(1, "next")))
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
        waiting = asyncio.ensure_future(strategy.roundtrip(one_step(0, name)))
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
    await cancelled(strategy.roundtrip(one_step(0, "x")))
    with pytest.raises(RuntimeError, match="cannot be reopened: it was made without an opener"):
        await strategy.roundtrip(one_step(1, "y"))


# ----------------------------------------------------------------- guarded


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_guarded_names_the_request_in_flight_the_moment_a_second_coroutine_enters() -> None:
    peer = ScriptedPeer()
    strategy = Guarded(peer.connection)
    in_flight = asyncio.ensure_future(strategy.roundtrip(one_step(3, "first")))
    await settle()
    sent_before = peer.sent
    with pytest.raises(
        ConnectionBusyError, match=r"^another request is in flight on this connection: c3\.0 'ECHO first'$"
    ):
        await strategy.roundtrip(one_step(4, "second"))
    assert peer.sent == sent_before  # refused before writing anything
    peer.reply(b"OK first\n")
    assert await in_flight == b"OK first\n"
    peer.reply(b"OK later\n")
    assert await strategy.roundtrip(one_step(5, "later")) == b"OK later\n"  # free again once answered


# ----------------------------------------------------------------- split writes


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_split_write_cancelled_halfway_still_sends_a_whole_line() -> None:
    peer = ScriptedPeer()
    strategy = Unsafe(peer.connection)
    await cancelled(strategy.roundtrip(one_step(0, "halfway", split_at=4, pause=0)))
    assert peer.sent == b"ECHO halfway\n"
