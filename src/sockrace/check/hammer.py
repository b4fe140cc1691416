"""hammer: concurrent calls through a user's client, seeded deadlines and cancellations, a per-call oracle.

    result = await hammer(call, expect, tasks=T, calls=N, timeout_ms="auto", seed=S)

`call(i)` makes call number i (0 <= i < T*N) through the client under test and returns an awaitable
of its value; `expect(i)` is the value call i must return. T tasks share the one client and make
N calls each; which task makes which call, and in what order, is drawn from the seed, as is every
call's deadline or cancellation (decisions.py). Each value is then judged against every call's
expected value (oracle.py): a value another call expects is a crossed reply, the bug this looks
for. `expect` values should be unique among the calls in flight for a crossing to be visible.

The user's code is a guest: every call is bounded by the run's `deadline_s`; a call that raises an
Exception is an error outcome, its traceback kept, and one that raises what would end a program
(SystemExit, KeyboardInterrupt, GeneratorExit, another BaseException) ends the run with HammerError,
never with a result. A call still waiting when nothing is left to wait for is `stuck`, a failure of
the client as a crossed reply is: a client that lost a reply, or leaked a pool slot when a call was
cut short, leaves callers waiting for ever. "Nothing left to wait for" is told by whose turn it is
when a `wire` (the FaultProxy) is watched: while the server owes a reply, the run waits for it (up to
`deadline_s`); once the server owes nothing, no byte moves and no call finishes for the stuck bound,
the calls still waiting are stuck; and sooner, with the "auto" bound in a run that has failed
already, when besides that nothing in this event loop could wake them (nothing_can_wake:
TURN_CONFIRM_S, not a quarter of a second).
When the run returns, none of our tasks is left running (a call that ignores cancellation for
CANCEL_GRACE_S is reported in `result.ignored_cancel` instead).
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, Protocol

from sockrace.check.decisions import (
    MAX_CALLS,
    CallDecision,
    Decisions,
    Interrupt,
    Moments,
    Timeout,
    check_timeout,
    draw,
)
from sockrace.check.guest import OWN_TIMERS, GuestExit, describe, ends_program, is_real_ctrl_c
from sockrace.check.oracle import CallRecord, End, judge, same
from sockrace.check.pacing import Pacer
from sockrace.check.result import HammerResult
from sockrace.errors import HammerError as HammerError  # defined there, named here too

DEFAULT_TASKS: Final = 10
DEFAULT_CALLS: Final = 20
# A whole run normally takes well under a second; a minute means a call hangs, not a slow server.
DEFAULT_DEADLINE_S: Final = 60.0
# How long a cancelled call may take to unwind (close a connection, say) before it is reported as
# ignoring cancellation; closing a connection takes milliseconds.
CANCEL_GRACE_S: Final = 1.0
# The "auto" stuck bound, watching the wire: the server owes nothing, no byte has moved and no call
# has finished for WIRE_LATENCY_FACTOR times the slowest call seen, at least MIN_WIRE_QUIET_S. While
# the server owes a reply the clock does not run, so this only has to cover what a correct client
# does between two bytes without a call finishing: its own timers (a back-off, a pool's wait).
MIN_WIRE_QUIET_S: Final = 0.25
WIRE_LATENCY_FACTOR: Final = 4.0
# The "auto" stuck bound without a wire to watch (hammer() on its own): no call finished for
# STALL_LATENCY_FACTOR times the slowest call seen, at least MIN_STALL_S. A call queued behind others
# finishes in a few of their latencies, and a second leaves room for a slow first connect.
MIN_STALL_S: Final = 1.0
STALL_LATENCY_FACTOR: Final = 20.0
# Looks per stall bound: the stall clock leaves out what the event loop spent blocked between two
# looks beyond two looks' intervals; finer looks leave out more of it, for a wake-up each.
STALL_LOOKS: Final = 10
# Whose turn it is, with the client in this event loop and the "auto" bound: calls still waiting
# when the server owes nothing, no byte moves, no call finishes, and nothing in this process could
# wake them (no ready callback, no timer but sockrace's own, no thread of the loop's executor at
# work) are stuck now, not after the bound, in a run that has already failed (a call returned a
# value not its own). Looked at every TURN_LOOK_S while the wire is quiet; that state must hold
# over TURN_CONFIRM_S (several looks, each after a pass of the loop that polled its sockets) before
# the calls are stuck, so that bytes the kernel still carries are read first. Only a failed run:
# "the server owes nothing" cannot tell a reply the server has finished from one it paused in the
# middle of (a slow server streaming a reply, a server process descheduled between two writes),
# so a run with nothing else wrong waits out the bound before its calls are called stuck: this
# rule ends a failed run sooner and never makes a failure of its own.
TURN_LOOK_S: Final = 0.0025
TURN_CONFIRM_S: Final = 0.005
# Looks while things move, when whose turn it is decides: every TURN_BUSY_LOOK_S (each look waits
# on every task still running, so a run of more than TURN_TASKS_PER_LOOK tasks looks less often).
TURN_BUSY_LOOK_S: Final = 0.005
TURN_TASKS_PER_LOOK: Final = 100
_ENDS_PROGRAM: Final = "which would end the program: a call must return a value or raise an Exception"

Call = Callable[[int], Awaitable[object]]
Expect = Callable[[int], object]
Stall = float | Literal["auto"] | None
_Attempt = tuple[End, object, BaseException | None]  # how a call ended, its value, its exception
# Arms a call's cut: given what cuts the call (and says whether it did), returns what disarms it.
_Arm = Callable[[Callable[[], bool]], Callable[[], None]]


class Wire(Protocol):
    """What the hammer watches to tell a slow server from a stuck client (FaultProxy has both)."""

    def server_owes(self) -> bool:
        """Some connection waits on the server: a reply owed, bytes on their way, a connect."""
        ...

    def arrivals(self) -> int:
        """A count that changes whenever bytes move on the wire, in either direction."""
        ...


def _is_seconds(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def _check_arguments(call: object, expect: object, tasks: object, calls: object, seed: object,
                     cancel_fraction: object, deadline_s: object, stall_s: object, label: object) -> None:
    if not callable(call) or not callable(expect):
        raise ValueError("call and expect must be callables: call(i) -> awaitable, expect(i) -> value")
    for name, value in (("tasks", tasks), ("calls", calls)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    assert isinstance(tasks, int)
    assert isinstance(calls, int)
    if tasks * calls > MAX_CALLS:
        raise ValueError(f"tasks x calls must be at most {MAX_CALLS:,}, got {tasks:,} x {calls:,}")
    if type(seed) is not int:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not isinstance(label, str) or not label:
        raise ValueError(f"label must be a non-empty string, got {label!r}")
    if not (isinstance(cancel_fraction, int | float) and not isinstance(cancel_fraction, bool)
            and 0 <= cancel_fraction <= 1):
        raise ValueError(f"cancel_fraction must be a number from 0 to 1, got {cancel_fraction!r}")
    if deadline_s is not None and not _is_seconds(deadline_s):
        raise ValueError(f"deadline_s must be a number of seconds above 0 or None, got {deadline_s!r}")
    if stall_s is not None and stall_s != "auto" and not _is_seconds(stall_s):
        raise ValueError(f'stall_s must be a number of seconds above 0, "auto" or None, got {stall_s!r}')


def stall_bound(stall_s: Stall, slowest_s: float, *, wire: bool = False) -> float | None:
    """How long calls may wait with nothing moving before they are stuck: `stall_s` as given; for
    "auto", watching a wire, WIRE_LATENCY_FACTOR x the slowest call seen so far (at least
    MIN_WIRE_QUIET_S), without one STALL_LATENCY_FACTOR x (at least MIN_STALL_S); None: no bound."""
    if stall_s == "auto":
        if wire:
            return max(MIN_WIRE_QUIET_S, WIRE_LATENCY_FACTOR * slowest_s)
        return max(MIN_STALL_S, STALL_LATENCY_FACTOR * slowest_s)
    return None if stall_s is None else float(stall_s)


def _nanoseconds(loop: asyncio.AbstractEventLoop) -> int:
    return round(loop.time() * 1_000_000_000)


def _check_replay(replay: Decisions) -> None:
    indexes = sorted(d.index for lane in replay.lanes for d in lane)
    if not replay.lanes or indexes != list(range(len(indexes))) or len(indexes) > MAX_CALLS:
        raise ValueError("replay must be the decisions of a hammer run (result.decisions)")


def _expected_values(expect: Expect, total: int) -> list[object]:
    values = []
    for i in range(total):
        try:
            values.append(expect(i))
        except BaseException as exc:  # a SystemExit of the guest's must not end the check either
            if is_real_ctrl_c(exc):
                raise
            raise HammerError(f"expect({i}) raised {describe(exc)}") from exc
    return values


async def hammer(
    call: Call,
    expect: Expect,
    *,
    tasks: int = DEFAULT_TASKS,
    calls: int = DEFAULT_CALLS,
    timeout_ms: Timeout = "auto",
    seed: int = 0,
    cancel_fraction: float = 0.0,
    deadline_s: float | None = DEFAULT_DEADLINE_S,
    stall_s: Stall = "auto",
    label: str = "hammer",
    replay: Decisions | None = None,
    pacer: Pacer | None = None,
    wire: Wire | None = None,
) -> HammerResult:
    """Make `tasks` x `calls` calls through one client from `tasks` concurrent tasks; judge each.

    timeout_ms       (lo, hi): every call gets a deadline drawn in [lo, hi] ms; "auto": a first
                     round (one call per task, all at once) measures the latency, then half the
                     calls get a deadline drawn between the shortest and longest latencies seen
                     lately; None: no deadlines.
    cancel_fraction  share of the calls cancelled by task.cancel() (of a sub-task running the
                     call) at a moment drawn like a deadline, instead of getting one.
    deadline_s       bound on the whole run (None: none); calls it ends are `unfinished`.
    stall_s          the stuck bound: when calls wait and for this many seconds no call has finished
                     (and, watching a `wire`, the server owed nothing and no byte moved), the calls
                     waiting are `stuck` and the ones their tasks had yet to make `unfinished`
                     (result.stalled_s says so). "auto": see stall_bound (with a wire 4x the slowest
                     call seen, at least 0.25 s; without, 20x, at least 1 s); None: only deadline_s
                     bounds the run.
    replay           the `decisions` of an earlier result: make exactly its choices again (the
                     seed, tasks, calls, timeout_ms and cancel_fraction arguments are then unused).
    pacer            told how every call ends (it records the calls cut short); one that follows an
                     earlier run's tape also decides when to cut them (pacing.py: run_check's replays).
    wire             whose turn it is (the FaultProxy the client talks through): while the server
                     owes a reply, a wait is the server's, not the client's.

    Raises ValueError for bad arguments, and HammerError when `expect` raises or a call raises what
    would end a program (SystemExit, KeyboardInterrupt but a real Ctrl-C, GeneratorExit, another
    BaseException). Whatever else `call` does (raise, hang, return garbage) ends up in the result.
    """
    _check_arguments(call, expect, tasks, calls, seed, cancel_fraction, deadline_s, stall_s, label)
    if replay is not None:
        _check_replay(replay)
        decisions = replay
    else:
        decisions = draw(seed, tasks, calls, check_timeout(timeout_ms), float(cancel_fraction))
    expected = _expected_values(expect, decisions.total)
    run = _Run(call, decisions, expected, pacer, wire)
    started = time.perf_counter()
    try:
        ending = await run.run(deadline_s, stall_s)
    except GuestExit as exc:
        raise HammerError(f"{exc}, {_ENDS_PROGRAM}") from exc.raised
    except GeneratorExit as exc:  # a call's own: the run is still going, nobody is closing it
        raise HammerError(f"call {run.exited_at} raised {describe(exc)}, {_ENDS_PROGRAM}") from exc
    elapsed = time.perf_counter() - started
    resolved = decisions.resolved(run.moments_used.items())
    return judged(label, resolved, ended_records(run.recorded, decisions.total, ending), expected,
                  elapsed, ending, wire is not None, run.uncalibrated, pacer)


def judged(label: str, decisions: Decisions, records: Sequence[CallRecord], expected: Sequence[object],
           elapsed_s: float, ending: Ending, wire: bool, uncalibrated: int,
           pacer: Pacer | None = None) -> HammerResult:
    """The result of a run whose calls ended as `records` say (a driver's run too: check/driver.py)."""
    paced = (None, None, None, None) if pacer is None else (
        pacer.tape(), pacer.followed(), pacer.summary(), pacer.misaligned_at)
    return HammerResult(label, tuple(judge(decisions, records, expected)), decisions, elapsed_s,
                        ending.deadline_hit, ending.ignored_cancel, ending.stalled_s, paced[0], paced[1],
                        wire, uncalibrated, paced[2], paced[3])


def ended_records(recorded: Mapping[int, CallRecord], total: int, ending: Ending) -> list[CallRecord]:
    """Every call's record (UNFINISHED when none: it never started, or the run stopped it); when the
    run ended stuck, the calls it left waiting are STUCK, ended when the run gave up on them."""
    records = [recorded.get(i) or CallRecord(i, End.UNFINISHED) for i in range(total)]
    if ending.stalled_s is None:
        return records
    return [replace(r, end=End.STUCK, ended_ns=ending.at_ns)
            if r.end is End.UNFINISHED and r.started_ns is not None else r for r in records]


@dataclass(frozen=True, slots=True)
class Ending:
    """How a run ended (a driver's too): by its deadline, stuck (after `stalled_s` with nothing
    moving; `at_ns` on the loop's clock), or with every call done; the calls that ignored a cancel."""

    deadline_hit: bool
    stalled_s: float | None
    ignored_cancel: tuple[int, ...]
    at_ns: int = 0


def nothing_can_wake(loop: asyncio.AbstractEventLoop, wire: Wire | None = None) -> bool | None:
    """Whether nothing in this event loop could wake a waiting call: no callback ready, no timer
    pending but sockrace's own (guest.OWN_TIMERS; however late a timer is due, it is the client's
    plan to wake), no work in the loop's default executor, no descriptor watched but the wire's
    (only_the_wire_is_watched). None: this loop cannot be looked into (not asyncio's own kind:
    uvloop, say)."""
    ready, scheduled = getattr(loop, "_ready", None), getattr(loop, "_scheduled", None)
    if ready is None or not isinstance(scheduled, list):
        return None
    if ready:
        return False
    for handle in scheduled:
        if not handle.cancelled() and handle not in OWN_TIMERS:
            return False
    executor = getattr(loop, "_default_executor", None)
    if executor is not None:
        work, idle, threads = (getattr(executor, name, None) for name in ("_work_queue", "_idle_semaphore",
                                                                          "_threads"))
        if work is None or idle is None or threads is None:
            return None
        if work.qsize() or len(threads) > getattr(idle, "_value", len(threads)):
            return False
    watched = only_the_wire_is_watched(loop, wire)
    if watched is not True:
        return watched
    return other_threads_wait()


def only_the_wire_is_watched(loop: asyncio.AbstractEventLoop, wire: Wire | None) -> bool | None:
    """Whether every descriptor the loop watches is the loop's own, the wire's (the proxy's
    sockets, `own_sockets`), or a client's socket connected to the proxy: whose turn it is on those
    the wire tells. Any other (a client's connection straight to another service, a pipe to a child
    process) may wake a call when its peer speaks, however long that takes: False. None: the loop's
    selector cannot be looked into."""
    selector = getattr(loop, "_selector", None)
    get_map = getattr(selector, "get_map", None)
    if get_map is None:
        return None
    self_pipe = getattr(loop, "_ssock", None)
    loops_own = self_pipe.fileno() if isinstance(self_pipe, socket.socket) else -1
    own_sockets = getattr(wire, "own_sockets", None)
    own, address = own_sockets() if callable(own_sockets) else (frozenset[int](), None)
    for fd in list(get_map()):
        if fd == loops_own or fd in own:
            continue
        if address is None or _peer(fd) != address:
            return False
    return True


def _peer(fd: int) -> tuple[str, int] | None:
    """The (host, port) socket `fd` is connected to; None for another kind of descriptor or a socket
    not connected. The descriptor stays open and its owner's."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:  # not a socket
        return None
    try:
        peer = sock.getpeername()
    except OSError:
        return None
    finally:
        sock.detach()
    return (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) >= 2 else None


# Where a thread that waits for work or for a signal stands (its innermost Python frame): a thread
# anywhere else runs code of its own, which may wake a call when it is done.
_WAITING_IN: Final = {("threading.py", "wait"), ("threading.py", "_wait_for_tstate_lock"),
                      ("threading.py", "join"), ("queue.py", "get"), ("selectors.py", "select"),
                      ("thread.py", "_worker")}


def other_threads_wait() -> bool:
    """Whether every thread but this one waits (on a lock, a queue, a selector, an idle pool's next
    work item): a client's thread of its own at work (a blocking call handed to an executor of its
    own, say) is not."""
    me = threading.get_ident()
    for ident, frame in sys._current_frames().items():
        if ident == me:
            continue
        where = (os.path.basename(frame.f_code.co_filename), frame.f_code.co_name)
        if where not in _WAITING_IN:
            return False
    return True


class StallWatch:
    """Tells when calls are stuck: nothing moved (no call finished; watching a `wire`, no byte moved
    and the server owed nothing) for the stuck bound, on a clock that runs only while the loop does.

    With `client_here` (the client runs in this event loop, as hammer's do; a driver's does not) and
    the "auto" bound, whose turn it is decides sooner once `failed()` says the run has failed
    already: see TURN_LOOK_S."""

    def __init__(self, wire: Wire | None, *, client_here: bool = False,
                 failed: Callable[[], bool] = lambda: False) -> None:
        self._wire = wire
        self._client_here = client_here
        self._failed = failed
        self._last_finished_at = 0.0  # loop time
        self.slowest_s = 0.0

    def finished(self, took_s: float) -> None:
        """A call finished just now, after `took_s`."""
        self._last_finished_at = asyncio.get_running_loop().time()
        self.slowest_s = max(self.slowest_s, took_s)

    async def watch(self, workers: set[asyncio.Task[None]], ends_at: float | None,
                    stall_s: Stall) -> tuple[set[asyncio.Task[None]], float | None]:
        """Wait for the workers; returns those still running when the deadline passed, a worker
        failed (a call's GuestExit) or the calls were stuck (then also the stuck bound), else
        nothing left and None.

        The quiet clock restarts whenever a call finishes and, watching a wire, whenever a byte
        moved or the server owes something. It runs only while the event loop does: it advances by
        at most two looks' intervals per look, so that a loop blocked by synchronous code (during
        which no call can finish) is not taken for calls that will never finish.
        """
        loop = asyncio.get_running_loop()
        wire = self._wire
        pending, quiet_for, looked_at = workers, 0.0, loop.time()
        self._last_finished_at = looked_at
        moved_at, arrivals = looked_at, (wire.arrivals() if wire is not None else 0)
        by_turn = self._client_here and wire is not None and stall_s == "auto"
        idle_since: float | None = None  # loop time since which nothing could wake the calls
        while pending:
            bound = stall_bound(stall_s, self.slowest_s, wire=wire is not None)
            look_every = None if bound is None else bound / STALL_LOOKS
            if by_turn and look_every is not None:
                # Quiet at the last look: look closer.
                every = TURN_LOOK_S if idle_since is not None else TURN_BUSY_LOOK_S
                look_every = min(look_every, every * max(1.0, len(pending) / TURN_TASKS_PER_LOOK))
            timeout = look_every
            if ends_at is not None:
                timeout = max(0.0, min(ends_at - loop.time(), timeout or math.inf))
            done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
            now = loop.time()
            if not pending or (ends_at is not None and now >= ends_at) or any(
                    not w.cancelled() and w.exception() is not None for w in done):
                return pending, None
            if wire is not None:
                moved = wire.arrivals()
                if moved != arrivals or wire.server_owes():
                    moved_at, arrivals = now, moved
            since = now - max(moved_at, self._last_finished_at)
            if look_every is not None:
                quiet_for = min(since, quiet_for + min(now - looked_at, 2 * look_every))
            looked_at = now
            if bound is not None and quiet_for >= bound:
                return pending, bound
            if by_turn:
                if since <= 0 or not nothing_can_wake(loop, wire):
                    idle_since = None
                elif idle_since is None or max(moved_at, self._last_finished_at) >= idle_since:
                    idle_since = now  # (again, if something moved since the last look)
                elif now - idle_since >= TURN_CONFIRM_S and self._failed():
                    return pending, since  # stuck now: how long nothing had moved
        return pending, None


class _Run:
    """The doing of one run: a worker task per lane of the decisions, each making its calls in order."""

    def __init__(self, call: Call, decisions: Decisions, expected: Sequence[object],
                 pacer: Pacer | None = None, wire: Wire | None = None) -> None:
        self._call_fn = call
        self._decisions = decisions
        self._expected = expected
        self._pacer = pacer
        # The client runs in this loop, but one that follows a tape may hold back its bytes.
        self._stall = StallWatch(wire, client_here=pacer is None, failed=self._failed)
        self.exited_at: int | None = None  # the call that raised GeneratorExit
        self._records: dict[int, CallRecord] = {}
        self._returned: list[CallRecord] = []  # the calls that returned, in the order they did
        self._returned_right = 0  # how many of them, from the first, returned their own value
        self._current: dict[int, int] = {}  # lane -> the call it is making
        self._moments = Moments()
        self.moments_used: dict[int, float] = {}
        self._calibrating = decisions.tasks if decisions.calibrate else 0
        self._calibrated = asyncio.Event()
        self._workers: dict[int, asyncio.Task[None]] = {}

    def _failed(self) -> bool:
        """Whether some call returned a value not its own (wrong or crossed: the oracle's judgement,
        made ahead of it); each returned call is compared once."""
        returned, expected = self._returned, self._expected
        while self._returned_right < len(returned):
            record = returned[self._returned_right]
            if not same(record.value, expected[record.index]):
                return True
            self._returned_right += 1
        return False

    @property
    def uncalibrated(self) -> int:
        """Cuts drawn at "auto" moments before any call had returned: each fell back to 1 ms."""
        return self._moments.uncalibrated

    @property
    def recorded(self) -> dict[int, CallRecord]:
        """The records of the calls that started, by index."""
        return self._records

    async def run(self, deadline_s: float | None, stall_s: Stall) -> Ending:
        """Run every lane until all are done, the deadline passes or the run stalls."""
        loop = asyncio.get_running_loop()
        ends_at = None if deadline_s is None else loop.time() + deadline_s
        self._workers = {t: loop.create_task(self._lane(t, lane), name=f"sockrace-hammer-lane-{t}")
                         for t, lane in enumerate(self._decisions.lanes)}
        workers = set(self._workers.values())
        try:
            pending, stalled_s = await self._stall.watch(workers, ends_at, stall_s)
        except asyncio.CancelledError:
            await self._stop(workers)
            raise
        at_ns = _nanoseconds(loop)
        ignored = await self._stop(pending)
        for worker in workers - pending:
            # A GuestExit (a call raised SystemExit, say), or a failure of ours, surfaces here.
            worker.result()
        return Ending(bool(pending) and stalled_s is None, stalled_s, ignored, at_ns)

    async def _stop(self, workers: Collection[asyncio.Task[None]]) -> tuple[int, ...]:
        """Cancel `workers` and wait for them; the calls of those that would not end in time."""
        if not workers:
            return ()
        for worker in workers:
            worker.cancel()
        _, pending = await asyncio.wait(workers, timeout=CANCEL_GRACE_S)
        return tuple(sorted(self._current[lane] for lane, worker in self._workers.items()
                            if worker in pending and lane in self._current))

    async def _lane(self, lane: int, calls: tuple[CallDecision, ...]) -> None:
        for decision in calls:
            self._current[lane] = decision.index
            await self._one(decision)
            if self._calibrating and decision.position == 0:
                self._calibrating -= 1
                if not self._calibrating:
                    self._calibrated.set()
                await self._calibrated.wait()
        self._current.pop(lane, None)

    async def _one(self, decision: CallDecision) -> None:
        for _ in range(decision.yields):
            await asyncio.sleep(0)
        at_ms = decision.at_ms
        if at_ms is None and decision.interrupt is not Interrupt.NONE:
            at_ms = self.moments_used[decision.index] = self._moments.at(decision.draw)
        loop = asyncio.get_running_loop()
        # The loop's clock, as the deadlines are: on a virtual clock (tests/inprocess.py) a call's
        # story then reads in the time its deadline was set in.
        started = _nanoseconds(loop)
        try:
            end, value, error = await self._attempt(decision, at_ms)
        except GuestExit:
            raise  # the run ends: see hammer()
        except GeneratorExit:
            self.exited_at = decision.index  # raised by the call, if the run is still going: hammer()
            raise
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # the run is being stopped, not the call
                self._records[decision.index] = CallRecord(decision.index, End.UNFINISHED, started)
                raise
            end, value, error = End.RAISED, None, exc  # the user's code raised it on its own
        except Exception as exc:
            end, value, error = End.RAISED, None, exc
        ended = _nanoseconds(loop)
        self._stall.finished((ended - started) / 1e9)
        if end is End.RETURNED:
            # Calibrated on calls that returned: a client that fails fast (every call raising at
            # once) would otherwise draw its deadlines around instant errors, long before any reply.
            self._moments.observe((ended - started) / 1e6)
        described = None
        if error is not None:
            described = describe(error)
            traceback.clear_frames(error.__traceback__)  # the lines stay, the locals (buffers, clients) go
        record = CallRecord(decision.index, end, started, ended, value, described, error)
        self._records[decision.index] = record
        if end is End.RETURNED:
            self._returned.append(record)
        if self._pacer is not None:
            self._pacer.ended(decision.index)

    async def _call(self, index: int) -> object:
        """Call `index` through the user's client. What would end a program becomes GuestExit, an
        Exception, so that no task of ours lets a SystemExit (say) out of the event loop."""
        try:
            return await self._call_fn(index)
        except BaseException as exc:
            # GeneratorExit passes as it is: it is also what closing an abandoned coroutine throws
            # in, which must not become anything else (_one tells a guest's own from that).
            if ends_program(exc) and not isinstance(exc, GeneratorExit):
                raise GuestExit(exc, f"call {index}", describe(exc)) from None
            raise

    async def _attempt(self, decision: CallDecision, at_ms: float | None) -> _Attempt:
        index = decision.index
        if decision.interrupt is Interrupt.NONE or at_ms is None:
            return End.RETURNED, await self._call(index), None
        loop = asyncio.get_running_loop()
        pacer = self._pacer

        def arm(fire: Callable[[], bool]) -> Callable[[], None]:
            """Have `fire` called when the call is to be cut short: by the pacer following a tape,
            else at `at_ms` (and the pacer told); returns what disarms it."""
            if pacer is None:
                return loop.call_later(at_ms / 1000, fire).cancel
            if (release := pacer.take(index, fire)) is not None:
                return release

            def cut() -> None:
                if fire():
                    pacer.cutting(index)

            return loop.call_later(at_ms / 1000, cut).cancel

        if decision.interrupt is Interrupt.DEADLINE:
            return await _under_deadline(lambda: self._call(index), arm)
        return await _cancelled_at(lambda: self._call(index), f"sockrace-hammer-call-{index}", arm)


async def _under_deadline(call: Callable[[], Awaitable[object]], arm: _Arm) -> _Attempt:
    """Run the call under a deadline `arm` fires: the cancellation of this task asyncio.timeout
    makes, made here, for every run, so that a pacer can record it and fire it (pacing.py) and a
    replay cuts a call the same way its recording did."""
    task = asyncio.current_task()
    assert task is not None
    cancelling, fired = task.cancelling(), False

    def fire() -> bool:
        nonlocal fired
        fired = task.cancel()
        return fired

    disarm = arm(fire)
    try:
        return End.RETURNED, await call(), None
    except asyncio.CancelledError:
        if fired:
            fired = False
            if task.uncancel() <= cancelling:  # only ours: the deadline, as asyncio.timeout has it
                return End.DEADLINE, None, None
        raise
    finally:
        disarm()
        if fired:
            task.uncancel()  # the call took the cancellation in and went on: it is spent


async def _cancelled_at(call: Callable[[], Coroutine[Any, Any, object]], name: str, arm: _Arm) -> _Attempt:
    """Run the call in a sub-task and cancel that when `arm` fires: the worker itself lives on."""
    loop = asyncio.get_running_loop()
    sub = loop.create_task(call(), name=name)
    fired = False

    def fire() -> bool:
        nonlocal fired
        fired = sub.cancel()
        return fired

    disarm = arm(fire)
    try:
        return End.RETURNED, await sub, None
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if fired and sub.cancelled() and task is not None and not task.cancelling():
            return End.CANCELLED, None, None
        raise
    finally:
        disarm()
