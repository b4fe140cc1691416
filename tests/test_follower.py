"""The sans-IO tape follower (check/follower.py, check/pieces.py), without an event loop: events in,
what to do next out, as session.py is tested."""

from __future__ import annotations

import zlib

import pytest

from sockrace.check.faults import Direction
from sockrace.check.follower import (
    Action,
    ArmPatience,
    Clock,
    CutInPass,
    Moved,
    PassStep,
    Settle,
    Stopped,
    TakeCuts,
    TapeFollower,
)
from sockrace.check.pieces import QUIET_S, Arrivals, HoldFor, ServerHolds, ServerWant, piece_length
from sockrace.check.tape import Arrival, Cut, Piece, Reset, Tape

UP, DOWN = Direction.TO_SERVER, Direction.TO_CLIENT
GREETING = b"HELLO 0123456789abc\n"


def piece(direction: Direction, data: bytes, at_pass: int | None = None, connection: int = 0) -> Piece:
    return Piece(connection, direction, len(data), zlib.crc32(data), 0.0, at_pass)


def counted(passes: int = 1, time: float = 0.0, *, in_hook: bool = False) -> Clock:
    return Clock(time, passes, in_hook)


def write(follower: TapeFollower, direction: Direction, data: bytes, clock: Clock | None = None,
          connection: int = 0) -> list[Action]:
    return list(follower.wrote(connection, direction, len(data), zlib.crc32(data), clock or counted()))


# ------------------------------------------------------------------ following by structure


def test_a_piece_of_other_bytes_but_the_recorded_size_is_followed_and_counted() -> None:
    tape = Tape((piece(DOWN, GREETING), Arrival(0, 7, 0.0), piece(UP, b"GET k1\n"), piece(DOWN, b"v1\n")))
    follower = TapeFollower(tape)
    assert follower.start(counted()) == [ArmPatience(tape.patience_s()), Moved()]
    assert follower.cursor.due_turn(counted()) == tape.entries[0]
    salted = b"HELLO zyxwvutsrqpon\n"  # a salt of its own: 20 bytes, another CRC
    assert write(follower, DOWN, salted) == [ArmPatience(tape.patience_s()), Moved()]
    assert follower.cursor.at == 1
    assert follower.arrived(0, 7, counted()) != []  # the client's request came: on to its piece
    assert follower.cursor.due_turn(counted()) == tape.entries[2]
    write(follower, UP, b"GET k1\n")
    assert write(follower, DOWN, b"v1\n") == [Stopped()]  # the tape is done
    assert (follower.following, follower.misaligned_at, follower.followed()) == (False, None, 1.0)
    assert (follower.progress.differed, follower.progress.resized) == (1, 0)
    assert follower.summary() == "followed 4 of 4 entries of the tape (100%); bytes differed in 1 piece"


def test_a_write_on_another_flow_than_the_tape_s_next_is_a_divergence_at_its_entry() -> None:
    tape = Tape((piece(UP, b"GET k1\n"), piece(DOWN, b"v1\n"), piece(UP, b"GET k2\n"), piece(DOWN, b"v2\n"),
                 Cut(4, 0.0)))
    follower = TapeFollower(tape)
    follower.start(counted())
    assert follower.call_starts(4) == []  # its cut is to come
    write(follower, UP, b"GET k1\n")
    write(follower, DOWN, b"v1\n")
    actions = write(follower, DOWN, b"v2\n")  # the reply before its request: another order
    assert actions == [Stopped(cut=(4,))]  # the call waiting for its cut is cut at once
    assert (follower.misaligned_at, follower.progress.diverged_at) == (2, 2)
    assert follower.followed() == 2 / 5
    assert follower.progress.divergence.startswith("wrote Piece(connection=0, direction=")
    summary = follower.summary()
    assert summary is not None
    assert summary.startswith("followed 2 of 5 entries of the tape (40%); then")
    assert write(follower, UP, b"GET k2\n") == []  # no longer following: recorded only
    recorded = follower.recorder.tape().entries
    assert [entry.length for entry in recorded if isinstance(entry, Piece)] == [7, 3, 3, 7]


def test_a_reset_where_the_tape_has_a_write_is_a_divergence() -> None:
    follower = TapeFollower(Tape((piece(UP, b"GET k1\n"),)))
    follower.start(counted())
    assert follower.reset(0, UP, counted()) == [Stopped()]
    assert follower.misaligned_at == 0
    assert follower.progress.divergence.startswith("reset 0 where the tape has Piece(")


def test_a_client_that_writes_more_than_recorded_shifts_the_arrivals_after_it() -> None:
    """A proof that embeds the server's salt may be longer this time: the next arrival's total is
    read with the difference, not taken early."""
    tape = Tape((Arrival(0, 10, 0.0), piece(UP, b"AUTH 1234\n"), Arrival(0, 17, 0.0), piece(UP, b"GET k1\n")))
    follower = TapeFollower(tape)
    follower.start(counted())
    follower.arrived(0, 12, counted())
    assert follower.cursor.at == 1
    write(follower, UP, b"AUTH 123456\n")  # 12 bytes where 10 were recorded
    assert follower.progress.resized == 1
    follower.arrived(0, 5, counted())  # 17 in all: the recording's total, not this run's
    assert follower.cursor.at == 2
    follower.arrived(0, 2, counted())  # 19 = 17 + 2
    assert follower.cursor.at == 3


def test_an_arrival_that_falls_short_is_taken_once_quiet() -> None:
    tape = Tape((Arrival(0, 40, 0.0), piece(UP, b"x" * 40)))
    follower = TapeFollower(tape)
    follower.start(counted())
    assert follower.arrival_in_question() is None  # nothing came yet
    follower.arrived(0, 25, counted(time=1.0))
    assert follower.cursor.at == 0
    assert follower.arrival_in_question() == 0
    assert follower.arrivals.quiet_left(0, 1.0 + QUIET_S / 2) == pytest.approx(QUIET_S / 2)
    assert follower.arrivals.quiet_left(0, 1.0 + QUIET_S) == 0.0
    assert Moved() in follower.take_arrival(counted())
    assert follower.cursor.at == 1


# ------------------------------------------------------------------ calls and their cuts


def test_a_cut_is_taken_at_its_place_in_the_tape_and_not_before() -> None:
    tape = Tape((piece(UP, b"GET k1\n"), Cut(7, 0.0), piece(DOWN, b"v1\n")))
    follower = TapeFollower(tape)
    follower.start(Clock(0.0))  # passes not counted
    assert follower.call_starts(7) == []
    assert follower.next_cut(Clock(0.0), True) is None  # the cursor is not at its Cut yet
    actions = write(follower, UP, b"GET k1\n", Clock(0.0))
    assert actions == [ArmPatience(tape.patience_s()), TakeCuts(True), Moved()]
    assert follower.next_cut(Clock(0.0), True) == 7
    assert follower.next_cut(Clock(0.0), True) is None  # taken once
    actions = follower.cut_taken(Clock(0.0))
    assert actions == [ArmPatience(tape.patience_s()), Settle(0.0, 2), Moved()]
    assert follower.cursor.due_turn(Clock(0.0)) is None  # its pause is not over
    assert follower.cursor.settle(2) == [Moved()]
    assert follower.cursor.due_turn(Clock(0.0)) == tape.entries[2]
    assert follower.call_ended(7) == []  # cut where the tape cut it: no divergence


def test_a_call_the_tape_cuts_that_ends_before_its_cut_is_a_divergence() -> None:
    follower = TapeFollower(Tape((piece(DOWN, b"v1\n"), Cut(5, 0.0))))
    follower.start(counted())
    follower.call_starts(5)
    follower.call_left(5)
    assert follower.call_ended(5) == [Stopped()]  # left: not cut again
    assert (follower.misaligned_at, follower.progress.divergence) == (0, "call 5 ended before its cut came")


def test_a_call_whose_cut_has_come_is_cut_once_it_is_under_way() -> None:
    tape = Tape((Cut(3, 0.0), piece(UP, b"GET k1\n")))
    follower = TapeFollower(tape)
    follower.start(Clock(0.0))
    assert follower.call_starts(3) == [TakeCuts(True, soon=True)]
    assert follower.call_starts(9) == []  # never cut by the tape
    assert TapeFollower(None).call_starts(3) is None  # not following: the caller cuts on its own


def test_with_counted_passes_a_cut_falls_in_the_pass_the_recording_had_after_the_reply() -> None:
    """The reply was given in pass 10 of the recording and the cut came in pass 12: replayed, the
    reply goes in pass 100, so the cut is due in pass 102, as a timer of that pass."""
    tape = Tape((piece(DOWN, b"v1\n", at_pass=10), Cut(3, 0.0, 12), piece(UP, b"GET k2\n", at_pass=12)))
    follower = TapeFollower(tape)
    follower.start(counted(90))
    write(follower, DOWN, b"v1\n", counted(100))
    assert follower.cursor.pass_step(counted(101, in_hook=True)) is PassStep.KEEP  # call 3 not started
    follower.call_starts(3)
    assert follower.cursor.pass_step(counted(101, in_hook=True)) is PassStep.SPIN  # an empty pass
    assert follower.next_cut(counted(101), False) is None  # not due yet
    assert follower.cursor.pass_step(counted(102, in_hook=True)) is PassStep.CUT_IN_PASS
    assert follower.cursor.pass_step(counted(102, in_hook=True)) is PassStep.SPIN  # (scheduled once)
    assert follower.next_cut(counted(102, in_hook=True), False) is None  # from the hook: its pass is to come
    assert follower.next_cut(counted(102), False) == 3  # in the callbacks of its pass
    follower.cut_made(3, counted(102))
    follower.cut_taken(counted(102))
    assert follower.cursor.due_turn(counted(102)) == tape.entries[2]  # due in the same pass: offset 90
    assert follower.recorder.tape().entries[-1] == Cut(3, 0.0, 102)


def test_from_the_pass_hook_a_cut_reached_in_its_own_pass_is_a_timer_of_that_pass() -> None:
    tape = Tape((piece(DOWN, b"v1\n", at_pass=10), Cut(3, 0.0, 10)))
    follower = TapeFollower(tape)
    follower.start(counted(1))
    follower.call_starts(3)
    assert CutInPass() in write(follower, DOWN, b"v1\n", counted(50, in_hook=True))


def test_a_write_due_in_a_later_pass_is_released_in_that_pass() -> None:
    tape = Tape((piece(DOWN, b"v1\n", at_pass=10), piece(UP, b"GET k2\n", at_pass=13)))
    follower = TapeFollower(tape)
    follower.start(counted(1))
    write(follower, DOWN, b"v1\n", counted(20))
    assert follower.cursor.due_turn(counted(22)) is None
    assert follower.cursor.pass_step(counted(22, in_hook=True)) is PassStep.SPIN
    assert follower.cursor.pass_step(counted(23, in_hook=True)) is PassStep.RELEASE
    assert follower.cursor.due_turn(counted(23)) == tape.entries[1]


def test_an_entry_not_taken_within_the_patience_is_a_divergence() -> None:
    follower = TapeFollower(Tape((piece(UP, b"GET k1\n"),)))
    assert follower.start(counted()) == [ArmPatience(0.5), Moved()]
    assert follower.time_out(0.5) == [Stopped()]
    assert follower.progress.divergence == "no entry taken for 0.50 s"


def test_without_a_tape_it_records_only() -> None:
    follower = TapeFollower()
    follower.start(counted(3, 10.0))
    assert follower.arrived(1, 7, counted(3, 10.0)) == []
    assert write(follower, UP, b"GET k1\n", counted(4, 10.5), connection=1) == []
    follower.cut_made(2, counted(5, 11.0, in_hook=True))
    assert follower.reset(1, DOWN, counted(6, 11.5)) == []
    assert follower.recorder.tape().entries == (
        Arrival(1, 7, 0.0, 3), Piece(1, UP, 7, zlib.crc32(b"GET k1\n"), 0.5, 4), Cut(2, 1.0, 4),
        Reset(1, DOWN, 1.5, 6))
    assert (follower.followed(), follower.summary(), follower.misaligned_at) == (None, None, None)


def test_a_run_that_ends_before_its_tape_is_misaligned_where_it_stood() -> None:
    follower = TapeFollower(Tape((piece(UP, b"GET k1\n"), piece(DOWN, b"v1\n"))))
    follower.start(counted())
    write(follower, UP, b"GET k1\n")
    follower.close()
    assert (follower.misaligned_at, follower.followed(), follower.progress.diverged_at) == (1, 0.5, None)


# ------------------------------------------------------------------ the bytes of a piece


def test_a_piece_is_the_recorded_size_of_other_bytes() -> None:
    entry = piece(DOWN, GREETING)
    salted = b"HELLO zyxwvutsrqpon\n"
    assert piece_length(entry, salted, [20], 0.0, continues=False) == 20
    # More held than the piece, in one read: the recorded bytes are the piece, and so are other
    # bytes when the recording wrote on; else the read is the peer's message (the next test).
    assert piece_length(entry, GREETING + b"OK\n", [23], 0.0, continues=False) == 20
    assert piece_length(entry, salted + b"OK\n", [23], 0.0, continues=True) == 20
    assert piece_length(entry, salted + b"OK\n", [23], 0.0, continues=False) == 23


def test_a_longer_message_is_the_read_the_recorded_size_falls_in_unless_the_flow_went_on() -> None:
    entry = piece(DOWN, GREETING)
    longer = b"HELLO 0123456789abcdefghij\n"  # 27 bytes, then a later read
    held = longer + b"OK\n"
    assert piece_length(entry, held, [27, 30], 0.0, continues=False) == 27
    assert piece_length(entry, held, [27, 30], 0.0, continues=True) == 20  # part of a message


def test_a_shorter_message_is_held_for_quiet_then_taken_as_it_came() -> None:
    entry = piece(DOWN, GREETING)
    short = b"HELLO 01234\n"
    assert piece_length(entry, b"", [], 0.0, continues=False) is None
    held_for = piece_length(entry, short, [12], 0.01, continues=False)
    assert isinstance(held_for, HoldFor)
    assert held_for.seconds == pytest.approx(QUIET_S - 0.01)
    assert piece_length(entry, short, [12], QUIET_S, continues=False) == 12
    assert piece_length(entry, short, [12], None, continues=False) == 12  # its source ended


def test_the_loop_is_held_for_server_bytes_due_by_the_next_pass_in_tape_order() -> None:
    entries = (piece(DOWN, b"v1\n", 5), piece(UP, b"GET k2\n", 6), piece(DOWN, b"v2\n", 6),
               piece(DOWN, b"v3\n", 6, connection=1), piece(DOWN, b"late\n", 9))
    assert ServerHolds.wants(entries, 0, 5) == [
        ServerWant(0, 3, False), ServerWant(0, 6, True), ServerWant(1, 3, False)]
    assert ServerHolds.wants(entries, None, 5) == []  # the replay's clock is not known yet
    holds = ServerHolds()
    for _ in range(2):
        holds.answered(False, same_pass=False)
    holds.answered(False, same_pass=True)  # may have waited for an answer to its very request
    assert holds.active
    holds.answered(False, same_pass=False)
    assert not holds.active  # three unanswered holds in a row: a server in this very loop


def test_arrivals_are_counted_per_connection() -> None:
    arrivals = Arrivals()
    assert arrivals.add(0, 5, 1.0) == 5
    assert arrivals.add(1, 3, 1.0) == 3
    assert arrivals.add(0, 5, 2.0) == 10
    assert arrivals.reached(Arrival(0, 10, 0.0))
    assert not arrivals.reached(Arrival(1, 10, 0.0))
    arrivals.wrote_more(0, -4)  # the client wrote 4 bytes fewer than recorded
    assert arrivals.reached(Arrival(0, 14, 0.0))
    arrivals.taken(0)
    assert not arrivals.came_since_taken(0)
    arrivals.add(0, 1, 3.0)
    assert arrivals.came_since_taken(0)
