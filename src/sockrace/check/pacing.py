"""Pacing: record a checked run's tape, and make a replay over real sockets follow it.

The proxy and the hammer of one run share a Pacer. It always records (tape.py): the proxy reports
each write and reset it makes and each arrival of the client's bytes, the hammer each call it cuts
short. Given the tape of an earlier run it also *follows* it: the proxy asks for its turn before
each write (`turn`) and writes exactly the piece the tape holds next; the hammer hands over the
interruption of every call that has one (`take`), and the pacer cuts the call when the tape reaches
its Cut. A call the recording did not cut runs without a deadline. The race the recording met (a
reply on its way while its caller gives up) is then met again whatever the kernel's timing.

When is "when"? On a loop whose passes are counted (passes.py, the default of `sockrace check`),
every entry is stamped with its pass, and a replay takes each entry as many passes after the one
before as the recording did: a cut lands at the end of the same pass relative to the reply it
races, so that the client has taken in exactly what it had. On another loop, a write waits the
recorded pause after the entry before, and a cut is taken at once, as soon as the entry before it
was (a call the recording cut had not taken in the bytes written just before its cut).

A replay that cannot take the tape's next entry within the tape's patience, writes other bytes
than those recorded, or ends a call before its cut came has *diverged*: following stops, the calls
waiting for their cut are cut at once, later ones get their recorded deadlines back, and the rest of
the run flows freely. `diverged_at` and `divergence` say where and how.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import zlib
from collections.abc import Callable
from typing import Final

from sockrace.check.endpoint import End, Endpoint
from sockrace.check.faults import Direction
from sockrace.check.passes import PassCounter, counter_of
from sockrace.check.tape import MAX_ENTRIES, Arrival, Cut, Entry, Piece, Reset, Tape

# Without counted passes, the pause a follower keeps before a write is the recorded one up to this:
# a long recorded pause (a delay fault, a slow server) is then kept too, but never a stalled one.
MAX_SETTLE_S: Final = 1.0
# How often a follower waiting for the rest of a piece looks whether following has stopped.
LOOK_EVERY_S: Final = 0.05
# What a follower holds of one flow at most while its bytes wait for their turn in the tape.
MAX_HELD_BYTES: Final = 1024 * 1024
# How long the loop is held for a server's bytes that are due to the client (see _wait_for_server).
# A server that has not answered by then runs in this very loop (held, it cannot answer) or is
# slow: the replay stops holding the loop for it.
SERVER_WAIT_S: Final = 0.02


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
        self._recorded: list[Entry] = []
        self._origin: float | None = None
        self._counter: PassCounter | None = None
        self._started = False
        self._moved_at = 0.0  # loop time the follower last took an entry
        self._changed: asyncio.Event | None = None
        self._fires: dict[int, Callable[[], bool]] = {}  # calls started, whose cut is to come
        self._fired: set[int] = set()
        self._received: dict[int, int] = {}  # connection -> bytes of the client's arrived
        self._watchdog: asyncio.TimerHandle | None = None
        # Per flow being followed: how many of its bytes the proxy holds, and its source's socket.
        self._supplies: dict[tuple[int, Direction], tuple[Callable[[], int], int]] = {}
        self._wait_for_servers = True
        self.diverged_at: int | None = None  # the tape entry the replay could not take
        self.divergence = ""  # how it went another way

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

    def tape(self) -> Tape:
        """What this run recorded."""
        return Tape(tuple(self._recorded))

    def close(self) -> None:
        """Stop following (the run is over): nothing of the pacer's is left scheduled."""
        self._following = False
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._counter is not None and self._counter.hook == self._on_pass:
            self._counter.hook = None
        self._pulse()

    # -- the proxy's side ------------------------------------------------------------------------

    async def turn(self, connection: int, direction: Direction) -> Piece | Reset | None:
        """Wait until the tape's next entry is this flow's write or reset, and is due; None once
        the pacer is not following (the tape is done, or the run went another way)."""
        self._start()
        while self._following:
            entry = self._expected()
            if (isinstance(entry, Piece | Reset) and entry.connection == connection
                    and entry.direction == direction):
                cursor = self._cursor
                if self._counter is None:
                    await self._settle(cursor)
                elif self._due is not None and self._counter.passes < self._due:
                    await self._wait_change()
                    continue
                if self._following and self._cursor == cursor:
                    return entry
                continue
            await self._wait_change()
        return None

    def supply(self, connection: int, direction: Direction, held: Callable[[], int], fileno: int) -> None:
        """A follower of this flow holds `held()` bytes of it, read from the socket `fileno`."""
        self._supplies[connection, direction] = (held, fileno)

    def wrote(self, connection: int, direction: Direction, data: bytes | memoryview) -> None:
        """The proxy wrote `data`: record it; when following, it must be the tape's next piece."""
        piece = Piece(connection, direction, len(data), zlib.crc32(data), self._now(), self._pass())
        self._record(piece)
        if self._following:
            expected = self._expected()
            same = (isinstance(expected, Piece) and
                    (expected.connection, expected.direction, expected.length, expected.crc)
                    == (connection, direction, piece.length, piece.crc))
            if not same:
                self.diverge(f"wrote {piece} where the tape has {expected}")
                return
            if direction is Direction.TO_CLIENT:
                assert expected is not None
                self._keep_time(expected, piece.at_pass)
            self._advance()

    def arrived(self, connection: int, count: int) -> None:
        """`count` more bytes of the client's arrived on `connection` (before the proxy reads them)."""
        total = self._received[connection] = self._received.get(connection, 0) + count
        arrival = Arrival(connection, total, self._now(), self._pass())
        self._record(arrival)
        expected = self._expected() if self._following else None
        if isinstance(expected, Arrival) and expected.connection == connection and expected.total <= total:
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
            self._record(Cut(call, self._now(), self._counter.passes))
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
        """The run went another way than the tape: stop following, cut the calls waiting for it."""
        if not self._following:
            return
        self._following = False
        self.diverged_at = self._cursor
        self.divergence = how
        if self._watchdog is not None:
            self._watchdog.cancel()
        fires, self._fires = list(self._fires.items()), {}
        for call, fire in fires:
            self._fire(call, fire)
        self._pulse()

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self._counter = counter_of(asyncio.get_running_loop())
        if self._counter is not None and self._counter.hook is None:
            self._counter.hook = self._on_pass
        if self._following:
            self._arm_watchdog()
            self._advance(0)

    def _on_pass(self, timeout: float | None) -> float | None:
        """At the start of every pass: wake the entry that falls due in it; when the loop would
        wait (nothing else to do), wake the next entry now rather than wait for passes that no
        longer come."""
        if not self._following or self._due is None or self._counter is None:
            return timeout
        if self._wait_for_servers and self._counter.passes + 1 >= self._due:
            self._wait_for_server()
        if self._counter.passes < self._due and timeout == 0:
            return timeout
        if isinstance(self._expected(), Cut):
            return 0 if self._cut_if_due(timeout != 0) else timeout
        self._due = None
        self._pulse()
        return 0

    def _wait_for_server(self) -> None:
        """When the write to the client due next pass (or now) is not in hand yet, hold the whole
        loop until its bytes can be read: the client must not run ahead of the reply it raced in
        the recording just because the server answers later this time."""
        entry = self._expected()
        if not (isinstance(entry, Piece) and entry.direction is Direction.TO_CLIENT):
            return
        supply = self._supplies.get((entry.connection, entry.direction))
        if supply is None or supply[0]() >= entry.length:
            return
        try:
            readable, _, _ = select.select([supply[1]], [], [], SERVER_WAIT_S)
        except (OSError, ValueError):  # the socket is gone: the follower will find out
            return
        if not readable:
            self._wait_for_servers = False

    def _cut_if_due(self, now: bool) -> bool:
        """Cut the call of the Cut at the cursor (and of the Cuts due right after it) if its pass is
        over, or `now`, and it has started; True when one was cut. A cut is made at the start of
        the pass after its due one: where the recording's timer made it, at the end of that pass."""
        cut = False
        while self._following and isinstance(entry := self._expected(), Cut):
            due = self._counter is None or self._due is None or self._counter.passes > self._due
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

    def _expected(self) -> Entry | None:
        assert self._tape is not None
        return self._tape.entries[self._cursor] if self._cursor < len(self._tape) else None

    def _advance(self, by: int = 1) -> None:
        """Move `by` entries on, past the arrivals already there; schedule the entry reached."""
        assert self._tape is not None
        start = self._cursor
        self._cursor += by
        while isinstance(entry := self._expected(), Arrival) and \
                self._received.get(entry.connection, 0) >= entry.total:
            self._cursor += 1
        if self._cursor == start:
            return
        self._moved_at = asyncio.get_running_loop().time()
        if self._cursor >= len(self._tape):
            self._following = False
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._pulse()
            return
        self._arm_watchdog()
        entry = self._expected()
        assert entry is not None
        self._due = None if entry.at_pass is None or self._offset is None else entry.at_pass + self._offset
        if isinstance(entry, Cut) and (self._counter is None or self._due is None):
            self._cut_if_due(True)
        self._pulse()

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

    async def _settle(self, cursor: int) -> None:
        """Keep the pause the recording had before entry `cursor` (since the previous one was taken)."""
        assert self._tape is not None
        pause = min(self._tape.gap_s(cursor), MAX_SETTLE_S)
        remaining = self._moved_at + pause - asyncio.get_running_loop().time()
        # At least one pass of the event loop: what the previous entry set off runs before this one.
        await asyncio.sleep(max(0.0, remaining))

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


class _Held:
    """A flow's bytes read from its source and not yet written: read on while the flow waits for
    its turn in the tape (a client whose bytes stayed in a full socket buffer would never reach the
    arrival the tape waits for), up to MAX_HELD_BYTES."""

    def __init__(self, source: Endpoint) -> None:
        self.source = source
        self.data = bytearray()
        self.ended: End | None = None
        self._changed = asyncio.Event()

    async def pull(self) -> None:
        while self.ended is None:
            if len(self.data) >= MAX_HELD_BYTES:
                self._changed.clear()
                await self._changed.wait()
                continue
            chunk = await self.source.read()
            if chunk:
                self.data += chunk
            else:
                self.ended = End.SOURCE_LOST if self.source.lost else End.EOF
            self._changed.set()

    async def take(self, length: int, pacer: Pacer) -> bytes | None:
        """The next `length` bytes, once in hand; None when the source ended first or the pacer
        stopped following."""
        while len(self.data) < length and self.ended is None and pacer.following:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), LOOK_EVERY_S)
        if len(self.data) < length:
            return None
        return self.take_all(length)

    def take_all(self, length: int | None = None) -> bytes:
        taken = bytes(self.data[:length])
        del self.data[:len(taken)]
        self._changed.set()
        return taken


async def follow(pacer: Pacer, connection: int, direction: Direction, source: Endpoint,
                 destination: Endpoint, wrote: Callable[[bytes], None]) -> End | None:
    """Forward `source` to `destination` in the pieces of the tape, when the tape says, while `pacer`
    follows; `wrote(data)` is told each write (and tells the pacer). Returns how the flow ended, or
    None once the pacer stopped following, with everything read so far written: the caller relays
    the rest."""
    held = _Held(source)
    sock = None if source.transport is None else source.transport.get_extra_info("socket")
    if sock is not None:
        pacer.supply(connection, direction, lambda: len(held.data) + source.receiving, sock.fileno())
    puller = asyncio.get_running_loop().create_task(held.pull())
    try:
        while (entry := await pacer.turn(connection, direction)) is not None:
            if isinstance(entry, Reset):
                pacer.reset(connection, direction)
                source.close(rst=True)
                destination.close(rst=True)
                return End.RESET
            data = await held.take(entry.length, pacer)
            if data is None:
                if held.ended is not None:
                    pacer.diverge(f"the {direction} bytes ended before the tape's {entry}")
                break
            if not destination.write(data):
                return End.DESTINATION_LOST
            wrote(data)
            if not await destination.drain():
                return End.DESTINATION_LOST
    finally:
        puller.cancel()
        await asyncio.gather(puller, return_exceptions=True)
    if held.data:
        rest = held.take_all()
        if not destination.write(rest):
            return End.DESTINATION_LOST
        wrote(rest)
    return held.ended
