"""The tape of a checked run, the pass counter, and a replay that follows the tape (check/pacing.py)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from clients import LockedClient

from sockrace.check.explore import Failure
from sockrace.check.faults import Direction, Faults
from sockrace.check.hammer import hammer
from sockrace.check.pacing import Pacer
from sockrace.check.passes import counter_of, counting_loop
from sockrace.check.proxy import FaultProxy
from sockrace.check.result import HammerResult
from sockrace.check.runner import CheckConfig, run_check
from sockrace.check.scenario import Scenario
from sockrace.check.tape import MIN_PATIENCE_S, Arrival, Cut, Piece, Reset, Tape
from sockrace.server import Server, ServerConfig

T = TypeVar("T")
UP, DOWN = Direction.TO_SERVER, Direction.TO_CLIENT


def run(main: Callable[[], Coroutine[Any, Any, T]], *, counted: bool = False) -> T:
    with asyncio.Runner(loop_factory=counting_loop if counted else None) as runner:
        return runner.run(asyncio.wait_for(main(), 60))


def firing(fired: list[int], call: int) -> Callable[[], bool]:
    """What cuts `call` short, here: notes it in `fired` and says it did."""
    def fire() -> bool:
        fired.append(call)
        return True
    return fire


def piece(direction: Direction, data: bytes, at_s: float = 0.0) -> Piece:
    return Piece(0, direction, len(data), zlib.crc32(data), at_s)


# ------------------------------------------------------------------ the tape


def test_the_tape_knows_its_pauses_cuts_and_patience() -> None:
    tape = Tape((piece(UP, b"GET k1\n", 0.0), piece(DOWN, b"v1\n", 0.1), Cut(4, 0.35), Arrival(0, 7, 0.4)))
    assert tape.gap_s(0) == 0.0
    assert tape.gap_s(2) == pytest.approx(0.25)
    assert tape.cuts == frozenset({4})
    assert tape.patience_s() == pytest.approx(1.0)  # four times the longest pause
    assert Tape((piece(UP, b"x"),)).patience_s() == MIN_PATIENCE_S


# ------------------------------------------------------------------ the pass counter


def test_the_counting_loop_counts_one_pass_per_turn_of_the_event_loop() -> None:
    async def main() -> int:
        counter = counter_of(asyncio.get_running_loop())
        assert counter is not None
        before = counter.passes
        for _ in range(5):
            await asyncio.sleep(0)
        return counter.passes - before

    assert run(main, counted=True) == 5
    plain = asyncio.new_event_loop()
    try:
        assert counter_of(plain) is None
    finally:
        plain.close()


def test_the_pass_hook_is_told_whether_the_loop_would_wait() -> None:
    seen: list[float | None] = []

    async def main() -> None:
        counter = counter_of(asyncio.get_running_loop())
        assert counter is not None

        def hook(timeout: float | None) -> float | None:
            seen.append(timeout)
            return timeout

        counter.hook = hook
        await asyncio.sleep(0)  # a callback is ready: the pass does not wait
        await asyncio.sleep(0.01)  # nothing ready: the pass waits for the timer
        counter.hook = None

    run(main, counted=True)
    assert 0 in seen
    assert any(timeout is not None and timeout > 0 for timeout in seen)


# ------------------------------------------------------------------ recording


def test_a_pacer_records_writes_arrivals_resets_and_cuts_in_order_with_their_passes() -> None:
    async def main() -> Tape:
        pacer = Pacer()
        pacer.arrived(0, 7)
        pacer.wrote(0, UP, b"GET k1\n")
        await asyncio.sleep(0)
        pacer.cutting(3)
        pacer.wrote(0, DOWN, b"v1\n")
        pacer.reset(0, DOWN)
        pacer.close()
        return pacer.tape()

    tape = run(main, counted=True)
    kinds = [type(entry) for entry in tape.entries]
    assert kinds == [Arrival, Piece, Cut, Piece, Reset]
    assert tape.entries[1] == replace(piece(UP, b"GET k1\n"), at_s=tape.entries[1].at_s,
                                      at_pass=tape.entries[1].at_pass)
    passes = [entry.at_pass or 0 for entry in tape.entries]
    assert all(entry.at_pass is not None for entry in tape.entries)
    assert passes == sorted(passes)
    assert passes[2] == passes[1] + 1  # the cut came one pass after the first write


# ------------------------------------------------------------------ following


def test_a_follower_writes_in_the_tape_order_and_cuts_where_the_tape_cuts() -> None:
    tape = Tape((piece(UP, b"GET k1\n"), piece(DOWN, b"v1\n"), Cut(7, 0.0)))
    fired: list[int] = []

    async def main() -> float | None:
        pacer = Pacer(tape)
        down = asyncio.create_task(pacer.turn(0, DOWN))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not down.done()  # the write to the server comes first
        assert await pacer.turn(0, UP) == tape.entries[0]
        release = pacer.take(7, firing(fired, 7))
        assert release is not None
        pacer.wrote(0, UP, b"GET k1\n")
        assert await down == tape.entries[1]
        assert fired == []
        pacer.wrote(0, DOWN, b"v1\n")
        assert fired == [7]  # at once, before the client can read the reply just written
        release()
        pacer.ended(7)
        assert pacer.diverged_at is None
        return pacer.followed()

    assert run(main) == 1.0


def test_a_follower_that_writes_other_bytes_on_the_tape_s_flow_follows_on_and_counts_them() -> None:
    """A server's salt, a client's hash of it: bytes a replay cannot write again are a hint, not a
    divergence."""
    tape = Tape((piece(DOWN, b"HELLO salt1\n"), piece(UP, b"GET k1\n"), Cut(2, 0.0)))
    fired: list[int] = []

    async def main() -> Pacer:
        pacer = Pacer(tape)
        pacer.take(2, firing(fired, 2))
        pacer.wrote(0, DOWN, b"HELLO salt22\n")
        pacer.wrote(0, UP, b"GET k9\n")
        return pacer

    pacer = run(main)
    assert (pacer.diverged_at, pacer.followed()) == (None, 1.0)
    assert (pacer.differed, pacer.resized) == (2, 1)
    assert fired == [2]  # at its place in the tape, not because the run went another way
    assert pacer.summary() == ("followed 3 of 3 entries of the tape (100%); bytes differed in 2 pieces, "
                               "1 of them of another size")


def test_a_follower_that_writes_on_another_flow_has_diverged_and_cuts_the_calls_waiting_for_it() -> None:
    tape = Tape((piece(UP, b"GET k1\n"), Cut(2, 0.0)))
    fired: list[int] = []

    async def main() -> Pacer:
        pacer = Pacer(tape)
        pacer.take(2, firing(fired, 2))
        pacer.wrote(0, DOWN, b"v1\n")
        return pacer

    pacer = run(main)
    assert not pacer.following
    assert pacer.diverged_at == 0
    assert pacer.divergence.startswith("wrote Piece(")
    assert fired == [2]
    assert pacer.followed() == 0.0
    summary = pacer.summary()
    assert summary is not None
    assert summary.startswith("followed 0 of 2 entries of the tape (0%); then it went another way: "
                              "wrote Piece(")


def test_a_call_the_tape_cuts_that_ends_before_its_cut_is_a_divergence() -> None:
    tape = Tape((piece(DOWN, b"v1\n"), Cut(5, 0.0)))

    async def main() -> Pacer:
        pacer = Pacer(tape)
        release = pacer.take(5, lambda: True)
        assert release is not None
        release()
        pacer.ended(5)
        return pacer

    pacer = run(main)
    assert (pacer.following, pacer.diverged_at) == (False, 0)
    assert pacer.divergence == "call 5 ended before its cut came"


def test_a_follower_waits_for_an_entry_no_longer_than_the_tape_s_patience() -> None:
    tape = Tape((piece(UP, b"GET k1\n"), piece(DOWN, b"v1\n")))

    async def main() -> tuple[Piece | Reset | None, Pacer]:
        pacer = Pacer(tape)
        return await pacer.turn(0, DOWN), pacer

    entry, pacer = run(main)
    assert entry is None
    assert pacer.divergence == f"no entry taken for {MIN_PATIENCE_S:.2f} s"


def test_without_a_tape_a_pacer_leaves_the_calls_to_their_own_deadlines() -> None:
    async def main() -> Callable[[], None] | None:
        return Pacer().take(1, lambda: True)

    assert run(main) is None


# ------------------------------------------------------------------ a replay over real sockets


async def locked(address: tuple[str, int]) -> AsyncIterator[tuple[Any, Any]]:
    """The lock-only client of tests/clients.py: a call cut short leaves its reply to the next."""
    host, port = address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"".join(f"SET k{i} v{i}\n".encode() for i in range(200)))
        await writer.drain()
        for _ in range(200):
            await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    client = LockedClient(host, port)
    try:
        yield (lambda i: client.get(f"k{i}")), (lambda i: f"v{i}")
    finally:
        await client.aclose()


def test_a_replay_that_follows_the_tape_brings_the_same_crossed_pair_back() -> None:
    """Measured: without the tape the first run's crossed pair came back in 1-2 of 20 replays, with
    it in 20 of 20 (a recording the replay cannot follow is rare, not impossible, on a busy
    machine: five recordings here, each replayed once, and three must bring the pair back)."""
    async def main() -> list[tuple[bool, float | None]]:
        async with Server(ServerConfig(port=0)) as server:
            config = CheckConfig("locked", server.address, seed=1, deadline_s=20, record=True)
            scenario = Scenario("locked", locked)
            outcomes = []
            for _ in range(5):
                first = (await run_check(config, scenario=scenario)).result
                failure = Failure.first_of(first)
                assert failure is not None
                assert first.tape is not None
                assert first.followed is None
                again = config.with_setting(
                    replace(config.setting, decisions=first.decisions, tape=first.tape))
                replayed = (await run_check(again, scenario=scenario)).result
                outcomes.append((failure in Failure.all_of(replayed), replayed.followed))
            return outcomes

    outcomes = run(main, counted=True)
    assert sum(same for same, _ in outcomes) >= 3, outcomes
    assert all(followed is not None and followed > 0 for _, followed in outcomes)


def test_a_check_records_a_tape_only_when_asked() -> None:
    async def main() -> tuple[Tape | None, Tape | None]:
        async with Server(ServerConfig(port=0)) as server:
            config = CheckConfig("locked", server.address, tasks=2, calls=3, deadline_s=20)
            scenario = Scenario("locked", locked)
            plain = (await run_check(config, scenario=scenario)).result
            recording = config.with_setting(replace(config.setting, record=True))
            recorded = (await run_check(recording, scenario=scenario)).result
            return plain.tape, recorded.tape

    plain, recorded = run(main, counted=True)
    assert plain is None
    assert recorded is not None
    assert sum(isinstance(entry, Piece) for entry in recorded.entries) >= 12  # 6 GETs, 6 replies


def test_a_recording_keeps_at_most_max_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sockrace.check.tape.MAX_ENTRIES", 3)

    async def main() -> Tape:
        pacer = Pacer()
        for i in range(5):
            pacer.wrote(0, UP, f"GET k{i}\n".encode())
        return pacer.tape()

    tape = run(main)
    assert [entry.crc for entry in tape.entries if isinstance(entry, Piece)] == [
        zlib.crc32(f"GET k{i}\n".encode()) for i in range(3)]


def test_a_replay_follows_a_run_with_faults_to_its_end() -> None:
    """A client that writes more than one socket buffer holds before the tape lets it through:
    the follower reads on while the flow waits for its turn (it waited for an arrival that could
    not come, and diverged at the second entry)."""
    async def main() -> float | None:
        async with Server(ServerConfig(port=0)) as server:
            config = CheckConfig("locked", server.address, tasks=4, calls=10, deadline_s=20, record=True,
                                 faults=Faults(delay_ms=(1.0, 3.0)))
            scenario = Scenario("locked", bulky)
            first = (await run_check(config, scenario=scenario)).result
            again = config.with_setting(
                replace(config.setting, decisions=first.decisions, tape=first.tape))
            return (await run_check(again, scenario=scenario)).result.followed

    followed = run(main, counted=True)
    assert followed is not None
    assert followed > 0.5


async def bulky(address: tuple[str, int]) -> AsyncIterator[tuple[Any, Any]]:
    """`locked`, its keys written with 300 KB of SETs on the client's own connection."""
    host, port = address
    client = LockedClient(host, port)
    reader, writer = await client.open()
    writer.write(b"".join(f"SET k{i} v{i}\n".encode() for i in range(20_000)))
    await writer.drain()
    for _ in range(20_000):
        await reader.readline()
    try:
        yield (lambda i: client.get(f"k{i}")), (lambda i: f"v{i}")
    finally:
        await client.aclose()


# ------------------------------------------------------------------ bytes a replay cannot write again


def conversation(greeting: bytes, lines: list[bytes], *, split: int = 0) -> Tape:
    """The tape of a client that reads the server's greeting (in two pieces when `split`), then
    sends each of `lines` and reads the server's "OK"."""
    entries: list[Piece | Arrival] = (
        [piece(DOWN, greeting[:split]), piece(DOWN, greeting[split:])] if split else [piece(DOWN, greeting)])
    total = 0
    for line in lines:
        total += len(line)
        entries += [Arrival(0, total, 0.0), piece(UP, line), piece(DOWN, b"OK\n")]
    return Tape(tuple(entries))


async def follow_conversation(tape: Tape, greeting: bytes, lines: list[bytes]) -> tuple[Pacer, bytes]:
    """Follow `tape` through a FaultProxy while a server greets with `greeting` and the client sends
    `lines`; what the client read."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        while await reader.readline():
            writer.write(b"OK\n")
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    pacer = Pacer(tape)
    try:
        async with FaultProxy(server.sockets[0].getsockname()[:2], pacer=pacer) as proxy:
            reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
            async with asyncio.timeout(10):  # a piece written short would leave readline waiting
                read = await reader.readline()
                for line in lines:
                    writer.write(line)
                    read += await reader.readline()
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    pacer.close()
    return pacer, read


GREETING = b"HELLO 0123456789abc\n"  # 20 bytes, as recorded


@pytest.mark.parametrize(("split", "greeting", "written", "differed", "resized"), [
    # The same size, other bytes (a salt): the recorded size.
    (0, b"HELLO zyxwvutsrqpon\n", [20, 10, 3], 1, 0),
    # Longer this time: the whole read the recorded size falls in (the recording paused after it).
    (0, b"HELLO 0123456789abcdefghij\n", [27, 10, 3], 1, 1),
    # Shorter: what came, once nothing more did for QUIET_S.
    (0, b"HELLO 01234\n", [12, 10, 3], 1, 1),
    # Recorded in two pieces: the first keeps its size (the recording wrote on), the second ends
    # where the read does.
    (8, b"HELLO 9876543210abcdefg\n", [8, 16, 10, 3], 2, 1),
])
def test_a_replay_writes_the_pieces_a_server_s_other_bytes_make(
        split: int, greeting: bytes, written: list[int], differed: int, resized: int) -> None:
    tape = conversation(GREETING, [b"AUTH 1234\n"], split=split)
    pacer, read = run(lambda: follow_conversation(tape, greeting, [b"AUTH 1234\n"]))
    assert read == greeting + b"OK\n"
    assert (pacer.diverged_at, pacer.followed()) == (None, 1.0)
    assert [entry.length for entry in pacer.tape().entries if isinstance(entry, Piece)] == written
    assert (pacer.differed, pacer.resized) == (differed, resized)


def test_a_replay_follows_a_client_whose_answer_is_shorter_than_recorded() -> None:
    """A proof that embeds the server's salt may be of another size: the recorded arrival's total
    is never reached, and the client has written all it will once the loop has nothing to run and
    nothing came for QUIET_S. The next arrival is read with the difference: taken at once, its
    piece is written in the pass the client's bytes came in."""
    recorded = [b"AUTH " + b"f" * 40 + b"\n", b"GET k1\n"]
    replayed = [b"AUTH " + b"e" * 20 + b"\n", b"GET k1\n"]
    tape = conversation(GREETING, recorded)
    pacer, read = run(lambda: follow_conversation(tape, GREETING, replayed), counted=True)
    assert read == GREETING + b"OK\nOK\n"
    assert (pacer.diverged_at, pacer.followed()) == (None, 1.0)
    entries = pacer.tape().entries
    assert [entry.length for entry in entries if isinstance(entry, Piece)] == [20, 26, 3, 7, 3]
    assert (pacer.differed, pacer.resized) == (1, 1)
    second = next(i for i, entry in enumerate(entries) if isinstance(entry, Arrival) and entry.total == 33)
    assert isinstance(entries[second + 1], Piece)
    assert entries[second + 1].at_pass == entries[second].at_pass


def test_a_hammer_result_says_where_its_replay_stopped_following_the_tape() -> None:
    """The calls here never touch the proxy: the tape's first entry is never taken, and the result
    says so (misaligned_at 0, none of it followed); a run that records without a tape has none."""
    tape = Tape((piece(UP, b"GET k1\n"), piece(DOWN, b"v1\n")))

    async def call(i: int) -> int:
        await asyncio.sleep(0)
        return i

    async def main() -> tuple[HammerResult, HammerResult]:
        replayed = await hammer(call, lambda i: i, tasks=2, calls=2, timeout_ms=None, pacer=Pacer(tape))
        recorded = await hammer(call, lambda i: i, tasks=2, calls=2, timeout_ms=None, pacer=Pacer())
        return replayed, recorded

    replayed, recorded = run(main, counted=True)
    assert (replayed.misaligned_at, replayed.followed) == (0, 0.0)
    assert (recorded.misaligned_at, recorded.followed) == (None, None)
