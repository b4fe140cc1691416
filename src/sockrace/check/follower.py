"""The tape follower, sans-IO: where a replay stands on its tape, and what it is to do next.

A replay over real sockets follows the tape of an earlier run (tape.py): the proxy writes the
tape's pieces in its order, the hammer cuts its calls where the tape cuts them. `TapeFollower` is
the cursor that decides, and nothing else: it is told what happened (a write of so many bytes on a
connection in a direction, the client's bytes arrived, a reset, a call started, cut or ended, a
pass of the event loop begun, a timer gone off) and answers with what to do next as plain data:
take the cuts due, cut at the end of this pass, keep a pause, arm the patience, the entry at the
cursor may be due, following is over (and which calls to cut at once). It also records the run it
is given to. The time is a number passed in (`Clock`: the loop's clock, and its passes when they
are counted); the asyncio adapter around it (pacing.py) holds the futures, the timers and the
sockets. Tested without an event loop (tests/test_follower.py).

What a replay keeps to is the tape's structure: which connection, which direction, the order of the
entries, the sizes of the pieces and the passes between them. Not their bytes: a server chooses
bytes of its own on every connection (MySQL's salt, PostgreSQL's nonce, an HTTP `Date`), and a
client's answer may embed them, so a replay cannot write what the recording wrote there. A piece's
CRC-32 is a hint: where the bytes in hand match it, the piece is exactly those; where they do not,
the piece is what this replay's bytes make (`piece_length`), and the follower counts it (`differed`,
`resized`). A client whose bytes came short of the total an arrival recorded has written them all
once the loop has nothing else to run and none came for QUIET_S.

A replay that cannot take the tape's next entry within the tape's patience, writes on another flow
than the tape's next piece, or ends a call before its cut came has *diverged*: following stops, the
calls waiting for their cut are cut at once, and the rest of the run flows freely. `misaligned_at`
is the index of the first entry the replay did not follow; `summary()` says how far, in a sentence.

Pure: no asyncio, no sockets, no select.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from sockrace.check.faults import Direction
from sockrace.check.pieces import Arrivals, ServerHolds, ServerWant, continued
from sockrace.check.tape import Arrival, Cut, Entry, Piece, Recorder, Reset, Tape

# Without counted passes, the pause kept before a write is the recorded one up to this: a long
# recorded pause (a delay fault, a slow server) is then kept too, but never a stalled one.
MAX_SETTLE_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class Clock:
    """When an event happens: the event loop's clock in seconds, the passes the loop has made when
    they are counted (passes.py), and whether the pass hook runs (the start of a pass, before its
    select: what is due "in this pass" is then still to come)."""

    time: float
    passes: int | None = None
    in_hook: bool = False


# -- what to do next -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Moved:
    """The cursor moved, or its entry may have fallen due: wake whoever waits for a turn, and let the
    follower of the entry at the cursor take it (TapeFollower.due_turn)."""


@dataclass(frozen=True, slots=True)
class TakeCuts:
    """Take the cuts at the cursor that are due (TapeFollower.next_cut), the first one at once when
    `now`; `soon`: in a callback of its own, once the call that just started is under way."""

    now: bool
    soon: bool = False


@dataclass(frozen=True, slots=True)
class CutInPass:
    """Take the cuts at the cursor as a timer of this pass, after the pass's I/O callbacks: where the
    recording's timer cut the call."""


@dataclass(frozen=True, slots=True)
class ArmPatience:
    """(Re)arm the watchdog: diverge (`TapeFollower.time_out`) when no entry is taken for `seconds`."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Settle:
    """Without counted passes: the entry at `cursor` is due once `seconds` passed (`settled`)."""

    seconds: float
    cursor: int


@dataclass(frozen=True, slots=True)
class Stopped:
    """Following is over (the tape is done, or the run went another way): stop the timers, let the
    flows write what they hold and go on freely, and cut the calls in `cut` at once (they waited
    for a cut the tape will not give; each is recorded as it is cut)."""

    cut: tuple[int, ...] = ()


Action = Moved | TakeCuts | CutInPass | ArmPatience | Settle | Stopped


class PassStep(Enum):
    """What the start of a counted pass is to do about the entry at the cursor."""

    KEEP = "keep"  # nothing: the loop waits as it would
    SPIN = "spin"  # not due yet: make the pass an empty one, do not wait (the recording made passes here)
    CUT_IN_PASS = "cut in pass"  # its cut is due in this pass: a timer of this pass (CutInPass)
    TAKE_CUTS = "take cuts"  # a cut whose pass is over: take it now, and do not wait if one was taken
    RELEASE = "release"  # the write or reset at the cursor is due: Moved, and do not wait


class Progress:
    """How far a replay kept to its tape: where it went another way, and the pieces it wrote whose
    bytes (or sizes) were not the recorded ones."""

    def __init__(self, tape: Tape | None) -> None:
        self.tape = tape
        self.diverged_at: int | None = None  # the tape entry the replay could not take
        self.divergence = ""  # how it went another way
        self.differed = 0  # pieces written whose bytes were not the recorded ones
        self.resized = 0  # of them, pieces of another size than recorded

    def misaligned_at(self, cursor: int) -> int | None:
        """The index of the first tape entry the replay did not follow (where it went another way, or
        `cursor`, where it stood when the run ended); None when it followed all of it, or had no tape."""
        if self.diverged_at is not None or self.tape is None:
            return self.diverged_at
        return cursor if cursor < len(self.tape) else None

    def followed(self, cursor: int) -> float | None:
        """The share of the tape the replay took in order (1.0: all of it); None without a tape."""
        if self.tape is None:
            return None
        at = self.misaligned_at(cursor)
        return 1.0 if at is None else min(at, len(self.tape)) / len(self.tape)

    def summary(self, cursor: int) -> str | None:
        """How far the replay kept to its tape, in a sentence; None without a tape."""
        if (share := self.followed(cursor)) is None or self.tape is None:
            return None
        total = len(self.tape)
        line = f"followed {round(share * total)} of {total} entries of the tape ({share:.0%})"
        if self.differed:
            resized = f", {self.resized} of them of another size" if self.resized else ""
            line += f"; bytes differed in {self.differed} piece{'s' if self.differed != 1 else ''}{resized}"
        if self.diverged_at is not None:
            line += f"; then it went another way: {self.divergence}"
        return line


class _Calls:
    """The calls whose cut is the tape's: those started and waiting for it, and those cut."""

    def __init__(self, cuts: frozenset[int]) -> None:
        self._cuts = cuts
        self._waiting: dict[int, None] = {}  # in the order they started
        self._fired: set[int] = set()

    def starts(self, call: int) -> bool:
        """`call` starts: whether it waits for a cut of the tape's."""
        if call in self._cuts:
            self._waiting[call] = None
        return call in self._cuts

    def left(self, call: int) -> None:
        self._waiting.pop(call, None)

    def waits(self, call: int) -> bool:
        return call in self._waiting

    def ended_early(self, call: int) -> bool:
        """`call` ended, and the tape was to cut it."""
        return call in self._cuts and call not in self._fired

    def fire(self, calls: tuple[int, ...]) -> tuple[int, ...]:
        for call in calls:
            self._waiting.pop(call, None)
            self._fired.add(call)
        return calls

    def fire_all(self) -> tuple[int, ...]:
        return self.fire(tuple(self._waiting))


class Cursor:
    """Where a replay stands on its tape, and when the entry there is due: on a loop whose passes
    are counted, as many passes after the last thing the client did or was given as the recording
    had; without, once the recorded pause before it passed (Settle). Moving on past the arrivals
    already reached, and what the entry reached wants (actions)."""

    def __init__(self, tape: Tape | None, calls: _Calls, arrivals: Arrivals) -> None:
        self.tape, self._calls, self._arrivals = tape, calls, arrivals
        self.entries: tuple[Entry, ...] = () if tape is None else tape.entries
        self._continued = continued(self.entries)
        self.following = bool(self.entries)
        self.at = 0  # the index of the entry to take next
        self.counted = False  # the loop's passes are counted (known once started)
        self._due: int | None = None  # the pass the entry at the cursor is due in, when counted
        # This replay's passes minus the recording's, as of the last thing the client did or was
        # given (an arrival of its bytes, a write to it): the clock every due pass is read on.
        self.offset: int | None = None
        self._settled = -1  # without counted passes: the cursor whose recorded pause is over
        self._cut_for = -1  # the cursor whose cut is a timer of this pass (CutInPass)

    def expected(self) -> Entry | None:
        return self.entries[self.at] if self.at < len(self.entries) else None

    def continues(self) -> bool:
        """Whether the recording wrote more of the flow of the piece at the cursor right after it,
        with nothing of its connection in between: the piece was part of a message, not its end."""
        return self.at in self._continued

    def due_turn(self, clock: Clock) -> Piece | Reset | None:
        """The write or reset at the cursor when it is due: its pass has come (or it has none), or
        without counted passes, its recorded pause is over."""
        entry = self.expected()
        if not self.following or not isinstance(entry, Piece | Reset):
            return None
        if not self.counted:
            return entry if self._settled == self.at else None
        return entry if self._due is None or clock.passes is None or clock.passes >= self._due else None

    def paced(self) -> bool:
        """The entry at the cursor is due in a pass of its own (passes counted, and its pass known)."""
        return self.counted and self._due is not None

    def cut_due(self, clock: Clock) -> bool:
        """The Cut at the cursor is due: in the callbacks of its pass or later; from the pass hook,
        once its pass is over (one due in the hook's own pass is a timer of it: CutInPass)."""
        if not self.counted or self._due is None or clock.passes is None:
            return True
        return clock.passes > self._due if clock.in_hook else clock.passes >= self._due

    def settle(self, cursor: int) -> list[Action]:
        """The pause before the entry at `cursor` is over (Settle)."""
        if self.at != cursor:
            return []
        self._settled = cursor
        return [Moved()]

    def keep_time(self, entry: Entry, at_pass: int | None) -> None:
        """The client did or was given `entry` in pass `at_pass` of this replay: read the due
        passes of the entries after it on the clock that gives."""
        if entry.at_pass is not None and at_pass is not None:
            self.offset = at_pass - entry.at_pass

    def pass_step(self, clock: Clock) -> PassStep:
        """What the start of this pass is to do about the entry at the cursor (see PassStep)."""
        entry = self.expected()
        if not self.following or self._due is None or isinstance(entry, Arrival) or clock.passes is None:
            return PassStep.KEEP  # (an arrival comes when the client acts)
        if clock.passes < self._due:
            # When the loop would wait, the recording's made passes here all the same (its deadline
            # timers' wake-ups, events this run has no cause for): empty ones, so that the entry is
            # taken in the pass it was recorded in, not early.
            spin = not isinstance(entry, Cut) or self._calls.waits(entry.call)
            return PassStep.SPIN if spin else PassStep.KEEP
        if isinstance(entry, Cut):
            return self._cut_in_pass() if clock.passes == self._due else PassStep.TAKE_CUTS
        self._due = None
        return PassStep.RELEASE

    def advance(self, clock: Clock, by: int = 1) -> list[Action]:
        """Move `by` entries on, past the arrivals already there; what the entry reached wants."""
        start = self.at
        self.at += by
        if self.at > start and isinstance(taken := self.entries[start], Arrival):
            self._arrivals.taken(taken.connection)
        while isinstance(entry := self.expected(), Arrival) and self._arrivals.reached(entry):
            self._arrivals.taken(entry.connection)
            self.at += 1
        if self.at == start:
            return []
        if self.at >= len(self.entries):
            self.following = False
            return [Stopped()]
        return [ArmPatience(self.patience()), *self.reached(clock)]

    def reached(self, clock: Clock) -> list[Action]:
        """The cursor is at a new entry: when is it due, and is it due already."""
        assert self.tape is not None
        entry = self.expected()
        assert entry is not None
        self._due = None if entry.at_pass is None or self.offset is None else entry.at_pass + self.offset
        actions: list[Action] = []
        if isinstance(entry, Cut):
            if not self.counted or self._due is None:
                actions.append(TakeCuts(True))
            elif clock.in_hook:
                if clock.passes != self._due:
                    actions.append(TakeCuts(False))
                elif self._cut_in_pass() is PassStep.CUT_IN_PASS:
                    actions.append(CutInPass())
            # Else, in a pass's callbacks: due in this very pass at the earliest (the recording cut
            # it right after the entry before), it is cut at the start of the next one, after
            # everything this pass wakes, as the recording's timer did at its end.
        elif isinstance(entry, Piece | Reset) and not self.counted:
            # Keep the pause the recording had before it, at least one pass of the event loop: what
            # the previous entry set off runs before this one.
            actions.append(Settle(min(self.tape.gap_s(self.at), MAX_SETTLE_S), self.at))
        actions.append(Moved())
        return actions

    def patience(self) -> float:
        assert self.tape is not None
        return self.tape.patience_s()

    def _cut_in_pass(self) -> PassStep:
        entry = self.expected()
        if not isinstance(entry, Cut) or not self._calls.waits(entry.call):
            return PassStep.KEEP  # the call has not started yet: the loop may wait
        if self._cut_for == self.at:
            return PassStep.SPIN
        self._cut_for = self.at
        return PassStep.CUT_IN_PASS


class TapeFollower:
    """Records the run it is given to (`recorder`), and follows `tape` when there is one: told what
    happened, it says what to do next (the module's doc)."""

    def __init__(self, tape: Tape | None = None) -> None:
        self.tape, self.recorder, self.progress = tape, Recorder(), Progress(tape)
        self._calls = _Calls(frozenset() if tape is None else tape.cuts)
        self.arrivals = Arrivals()
        self.cursor = Cursor(tape, self._calls, self.arrivals)
        self.servers = ServerHolds()

    @property
    def following(self) -> bool:
        return self.cursor.following

    @property
    def misaligned_at(self) -> int | None:
        """The index of the first tape entry this replay did not follow (Progress.misaligned_at)."""
        return self.progress.misaligned_at(self.cursor.at)

    def followed(self) -> float | None:
        return self.progress.followed(self.cursor.at)

    def summary(self) -> str | None:
        return self.progress.summary(self.cursor.at)

    def start(self, clock: Clock) -> list[Action]:
        """The run begins (its first event): take the arrivals at the head of the tape, if any."""
        cursor = self.cursor
        cursor.counted = clock.passes is not None
        if not cursor.following:
            return []
        at, actions = cursor.at, [ArmPatience(cursor.patience()), *cursor.advance(clock, 0)]
        return actions if cursor.at != at else actions + cursor.reached(clock)

    def wrote(self, connection: int, direction: Direction, length: int, crc: int,
              clock: Clock) -> list[Action]:
        """The proxy wrote `length` bytes of CRC `crc`: when following, it must be the tape's next
        piece, on the same connection in the same direction (its bytes and size may differ: counted)."""
        piece = Piece(connection, direction, length, crc, self.recorder.at_s(clock.time), clock.passes)
        self.recorder.record(piece)
        if not self.following:
            return []
        expected = self.cursor.expected()
        if not (isinstance(expected, Piece) and (expected.connection, expected.direction)
                == (connection, direction)):
            return self.diverge(f"wrote {piece} where the tape has {expected}")
        if (expected.length, expected.crc) != (length, crc):
            self.progress.differed += 1
        if expected.length != length:
            self.progress.resized += 1
            if direction is Direction.TO_SERVER:
                self.arrivals.wrote_more(connection, length - expected.length)
        if direction is Direction.TO_CLIENT:
            self.cursor.keep_time(expected, piece.at_pass)
        return self.cursor.advance(clock)

    def arrived(self, connection: int, count: int, clock: Clock) -> list[Action]:
        """`count` more bytes of the client's arrived on `connection`."""
        total = self.arrivals.add(connection, count, clock.time)
        arrival = Arrival(connection, total, self.recorder.at_s(clock.time), clock.passes)
        self.recorder.record(arrival)
        expected = self.cursor.expected() if self.following else None
        if isinstance(expected, Arrival) and expected.connection == connection and \
                self.arrivals.reached(expected):
            self.cursor.keep_time(expected, arrival.at_pass)
            return self.cursor.advance(clock, 0)
        return []

    def reset(self, connection: int, direction: Direction, clock: Clock) -> list[Action]:
        self.recorder.record(Reset(connection, direction, self.recorder.at_s(clock.time), clock.passes))
        if not self.following:
            return []
        expected = self.cursor.expected()
        if isinstance(expected, Reset) and (expected.connection, expected.direction) \
                == (connection, direction):
            return self.cursor.advance(clock)
        return self.diverge(f"reset {connection} where the tape has {expected}")

    def call_starts(self, call: int) -> list[Action] | None:
        """Call `call` starts, and its cut is the follower's: None when not following (the caller
        cuts it on its own, and says so: `cut_made`). A call the tape never cuts is never cut."""
        if not self.following:
            return None
        expected = self.cursor.expected()
        if self._calls.starts(call) and isinstance(expected, Cut) and expected.call == call:
            # Its cut has come already: taken as soon as the call is under way (and due).
            return [TakeCuts(not self.cursor.paced(), soon=True)]
        return []

    def call_left(self, call: int) -> None:
        """Call `call` is over and cannot be cut any more (its cut was not taken)."""
        self._calls.left(call)

    def call_ended(self, call: int) -> list[Action]:
        """Call `call` ended (in whatever way): before its cut came, the run went another way."""
        if self.following and self._calls.ended_early(call):
            return self.diverge(f"call {call} ended before its cut came")
        return []

    def cut_made(self, call: int, clock: Clock) -> None:
        """`call` was cut short: recorded in its pass (from the pass hook, the end of the pass before),
        or without counted passes, once what the client wrote before the cut has arrived (the caller
        tells it then)."""
        at_pass = None if clock.passes is None else clock.passes - clock.in_hook
        self.recorder.record(Cut(call, self.recorder.at_s(clock.time), at_pass))

    def next_cut(self, clock: Clock, now: bool) -> int | None:
        """The call of the Cut at the cursor if it is due (or `now`) and has started: cut it, then
        tell `cut_taken`."""
        entry = self.cursor.expected()
        if not self.following or not isinstance(entry, Cut) or not self._calls.waits(entry.call):
            return None
        return self._calls.fire((entry.call,))[0] if now or self.cursor.cut_due(clock) else None

    def cut_taken(self, clock: Clock) -> list[Action]:
        return self.cursor.advance(clock)

    def diverge(self, how: str = "") -> list[Action]:
        """The run went another way than the tape: stop following, and cut the calls waiting."""
        if not self.following:
            return []
        self.cursor.following = False
        self.progress.diverged_at, self.progress.divergence = self.cursor.at, how
        return [Stopped(self._calls.fire_all())]

    def time_out(self, seconds: float) -> list[Action]:
        return self.diverge(f"no entry taken for {seconds:.2f} s")

    def close(self) -> None:
        """The run is over: stop following."""
        self.cursor.following = False

    def arrival_in_question(self) -> int | None:
        """At the start of a pass: the connection of the Arrival at the cursor when some of the
        client's bytes came since the last arrival taken. Its message may be shorter this time: it
        has arrived (`take_arrival`) once the loop has nothing to run, the client's socket holds
        nothing and none came for QUIET_S (Arrivals.quiet_left)."""
        entry = self.cursor.expected()
        if not self.following or not isinstance(entry, Arrival):
            return None
        return entry.connection if self.arrivals.came_since_taken(entry.connection) else None

    def take_arrival(self, clock: Clock) -> list[Action]:
        return self.cursor.advance(clock)

    def server_wants(self, clock: Clock) -> list[ServerWant]:
        return self.servers.wants(self.cursor.entries[self.cursor.at:], self.cursor.offset, clock.passes)
