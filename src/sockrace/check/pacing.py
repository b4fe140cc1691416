"""Pacing: record a checked run's tape, and make a replay over real sockets follow it.

The proxy and the hammer of one run share a Pacer. It always records (tape.py): the proxy reports
each write and reset it makes and each arrival of the client's bytes, the hammer each call it cuts
short. Given the tape of an earlier run it also *follows* it: every flow of the proxy has a follower
(`follow`) that holds what its source sends and writes the piece the tape holds next when it is due;
the hammer hands over the interruption of every call that has one (`take`), and the pacer cuts the
call when the tape reaches its Cut. A call the recording did not cut runs without a deadline. The
race the recording met (a reply on its way while its caller gives up) is then met again whatever
the kernel's timing.

What is due when, and what a replay's bytes make of the tape's pieces, the sans-IO tape follower
decides (follower.py, pieces.py: tested without a loop); this module is its asyncio adapter: it
tells it what happens (with the loop's clock and passes) and does what it answers, with futures,
timers and sockets. When is "when"? On a loop whose passes are counted (passes.py, the default of
`sockrace check`), every entry is stamped with its pass, and a replay takes each entry as many
passes after the one before as the recording did: a cut lands at the end of the same pass relative
to the reply it races, so that the client has taken in exactly what it had. The recording's proxy
wrote what it read in the read's own callback; a follower does too, in the callbacks of the pass its
piece falls due in (the read's own pass when the bytes come then), never from a task that would wake
passes later and let the client run ahead; a loop that would wait before a write or a cut falls due
makes empty passes until it does, as the recording's loop made passes there. The loop is also held
(a blocking select on its thread, at most SERVER_WAIT_S) for a server's bytes due to the client by
the next pass, and the client's socket probed (FIONREAD) for bytes still to come. On another loop, a
write waits the recorded pause after the entry before, and a cut is taken at once, as soon as the
entry before it was (a call the recording cut had not taken in the bytes written just before its cut).

A replay that goes another way than the tape stops following: the calls waiting for their cut are
cut at once, later ones get their recorded deadlines back, and the rest of the run flows freely.
`diverged_at` (`misaligned_at`) and `divergence` say where and how; `summary()` says it in a sentence.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import Final

from sockrace.check.endpoint import End, Endpoint
from sockrace.check.faults import Direction
from sockrace.check.flow_follower import FlowFollower, hold_for_bytes, readable
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
from sockrace.check.passes import PassCounter, counter_of
from sockrace.check.tape import Piece, Reset, Tape

# How long the loop is held for a server's bytes that are due to the client (see _hold_for_server).
# A server that has not answered by then runs in this very loop (held, it cannot answer) or is slow.
SERVER_WAIT_S: Final = 0.02
# How long the loop is held at most for a server's bytes due to the client in the pass a request of
# the same connection is due to go to it: they may answer an earlier request (then they are on
# their way), or that very one (then they cannot come before it goes, and the hold is lost time).
SAME_PASS_WAIT_S: Final = 0.002


class Pacer:
    """Records the tape of the run it is given to, and follows `tape` when there is one: the asyncio
    adapter of a TapeFollower (`core`)."""

    def __init__(self, tape: Tape | None = None) -> None:
        self.core = TapeFollower(tape)
        self._counter: PassCounter | None = None
        self._started = False
        self._kicking = False
        self._changed: asyncio.Event | None = None
        self._timers = _Timers(self.core, self._apply)
        self._followers: dict[tuple[int, Direction], FlowFollower] = {}
        self._cutter = _Cutter(self.core, self._apply, self._clock)
        self._pass_start = _PassStart(self.core, self._followers, self._apply, self._cutter.take_cuts,
                                      self._clock)

    @property
    def replaying(self) -> bool:  # a tape was given (followed still, or no longer)
        return self.core.tape is not None

    @property
    def following(self) -> bool:
        return self.core.following

    # How far the replay kept to its tape (follower.Progress, TapeFollower.misaligned_at).
    @property
    def diverged_at(self) -> int | None:
        return self.core.progress.diverged_at

    @property
    def divergence(self) -> str:
        return self.core.progress.divergence

    @property
    def differed(self) -> int:
        return self.core.progress.differed

    @property
    def resized(self) -> int:
        return self.core.progress.resized

    @property
    def misaligned_at(self) -> int | None:
        return self.core.misaligned_at

    def followed(self) -> float | None:
        return self.core.followed()

    def summary(self) -> str | None:
        return self.core.summary()

    def tape(self) -> Tape:  # what this run recorded
        return self.core.recorder.tape()

    def close(self) -> None:
        """Stop following (the run is over): nothing of the pacer's is left scheduled."""
        self.core.close()
        self._timers.stop()
        if self._counter is not None and self._counter.hook == self._pass_start.hook:
            self._counter.hook = None
        self._pulse()
        self._release_followers()

    # -- the proxy's side ------------------------------------------------------------------------

    async def turn(self, connection: int, direction: Direction) -> Piece | Reset | None:
        """Wait until the tape's next entry is this flow's write or reset, and is due; None once the
        pacer is not following. The awaitable form of the turn a follower is given (`kick`)."""
        self._start()
        while self.core.following:
            entry = self.core.cursor.due_turn(self._clock())
            if entry is not None and (entry.connection, entry.direction) == (connection, direction):
                return entry
            await self._wait_change()
        return None

    def continues(self) -> bool:
        """The recording wrote more of the flow of the piece at the cursor right after it."""
        return self.core.cursor.continues()

    def attach(self, follower: FlowFollower) -> None:
        """`follower` writes its flow's pieces from now on, when `kick` finds them due."""
        self._followers[follower.connection, follower.direction] = follower
        self._start()
        if self.core.following:
            self.kick()
        else:  # a connection opened once following was over (a scenario's clean-up): it flows freely
            follower.release()

    def detach(self, follower: FlowFollower) -> None:
        if self._followers.get((follower.connection, follower.direction)) is follower:
            del self._followers[follower.connection, follower.direction]

    def kick(self) -> None:
        """Have the follower of the tape's next piece (or reset) take it if it is due, and on down
        the tape as long as the next one is too. From the pass hook, in the callbacks of the pass
        instead: where the recording's proxy wrote, not before the pass's select."""
        if self._pass_start.running:
            asyncio.get_running_loop().call_soon(self.kick)
            return
        if self._kicking:  # the loop below goes on with the entry the cursor moved to
            return
        self._kicking = True
        try:
            while (entry := self.core.cursor.due_turn(self._clock())) is not None:
                follower = self._followers.get((entry.connection, entry.direction))
                if follower is None:
                    return
                cursor = self.core.cursor.at
                follower.step(entry)
                if self.core.cursor.at == cursor:
                    return
        finally:
            self._kicking = False

    def wrote(self, connection: int, direction: Direction, data: bytes | memoryview) -> None:
        """The proxy wrote `data`: record it; when following, it must be the tape's next piece, on the
        same connection in the same direction (its bytes and size may differ: counted, not refused)."""
        self._start()
        self._apply(self.core.wrote(connection, direction, len(data), zlib.crc32(data), self._clock()))

    def arrived(self, connection: int, count: int) -> None:
        """`count` more bytes of the client's arrived on `connection` (before the proxy reads them)."""
        self._start()
        self._apply(self.core.arrived(connection, count, self._clock()))

    def reset(self, connection: int, direction: Direction) -> None:
        self._start()
        self._apply(self.core.reset(connection, direction, self._clock()))

    # -- the hammer's side -----------------------------------------------------------------------

    def take(self, call: int, fire: Callable[[], bool]) -> Callable[[], None] | None:
        """Hand over the interruption of `call` (starting): `fire()` cuts it short and says whether it
        did. Returns what to call once the call has ended, or None when not following: the caller
        then cuts it on its own and says so (`cutting`). A call the tape never cuts is never fired."""
        if not self.core.following:
            return None
        self._start()
        return self._cutter.take(call, fire)

    def cutting(self, call: int) -> None:
        """`call` has just been cut short."""
        self._start()
        self._cutter.cutting(call)

    def ended(self, call: int) -> None:
        """Call `call` ended (in whatever way)."""
        self._apply(self.core.call_ended(call))

    def diverge(self, how: str = "") -> None:
        """The run went another way: stop following, cut the calls waiting, release the followers."""
        self._apply(self.core.diverge(how))

    # -- doing what the follower says ------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        loop = asyncio.get_running_loop()
        for action in actions:
            if isinstance(action, Moved):
                self._pulse()
                self.kick()
            elif isinstance(action, TakeCuts):
                if action.soon:
                    loop.call_soon(self._cutter.take_cuts, action.now)
                else:
                    self._cutter.take_cuts(action.now)
            elif isinstance(action, CutInPass):
                # A timer of this pass, run after the pass's I/O callbacks: a cut made before them
                # wakes the cancelled task in another place among the others.
                loop.call_at(loop.time(), self._cutter.take_cuts, True)
            elif isinstance(action, ArmPatience | Settle):
                self._timers.arm(action)
            else:
                self._stop(action)

    def _stop(self, stopped: Stopped) -> None:
        self._timers.stop()
        for call in stopped.cut:
            self._cutter.cut(call)
        self._pulse()
        self._release_followers()

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self._counter = counter_of(asyncio.get_running_loop())
        if self._counter is not None and self._counter.hook is None:
            self._counter.hook = self._pass_start.hook
        self._apply(self.core.start(self._clock()))

    def _release_followers(self) -> None:
        for follower in list(self._followers.values()):
            follower.release()

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    def _pulse(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def _clock(self) -> Clock:
        passes = None if self._counter is None else self._counter.passes
        return Clock(asyncio.get_running_loop().time(), passes, self._pass_start.running)


class _Timers:
    """The follower's timers: its patience (no entry taken for so long: the run went another way)
    and, without counted passes, the recorded pause before the entry at the cursor."""

    def __init__(self, core: TapeFollower, do: Callable[[list[Action]], None]) -> None:
        self._core, self._do = core, do
        self._patience: asyncio.TimerHandle | None = None
        self._pause: asyncio.TimerHandle | None = None

    def arm(self, action: ArmPatience | Settle) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(action, ArmPatience):
            if self._patience is not None:
                self._patience.cancel()
            self._patience = loop.call_later(action.seconds, self._time_out, action.seconds)
        else:
            if self._pause is not None:
                self._pause.cancel()
            self._pause = loop.call_later(action.seconds, self._settle, action.cursor)

    def stop(self) -> None:
        for timer in (self._patience, self._pause):
            if timer is not None:
                timer.cancel()

    def _time_out(self, seconds: float) -> None:
        self._do(self._core.time_out(seconds))

    def _settle(self, cursor: int) -> None:
        self._do(self._core.cursor.settle(cursor))


class _Cutter:
    """The hammer's side of a replay: what cuts each call under way, fired when the follower says."""

    def __init__(self, core: TapeFollower, do: Callable[[list[Action]], None],
                 clock: Callable[[], Clock]) -> None:
        self._core, self._do, self._clock = core, do, clock
        self._fires: dict[int, Callable[[], bool]] = {}  # calls under way -> what cuts them short

    def take(self, call: int, fire: Callable[[], bool]) -> Callable[[], None]:
        self._fires[call] = fire
        self._do(self._core.call_starts(call) or [])

        def release() -> None:
            self._fires.pop(call, None)
            self._core.call_left(call)

        return release

    def cutting(self, call: int) -> None:
        clock = self._clock()
        if clock.passes is not None:
            self._core.cut_made(call, clock)
        else:
            # Recorded once what the client wrote before the cut has arrived (and been recorded).
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, lambda: self._core.cut_made(call, self._clock()))

    def cut(self, call: int) -> None:
        """Cut `call` short if it is under way still, and record it if that did."""
        fire = self._fires.pop(call, None)
        if fire is not None and fire():
            self.cutting(call)

    def take_cuts(self, now: bool) -> bool:
        """Cut the calls of the Cuts at the cursor that are due (the first at once when `now`); True
        when one was. A cut from the pass hook wakes its task after everything the pass before woke,
        as a timer at the end of that pass would have."""
        cut = False
        while (call := self._core.next_cut(self._clock(), now)) is not None:
            self.cut(call)
            cut, now = True, False
            self._do(self._core.cut_taken(self._clock()))
        return cut


class _PassStart:
    """What the start of each counted pass does while a replay follows its tape (the pass hook):
    takes an arrival of the client's bytes that fell short, holds the loop for a server's bytes due
    to the client, and wakes the entry due in the pass, or makes the pass an empty one while it is
    not due yet. It probes the followers' sockets; the follower (`core`) decides."""

    def __init__(self, core: TapeFollower, followers: dict[tuple[int, Direction], FlowFollower],
                 do: Callable[[list[Action]], None], take_cuts: Callable[[bool], bool],
                 clock: Callable[[], Clock]) -> None:
        self._core, self._followers, self._do = core, followers, do
        self._take_cuts, self._clock = take_cuts, clock
        self.running = False  # the hook runs (inside the loop's select, before the pass's callbacks)

    def hook(self, timeout: float | None) -> float | None:
        """The pass counter's hook (passes.PassHook)."""
        self.running = True
        try:
            return self.begins(timeout)
        finally:
            self.running = False

    def begins(self, timeout: float | None) -> float | None:
        """At the start of every pass: wake the entry that falls due in it, and make passes come
        until it does. Given the time the loop's select would wait (0: callbacks are ready; None:
        until an event), returns the time to wait instead."""
        core = self._core
        if timeout != 0 and (short := self._arrival_fell_short()) is not None:
            if short <= 0:
                self._do(core.take_arrival(self._clock()))
                return 0
            timeout = short if timeout is None else min(timeout, short)
        if not core.following:
            return timeout
        if core.servers.active:
            self._hold_for_server()
        step = core.cursor.pass_step(self._clock())
        if step is PassStep.KEEP:
            return timeout
        if step is PassStep.CUT_IN_PASS:
            self._do([CutInPass()])
        elif step is PassStep.TAKE_CUTS:
            return 0 if self._take_cuts(False) else timeout
        elif step is PassStep.RELEASE:
            self._do([Moved()])
        return 0

    def _hold_for_server(self) -> None:
        """When a write to the client due next pass (or now) is not in hand yet, hold the whole
        loop until its bytes can be read (TapeFollower.server_wants): at most SERVER_WAIT_S, or
        SAME_PASS_WAIT_S for bytes that may answer a request not written yet."""
        for want in self._core.server_wants(self._clock()):
            follower = self._followers.get((want.connection, Direction.TO_CLIENT))
            if follower is not None and follower.fileno is not None and follower.held() < want.wanted:
                wait_s = SAME_PASS_WAIT_S if want.same_pass else SERVER_WAIT_S
                answered = hold_for_bytes(follower.fileno, follower.held(), want.wanted, wait_s)
                if answered is not None:
                    self._core.servers.answered(answered, want.same_pass)
                return

    def _arrival_fell_short(self) -> float | None:
        """Whether the tape waits for the client's bytes to reach a total they will not reach: some
        came since the last arrival taken, the loop has nothing else to run (the client, in this
        loop, is waiting; the caller knows), its socket holds no more and none came for QUIET_S.
        0: it did; the seconds left of QUIET_S when only they are missing; else None."""
        connection = self._core.arrival_in_question()
        if connection is None:
            return None
        follower = self._followers.get((connection, Direction.TO_SERVER))
        if follower is None or follower.fileno is None:
            return None
        if readable(follower.fileno) is not False:  # (None: the socket is gone, the follower will find out)
            return None
        return self._core.arrivals.quiet_left(connection, asyncio.get_running_loop().time())


async def follow(pacer: Pacer, connection: int, direction: Direction, source: Endpoint,
                 destination: Endpoint, wrote: Callable[[bytes], None]) -> End | None:
    """Forward `source` to `destination` in the pieces of the tape, when the tape says, while `pacer`
    follows; `wrote(data)` is told each write (and tells the pacer). Returns how the flow ended, or
    None once the pacer stopped following, with everything read so far written: the caller relays
    the rest."""
    return await FlowFollower(pacer, connection, direction, source, destination, wrote).run()
