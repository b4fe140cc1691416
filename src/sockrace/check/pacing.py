"""Pacing: record a checked run's tape, and make a replay over real sockets follow it.

The proxy and the hammer of one run share a Pacer. It always records (tape.py): the proxy reports
each write and reset it makes and each arrival of the client's bytes, the hammer each call it cuts
short. Given the tape of an earlier run it also *follows* it: every flow of the proxy has a follower
(`follow`) that holds what its source sends and writes the piece the tape holds next when it is due;
the hammer hands over the interruption of every call that has one (`take`), and the pacer cuts the
call when the tape reaches its Cut. A call the recording did not cut runs without a deadline. The
race the recording met (a reply on its way while its caller gives up) is then met again whatever
the kernel's timing.

When is "when"? On a loop whose passes are counted (passes.py, the default of `sockrace check`),
every entry is stamped with its pass, and a replay takes each entry as many passes after the one
before as the recording did: a cut lands at the end of the same pass relative to the reply it
races, so that the client has taken in exactly what it had. The recording's proxy wrote what it
read in the read's own callback; a follower does too, in the callbacks of the pass its piece falls
due in (the read's own pass when the bytes come then), never from a task that would wake passes
later and let the client run ahead; a loop that would wait before a write or a cut falls due makes
empty passes until it does, as the recording's loop made passes there. On another loop, a write
waits the recorded pause after the entry before, and a cut is taken at once, as soon as the entry
before it was (a call the recording cut had not taken in the bytes written just before its cut).

What a replay keeps to is the tape's structure: which connection, which direction, the order of the
entries, the sizes of the pieces and the passes between them. Not their bytes: a server chooses
bytes of its own on every connection (MySQL's salt, PostgreSQL's nonce and backend key, an HTTP
`Date`), and a client's answer may embed them (a salted password hash), so a replay cannot write
what the recording wrote there. A piece's CRC-32 is a hint: where the bytes in hand match it, the
piece is exactly those; where they do not, the follower writes the piece this replay's bytes make
(of the same size, or the peer's message as it came when its size differs: _Follower.piece), and
the pacer counts it (`differed`, `resized`). A client whose bytes came short of the total an arrival
recorded has written them all once the loop has nothing else to run and none came for QUIET_S.

A replay that cannot take the tape's next entry within the tape's patience, writes on another flow
than the tape's next piece, or ends a call before its cut came has *diverged*: following stops, the
calls waiting for their cut are cut at once, later ones get their recorded deadlines back, and the
rest of the run flows freely. `diverged_at` and `divergence` say where and how; `summary()` says it
in a sentence, with the pieces whose bytes differed.
"""

from __future__ import annotations

import array
import asyncio
import select
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import Final

from sockrace.check.endpoint import WRITE_HIGH_WATER, End, Endpoint
from sockrace.check.faults import Direction
from sockrace.check.passes import PassCounter, counter_of
from sockrace.check.tape import MAX_ENTRIES, Arrival, Cut, Entry, Piece, Reset, Tape

# Without counted passes, the pause a follower keeps before a write is the recorded one up to this:
# a long recorded pause (a delay fault, a slow server) is then kept too, but never a stalled one.
MAX_SETTLE_S: Final = 1.0
# What a follower holds of one flow at most while its bytes wait for their turn in the tape.
MAX_HELD_BYTES: Final = 1024 * 1024
# How long the loop is held for a server's bytes that are due to the client (see _wait_for_server).
# A server that has not answered by then runs in this very loop (held, it cannot answer) or is slow.
SERVER_WAIT_S: Final = 0.02
# How long the loop is held at most for a server's bytes due to the client in the pass a request of
# the same connection is due to go to it: they may answer an earlier request (then they are on
# their way), or that very one (then they cannot come before it goes, and the hold is lost time).
SAME_PASS_WAIT_S: Final = 0.002
# How often the loop held for a server's bytes looks whether the rest of them came.
SERVER_POLL_S: Final = 0.0002
# Waits for a server that ended with nothing of it, in a row, after which the replay stops holding the
# loop for servers: one in this very loop never answers a held loop; one may be slow once.
MAX_UNANSWERED: Final = 3
# How far past the cursor a replay looks for server bytes due by the next pass (_wait_for_server).
LOOKAHEAD: Final = 16
# How long a follower holding less of a flow than its piece's recorded size waits for more before it
# takes what it holds as the piece: the peer's message is shorter this time (a greeting of another
# size). What a peer sent in one write comes in one read on loopback, well within this; the rest of
# a message it has not sent yet (a reply still being computed) would be left to the next piece.
QUIET_S: Final = 0.05


class Pacer:
    """Records the tape of the run it is given to, and follows `tape` when there is one."""

    def __init__(self, tape: Tape | None = None) -> None:
        self._tape = tape
        self._following = tape is not None and len(tape) > 0
        self._cursor = 0
        self._due: int | None = None  # the pass the entry at the cursor is due in, when counted
        # This replay's passes minus the recording's, as of the last thing the client did or was
        # given (an arrival of its bytes, a write to it): the clock every due pass is read on.
        self._offset: int | None = None
        self._settled = -1  # without counted passes: the cursor whose recorded pause is over
        self._recorded: list[Entry] = []
        self._origin: float | None = None
        self._counter: PassCounter | None = None
        self._started = False
        self._in_hook = False  # the pass counter's hook is running (inside the loop's select)
        self._cut_for = -1  # the cursor whose Cut is scheduled in this pass (_cut_in_pass)
        self._kicking = False
        self._changed: asyncio.Event | None = None
        self._fires: dict[int, Callable[[], bool]] = {}  # calls started, whose cut is to come
        self._fired: set[int] = set()
        self._received: dict[int, int] = {}  # connection -> bytes of the client's arrived
        self._arrived_at: dict[int, float] = {}  # connection -> loop time the client's bytes last came
        # connection -> the client's bytes arrived when its last Arrival was taken: more since then
        # are the next arrival's.
        self._taken_at: dict[int, int] = {}
        # connection -> the client's bytes this replay wrote to the server minus the recording's, so
        # far: a client whose bytes embed the server's (a hash, a session id) may write another number.
        self._shift: dict[int, int] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._settle_timer: asyncio.TimerHandle | None = None
        self._followers: dict[tuple[int, Direction], _Follower] = {}
        self._wait_for_servers = True
        self._unanswered = 0  # waits for a server that ended with nothing of it, in a row
        # The pieces the recording followed with more of the same flow (see continues()).
        self._continued = frozenset() if tape is None else _continued(tape)
        self.diverged_at: int | None = None  # the tape entry the replay could not take
        self.divergence = ""  # how it went another way
        self.differed = 0  # pieces written whose bytes were not the recorded ones
        self.resized = 0  # of them, pieces of another size than recorded

    @property
    def replaying(self) -> bool:
        """A tape was given (followed still, or no longer)."""
        return self._tape is not None

    @property
    def following(self) -> bool:
        return self._following

    def followed(self) -> float | None:
        """The share of the tape this replay took in order (1.0: all of it); None without a tape."""
        if self._tape is None:
            return None
        taken = self._cursor if self.diverged_at is None else self.diverged_at
        return 1.0 if not self._tape.entries else min(taken, len(self._tape)) / len(self._tape)

    def summary(self) -> str | None:
        """How far this replay kept to its tape, in a sentence; None without a tape."""
        share = self.followed()
        if share is None or self._tape is None:
            return None
        taken = round(share * len(self._tape))
        line = f"followed {taken} of {len(self._tape)} entries of the tape ({share:.0%})"
        if self.differed:
            resized = f", {self.resized} of them of another size" if self.resized else ""
            line += f"; bytes differed in {self.differed} piece{'s' if self.differed != 1 else ''}{resized}"
        if self.diverged_at is not None:
            line += f"; then it went another way: {self.divergence}"
        return line

    def tape(self) -> Tape:
        """What this run recorded."""
        return Tape(tuple(self._recorded))

    def close(self) -> None:
        """Stop following (the run is over): nothing of the pacer's is left scheduled."""
        self._following = False
        self._stop_timers()
        if self._counter is not None and self._counter.hook == self._on_pass:
            self._counter.hook = None
        self._pulse()
        self._release_followers()

    # -- the proxy's side ------------------------------------------------------------------------

    async def turn(self, connection: int, direction: Direction) -> Piece | Reset | None:
        """Wait until the tape's next entry is this flow's write or reset, and is due; None once
        the pacer is not following (the tape is done, or the run went another way). The awaitable
        form of the turn a follower is given in callbacks (`kick`)."""
        self._start()
        while self._following:
            entry = self._expected()
            if (isinstance(entry, Piece | Reset) and (entry.connection, entry.direction)
                    == (connection, direction) and self._ready()):
                return entry
            await self._wait_change()
        return None

    def continues(self) -> bool:
        """Whether the recording wrote more of the flow of the piece at the cursor right after it,
        with nothing of its connection in between: the piece was part of a message, not its end."""
        return self._cursor in self._continued

    def attach(self, follower: _Follower) -> None:
        """`follower` writes its flow's pieces from now on, when `kick` finds them due."""
        self._followers[follower.connection, follower.direction] = follower
        self._start()
        if self._following:
            self.kick()
        else:  # a connection opened once following was over (a scenario's clean-up): it flows freely
            follower.release()

    def detach(self, follower: _Follower) -> None:
        if self._followers.get((follower.connection, follower.direction)) is follower:
            del self._followers[follower.connection, follower.direction]

    def kick(self) -> None:
        """Have the follower of the tape's next piece (or reset) take it if it is due, and on down
        the tape as long as the next one is too. From the pass hook, in the callbacks of the pass
        instead: where the recording's proxy wrote, not before the pass's select."""
        if self._in_hook:
            asyncio.get_running_loop().call_soon(self.kick)
            return
        if self._kicking:  # the loop below goes on with the entry the cursor moved to
            return
        self._kicking = True
        try:
            while self._following:
                entry = self._expected()
                if not isinstance(entry, Piece | Reset) or not self._ready():
                    return
                follower = self._followers.get((entry.connection, entry.direction))
                if follower is None:
                    return
                cursor = self._cursor
                follower.step(entry)
                if self._cursor == cursor:
                    return
        finally:
            self._kicking = False

    def wrote(self, connection: int, direction: Direction, data: bytes | memoryview) -> None:
        """The proxy wrote `data`: record it; when following, it must be the tape's next piece, on the
        same connection in the same direction (its bytes and size may differ: counted, not refused)."""
        piece = Piece(connection, direction, len(data), zlib.crc32(data), self._now(), self._pass())
        self._record(piece)
        if self._following:
            expected = self._expected()
            if not (isinstance(expected, Piece) and (expected.connection, expected.direction)
                    == (connection, direction)):
                self.diverge(f"wrote {piece} where the tape has {expected}")
                return
            if (expected.length, expected.crc) != (piece.length, piece.crc):
                self.differed += 1
            if expected.length != piece.length:
                self.resized += 1
                if direction is Direction.TO_SERVER:
                    self._shift[connection] = self._shift.get(connection, 0) + piece.length - expected.length
            if direction is Direction.TO_CLIENT:
                self._keep_time(expected, piece.at_pass)
            self._advance()

    def arrived(self, connection: int, count: int) -> None:
        """`count` more bytes of the client's arrived on `connection` (before the proxy reads them)."""
        total = self._received[connection] = self._received.get(connection, 0) + count
        self._arrived_at[connection] = asyncio.get_running_loop().time()
        arrival = Arrival(connection, total, self._now(), self._pass())
        self._record(arrival)
        expected = self._expected() if self._following else None
        if isinstance(expected, Arrival) and expected.connection == connection and self._arrived(expected):
            self._keep_time(expected, arrival.at_pass)
            self._advance(0)

    def reset(self, connection: int, direction: Direction) -> None:
        self._record(Reset(connection, direction, self._now(), self._pass()))
        if self._following:
            expected = self._expected()
            same = (isinstance(expected, Reset) and
                    (expected.connection, expected.direction) == (connection, direction))
            self._advance() if same else self.diverge(f"reset {connection} where the tape has {expected}")

    # -- the hammer's side -----------------------------------------------------------------------

    def take(self, call: int, fire: Callable[[], bool]) -> Callable[[], None] | None:
        """Hand over the interruption of `call` (starting): `fire()` cuts it short and says whether
        it did. Returns a function to call once the call has ended, or None when not following: the
        caller then cuts the call on its own and says so (`cutting`). A call the tape never cuts is
        never fired."""
        if not self._following:
            return None
        assert self._tape is not None
        self._start()
        if call in self._tape.cuts:
            self._fires[call] = fire
            expected = self._expected()
            if isinstance(expected, Cut) and expected.call == call:
                # Its cut has come already: taken as soon as the call is under way (and due).
                now = self._counter is None or self._due is None
                asyncio.get_running_loop().call_soon(self._cut_if_due, now)

        def release() -> None:
            self._fires.pop(call, None)

        return release

    def cutting(self, call: int) -> None:
        """`call` has just been cut short."""
        self._start()
        if self._counter is not None:
            # From the pass hook, a cut is made at the end of the pass before (see _cut_if_due).
            self._record(Cut(call, self._now(), self._counter.passes - self._in_hook))
        else:
            # Recorded once what the client wrote before the cut has arrived (and been recorded).
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self._record_cut, call)

    def ended(self, call: int) -> None:
        """Call `call` ended (in whatever way)."""
        if self._following and self._tape is not None and call in self._tape.cuts \
                and call not in self._fired:
            self.diverge(f"call {call} ended before its cut came")

    # -- following -------------------------------------------------------------------------------

    def diverge(self, how: str = "") -> None:
        """The run went another way than the tape: stop following, cut the calls waiting for it,
        and let the followers write what they hold."""
        if not self._following:
            return
        self._following = False
        self.diverged_at = self._cursor
        self.divergence = how
        self._stop_timers()
        fires, self._fires = list(self._fires.items()), {}
        for call, fire in fires:
            self._fire(call, fire)
        self._pulse()
        self._release_followers()

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self._counter = counter_of(asyncio.get_running_loop())
        if self._counter is not None and self._counter.hook is None:
            self._counter.hook = self._on_pass
        if self._following:
            self._arm_watchdog()
            cursor = self._cursor
            self._advance(0)
            if self._cursor == cursor:
                self._reached()

    def _on_pass(self, timeout: float | None) -> float | None:
        self._in_hook = True
        try:
            return self._pass_begins(timeout)
        finally:
            self._in_hook = False

    def _pass_begins(self, timeout: float | None) -> float | None:
        """At the start of every pass: wake the entry that falls due in it, and make passes come
        until it does."""
        if self._following and timeout != 0 and (short := self._arrival_fell_short()) is not None:
            if short <= 0:
                self._advance()
                return 0
            timeout = short if timeout is None else min(timeout, short)
        if not self._following or self._counter is None:
            return timeout
        if self._wait_for_servers:
            self._wait_for_server()
        entry = self._expected()
        if self._due is None or isinstance(entry, Arrival):  # an arrival comes when the client acts
            return timeout
        if self._counter.passes < self._due:
            # When the loop would wait, the recording's made passes here all the same (its deadline
            # timers' wake-ups, events this run has no cause for): empty ones, so that the entry
            # is taken in the pass it was recorded in, not early.
            return 0 if not isinstance(entry, Cut) or entry.call in self._fires else timeout
        if isinstance(entry, Cut):
            cut = self._cut_in_pass() if self._counter.passes == self._due else self._cut_if_due(False)
            return 0 if cut else timeout
        self._due = None
        self._pulse()
        self.kick()
        return 0

    def _cut_in_pass(self) -> bool:
        """Cut the call of the Cut at the cursor in this pass, where the recording's timer cut it:
        as a timer of this pass, run after the pass's I/O callbacks (a cut made before them wakes
        the cancelled task in another place among the others, and the client may write in another
        order). False when the call has not started yet (the loop may wait)."""
        entry = self._expected()
        if not isinstance(entry, Cut) or entry.call not in self._fires:
            return False
        if self._cut_for != self._cursor:
            self._cut_for = self._cursor
            loop = asyncio.get_running_loop()
            loop.call_at(loop.time(), self._cut_if_due, True)
        return True

    def _wait_for_server(self) -> None:
        """When a write to the client due next pass (or now) is not in hand yet, hold the whole
        loop until its bytes can be read: the client must not run ahead of the reply it raced in
        the recording just because the server answers later this time. Not only the write at the
        cursor: one after entries of this same pass (the client's next request, written in the
        pass the reply to an earlier one came) must be in hand when they are taken. One after a
        write to the server not made yet may answer that very write (a fast server answers in the
        pass its request went): for it the loop is held no longer than SAME_PASS_WAIT_S."""
        assert self._tape is not None
        assert self._counter is not None
        wanted: dict[tuple[int, Direction], int] = {}  # flow -> bytes of it the pieces due want
        requested: set[int] = set()  # connections with a write to the server due, not made yet
        for entry in self._tape.entries[self._cursor:self._cursor + LOOKAHEAD]:
            if entry.at_pass is None or self._offset is None or \
                    entry.at_pass + self._offset > self._counter.passes + 1:
                return
            if isinstance(entry, Piece | Reset) and entry.direction is Direction.TO_SERVER:
                requested.add(entry.connection)
            elif isinstance(entry, Piece) and entry.direction is Direction.TO_CLIENT:
                flow = entry.connection, entry.direction
                wanted[flow] = wanted.get(flow, 0) + entry.length
                follower = self._followers.get(flow)
                if follower is not None and follower.fileno is not None and follower.held() < wanted[flow]:
                    if entry.connection in requested:
                        self._wait_for(follower.fileno, follower.held(), wanted[flow], SAME_PASS_WAIT_S)
                    else:
                        self._wait_for(follower.fileno, follower.held(), wanted[flow])
                    return

    def _wait_for(self, fileno: int, held: int, wanted: int, wait_s: float | None = None) -> None:
        """Hold the loop until `wanted` bytes of a server's are in hand (`held`) or in its socket
        `fileno`, at most SERVER_WAIT_S: a piece the recording read at once may come in parts now
        (replies the server wrote one by one), and all of it is due in one pass. With `wait_s`, at
        most that, and a server that sent nothing by then is not taken to be unanswering."""
        deadline = time.monotonic() + (SERVER_WAIT_S if wait_s is None else wait_s)
        answered = held > 0  # then its message is shorter this time, or the rest is on its way
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                readable, _, _ = select.select([fileno], [], [], remaining)
            except (OSError, ValueError):  # the socket is gone: the follower will find out
                return
            if not readable:
                break
            answered = True
            pending = _pending(fileno)
            if pending is None or pending == 0 or held + pending >= wanted:  # (0: its end)
                break
            time.sleep(min(SERVER_POLL_S, remaining))
        if answered or wait_s is not None:
            self._unanswered = 0 if answered else self._unanswered
            return
        self._unanswered += 1
        if self._unanswered >= MAX_UNANSWERED:
            self._wait_for_servers = False

    def _arrival_fell_short(self) -> float | None:
        """Whether the tape waits for the client's bytes to reach a total they will not reach: some
        came since the last arrival taken, the loop has nothing else to run (the client, in this
        loop, is waiting; the caller knows), its socket holds no more and none came for QUIET_S. Its
        message is shorter this time (it embeds something of the server's), and it has arrived.
        0: it did; the seconds left of QUIET_S when only they are missing; else None."""
        entry = self._expected()
        if not isinstance(entry, Arrival):
            return None
        connection = entry.connection
        if self._received.get(connection, 0) <= self._taken_at.get(connection, 0):
            return None
        follower = self._followers.get((connection, Direction.TO_SERVER))
        if follower is None or follower.fileno is None:
            return None
        try:
            readable, _, _ = select.select([follower.fileno], [], [], 0)
        except (OSError, ValueError):  # the socket is gone: the follower will find out
            return None
        if readable:
            return None
        quiet_s = asyncio.get_running_loop().time() - self._arrived_at.get(connection, 0.0)
        return max(0.0, QUIET_S - quiet_s)

    def _cut_if_due(self, now: bool) -> bool:
        """Cut the call of the Cut at the cursor (and of the Cuts due right after it) if it is due,
        or `now`, and it has started; True when one was cut. Due: in the callbacks of its pass or
        later; from the pass hook, once its pass is over (a cut due in the hook's own pass is that
        pass's timer: _cut_in_pass). A cut from the hook wakes its task after everything the pass
        before woke, as a timer at the end of that pass would have."""
        cut = False
        while self._following and isinstance(entry := self._expected(), Cut):
            if self._counter is None or self._due is None:
                due = True
            else:
                due = self._counter.passes > self._due if self._in_hook else self._counter.passes >= self._due
            fire = self._fires.pop(entry.call, None) if (now or due) else None
            if fire is None:
                break
            self._fire(entry.call, fire)
            cut, now = True, False
            self._advance()
        return cut

    def _arm_watchdog(self) -> None:
        assert self._tape is not None
        if self._watchdog is not None:
            self._watchdog.cancel()
        patience = self._tape.patience_s()
        self._watchdog = asyncio.get_running_loop().call_later(
            patience, self.diverge, f"no entry taken for {patience:.2f} s")

    def _stop_timers(self) -> None:
        for timer in (self._watchdog, self._settle_timer):
            if timer is not None:
                timer.cancel()

    def _release_followers(self) -> None:
        for follower in list(self._followers.values()):
            follower.release()

    def _expected(self) -> Entry | None:
        assert self._tape is not None
        return self._tape.entries[self._cursor] if self._cursor < len(self._tape) else None

    def _ready(self) -> bool:
        """Whether the write or reset at the cursor is due: its pass has come (or it has none), or
        without counted passes, its recorded pause is over."""
        if self._counter is not None:
            return self._due is None or self._counter.passes >= self._due
        return self._settled == self._cursor

    def _advance(self, by: int = 1) -> None:
        """Move `by` entries on, past the arrivals already there; schedule the entry reached."""
        assert self._tape is not None
        start = self._cursor
        self._cursor += by
        if self._cursor > start and isinstance(taken := self._tape.entries[start], Arrival):
            self._taken_at[taken.connection] = self._received.get(taken.connection, 0)
        while isinstance(entry := self._expected(), Arrival) and self._arrived(entry):
            self._taken_at[entry.connection] = self._received.get(entry.connection, 0)
            self._cursor += 1
        if self._cursor == start:
            return
        if self._cursor >= len(self._tape):
            self._following = False
            self._stop_timers()
            self._pulse()
            self._release_followers()
            return
        self._arm_watchdog()
        self._reached()

    def _reached(self) -> None:
        """The cursor is at a new entry: when is it due, and is it due already."""
        assert self._tape is not None
        entry = self._expected()
        assert entry is not None
        self._due = None if entry.at_pass is None or self._offset is None else entry.at_pass + self._offset
        if isinstance(entry, Cut):
            if self._counter is None or self._due is None:
                self._cut_if_due(True)
            elif self._in_hook:
                if self._counter.passes == self._due:
                    self._cut_in_pass()
                else:
                    self._cut_if_due(False)
            # Else, in a pass's callbacks: due in this very pass at the earliest (the recording cut
            # it right after the entry before), it is cut at the start of the next one, after
            # everything this pass wakes, as the recording's timer did at its end.
        elif isinstance(entry, Piece | Reset) and self._counter is None:
            # Keep the pause the recording had before it, at least one pass of the event loop: what
            # the previous entry set off runs before this one.
            if self._settle_timer is not None:
                self._settle_timer.cancel()
            pause = min(self._tape.gap_s(self._cursor), MAX_SETTLE_S)
            self._settle_timer = asyncio.get_running_loop().call_later(pause, self._settle, self._cursor)
        self._pulse()
        self.kick()

    def _settle(self, cursor: int) -> None:
        if self._cursor == cursor:
            self._settled = cursor
            self._pulse()
            self.kick()

    def _arrived(self, entry: Arrival) -> bool:
        """The client's bytes on the arrival's connection have reached its total, read with what
        this replay's client wrote more (or less) than the recording's so far."""
        connection = entry.connection
        return self._received.get(connection, 0) >= entry.total + self._shift.get(connection, 0)

    def _keep_time(self, entry: Entry, at_pass: int | None) -> None:
        """The client did or was given `entry` in pass `at_pass` of this replay: read the due
        passes of the entries after it on the clock that gives."""
        if entry.at_pass is not None and at_pass is not None:
            self._offset = at_pass - entry.at_pass

    def _fire(self, call: int, fire: Callable[[], bool]) -> None:
        self._fired.add(call)
        if fire():
            self.cutting(call)

    def _record_cut(self, call: int) -> None:
        self._record(Cut(call, self._now(), None))

    def _record(self, entry: Entry) -> None:
        if len(self._recorded) < MAX_ENTRIES:
            self._recorded.append(entry)

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    def _pulse(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def _pass(self) -> int | None:
        self._start()
        return None if self._counter is None else self._counter.passes

    def _now(self) -> float:
        now = asyncio.get_running_loop().time()
        if self._origin is None:
            self._origin = now
        return now - self._origin


def _pending(fileno: int) -> int | None:
    """The bytes waiting in socket `fileno`'s receive buffer; None where that cannot be asked."""
    try:
        import fcntl  # here: there is none on Windows
        import termios
    except ImportError:
        return None
    count = array.array("i", [0])
    try:
        fcntl.ioctl(fileno, termios.FIONREAD, count)
    except OSError:
        return None
    return count[0]


def _continued(tape: Tape) -> frozenset[int]:
    """The indices of the pieces after which the tape's next entry of their connection (cuts aside)
    is a piece of the same flow: the recording wrote that flow on, it did not pause there."""
    continued: set[int] = set()
    following: dict[int, Entry] = {}  # connection -> the next entry of it, going backwards
    for index in range(len(tape.entries) - 1, -1, -1):
        entry = tape.entries[index]
        if isinstance(entry, Cut):
            continue
        later = following.get(entry.connection)
        if isinstance(entry, Piece) and isinstance(later, Piece) and later.direction == entry.direction:
            continued.add(index)
        following[entry.connection] = entry
    return frozenset(continued)


class _Sink(Endpoint):
    """An endpoint without a socket that a followed flow's source relays to: every read is handed
    to `take` in the read's own callback (Endpoint.relay_to), and the source stops reading while
    the sink is paused (pause_writing) and reads on once it resumes."""

    def __init__(self, take: Callable[[bytes], None]) -> None:
        super().__init__()
        self._take = take

    def write(self, data: memoryview | bytes) -> bool:
        self._take(bytes(data))
        return True


def _ignore(data: bytes) -> None:
    """What the relay into a sink is told of each read: the follower itself says what it writes."""


class _Follower:
    """One flow of one connection while its pacer follows a tape: holds what the source sent, up
    to MAX_HELD_BYTES, and writes the tape's pieces of it when the pacer finds them due (`step`).
    Where each read ended is kept: a message the peer sent in one write is read at once, and ends
    where a read ends."""

    def __init__(self, pacer: Pacer, connection: int, direction: Direction, source: Endpoint,
                 destination: Endpoint, wrote: Callable[[bytes], None]) -> None:
        self.pacer, self.connection, self.direction = pacer, connection, direction
        self.source, self.destination, self._wrote = source, destination, wrote
        sock = None if source.transport is None else source.transport.get_extra_info("socket")
        self.fileno: int | None = None if sock is None else sock.fileno()
        self.data = bytearray()
        self.ended: End | None = None  # how the source ended, once it has
        self._sink = _Sink(self._received)
        self._taken = 0  # bytes taken out of `data` so far
        self._ends: deque[int] = deque()  # where the reads held ended, counted as `_taken` is
        self._read_at = 0.0  # loop time of the last read
        self._done: asyncio.Future[End | None] = asyncio.get_running_loop().create_future()
        self._released = False  # the pacer stopped following: bytes go on as they come
        self._quiet: asyncio.TimerHandle | None = None
        self._draining: asyncio.Task[None] | None = None

    async def run(self) -> End | None:
        relay = self.source.relay_to(self._sink, _ignore)
        relay.add_done_callback(self._source_ended)
        self.pacer.attach(self)
        try:
            return await self._done
        finally:
            if not self._done.done():  # cancelled: the connection is closing
                self.pacer.detach(self)
            # Else it stays attached: a piece of this flow the tape still holds is a divergence (step).
            self._released = True
            if self._quiet is not None:
                self._quiet.cancel()
            if self._draining is not None:
                self._draining.cancel()

    def held(self) -> int:
        """The bytes of this flow in hand: held, and received by the source but not relayed yet."""
        return len(self.data) + self.source.receiving

    def step(self, entry: Piece | Reset) -> None:
        """The tape's next entry is this flow's, and due: take it if this replay's bytes for it are
        in hand (or schedule a look once they may be)."""
        if self._draining is not None:  # on once the destination has drained
            return
        if self._done.done():
            end = self._done.result()
            how = "released" if end is None else end.value
            self.pacer.diverge(f"the {self.direction} flow ended ({how}) before the tape's {entry}")
            return
        if isinstance(entry, Reset):
            self.pacer.reset(self.connection, self.direction)
            self.source.close(rst=True)
            self.destination.close(rst=True)
            self._finish(End.RESET)
            return
        data = self.piece(entry)
        if data is None:
            if self.ended is not None and not self.data:
                self._finish(self.ended)
                self.pacer.diverge(f"the {self.direction} flow ended ({self.ended.value}) "
                                   f"before the tape's {entry}")
            return
        if not self.destination.write(data):
            self._finish(End.DESTINATION_LOST)
            return
        self._wrote(data)
        if self.ended is not None and not self.data:
            self._finish(self.ended)
        elif self.destination.sending > WRITE_HIGH_WATER and not self._done.done():
            self._draining = asyncio.get_running_loop().create_task(self._drain())

    def piece(self, entry: Piece) -> bytes | None:
        """The bytes this replay has for the tape's `entry`, or None while they are not in hand.

        Their size is the recorded one whenever the bytes held allow it: the same bytes (the CRC
        matches), or other bytes of the same size (a server's salt, a date). When the peer's message
        is of another size this time, it is the message as it came: the bytes held short of the
        size, once QUIET_S passed without more (or the source ended); the bytes past it up to the
        end of the read the size falls in, unless the recording wrote more of this flow right after
        the piece (Pacer.continues): then the piece was part of a message, and keeps its size."""
        held, size = len(self.data), entry.length
        if held < size:
            if not held:
                return None
            if self.ended is None:
                loop = asyncio.get_running_loop()
                quiet_s = loop.time() - self._read_at
                if quiet_s < QUIET_S:
                    if self._quiet is None:
                        self._quiet = loop.call_later(QUIET_S - quiet_s, self._quieted)
                    return None
            return self._take()
        if held == size or self.pacer.continues() or zlib.crc32(memoryview(self.data)[:size]) == entry.crc:
            return self._take(size)
        return self._take(next(end - self._taken for end in self._ends if end - self._taken >= size))

    def release(self) -> None:
        """The pacer stopped following: write what is held, and let `run` return (the caller
        relays the rest); what comes before it does goes on as it comes."""
        if self._released:
            return
        self._released = True
        if self.data and not self._done.done():
            rest = self._take()
            if not self.destination.write(rest):
                self._finish(End.DESTINATION_LOST)
                return
            self._wrote(rest)
        self._finish(self.ended)

    def _received(self, data: bytes) -> None:
        """A read of the source, in its callback."""
        if self._released:  # until the caller relays: what a relay would do
            if self.destination.write(data):
                self._wrote(data)
            return
        self.data += data
        self._ends.append(self._taken + len(self.data))
        self._read_at = asyncio.get_running_loop().time()
        if len(self.data) >= MAX_HELD_BYTES:
            self._sink.pause_writing()
        self.pacer.kick()

    def _source_ended(self, relay: asyncio.Future[End]) -> None:
        if relay.cancelled() or self.ended is not None:
            return
        self.ended = relay.result()
        if not self.data:
            self._finish(self.ended)  # nothing held: the flow ends here, as the recording's relay ended it
        else:
            self.pacer.kick()  # what is held may make a piece now: a message the end cut short

    def _take(self, length: int | None = None) -> bytes:
        taken = bytes(self.data[:length])
        del self.data[:len(taken)]
        self._taken += len(taken)
        while self._ends and self._ends[0] <= self._taken:
            self._ends.popleft()
        if len(self.data) < MAX_HELD_BYTES:
            self._sink.resume_writing()
        return taken

    def _quieted(self) -> None:
        self._quiet = None
        self.pacer.kick()

    async def _drain(self) -> None:
        """Write no more of this flow until its destination has taken what it was given."""
        drained = await self.destination.drain()
        self._draining = None
        if not drained:
            self._finish(End.DESTINATION_LOST)
        else:
            self.pacer.kick()

    def _finish(self, end: End | None) -> None:
        if not self._done.done():
            self._done.set_result(end)
            self.fileno = None  # no more waits for its source: it may be closed, its number reused


async def follow(pacer: Pacer, connection: int, direction: Direction, source: Endpoint,
                 destination: Endpoint, wrote: Callable[[bytes], None]) -> End | None:
    """Forward `source` to `destination` in the pieces of the tape, when the tape says, while `pacer`
    follows; `wrote(data)` is told each write (and tells the pacer). Returns how the flow ended, or
    None once the pacer stopped following, with everything read so far written: the caller relays
    the rest."""
    return await _Follower(pacer, connection, direction, source, destination, wrote).run()
