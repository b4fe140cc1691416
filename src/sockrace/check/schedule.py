"""A seeded scheduling event loop: the order of ready callbacks, drawn from a seed, recorded as data.

    with asyncio.Runner(loop_factory=seeded_loop_factory(seed)) as runner:
        runner.run(main())

asyncio runs ready callbacks in FIFO order, so a program that only works because the task started
first always runs first passes every test and fails in production, where a reply or a timer lands
a little earlier. This loop keeps asyncio's batches (what became ready during one pass of the loop
runs in the next) and permutes each batch, as trio does with its batches of runnable tasks
(`trio/_core/_run.py`: a coin flip reverses the batch; under Hypothesis the batch is shuffled from
a seed): "shuffle" draws a full permutation of every batch, "reverse" flips a coin per batch.

Decisions are data: `Schedule` draws them, purely, from the seed, and counts and digests every
one, so that "the same run again" can be checked rather than hoped for: same seed, same program,
same decisions, same digest. It is still a selector loop: real sockets work as with asyncio's own.

How it stays on public API: `call_soon` (which Tasks and Futures use to wake each other) holds
each callback back instead of queueing it; the loop's selector (`SelectorEventLoop(selector=...)`)
is wrapped, and its `select()`, called once per pass just before the pass runs its ready queue,
queues the held batch, in the drawn order, as one callback (with the real `call_soon`) and does
not block while a batch is held. No private attribute of asyncio is read or written. Callbacks
that asyncio queues without `call_soon` keep their FIFO place behind the batch: I/O readiness,
due timers and `call_soon_threadsafe`. Their effects (a future's result, a task woken) go through
`call_soon` and are perturbed.

`run_with_schedule(program, seed)` runs a program once under one seed (a ScheduleRun), and replays
it; `explore.sweep_schedules(program, seeds)` runs it once per seed with the engine a check's
sweep has (explore.Exploration) and reports the first failing seed.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import selectors
import struct
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from contextvars import Context, copy_context
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVarTuple, get_args

from sockrace.check.passes import DelegatingSelector

Perturbation = Literal["shuffle", "reverse"]
PERTURBATIONS: Final[tuple[Perturbation, ...]] = get_args(Perturbation)
DEFAULT_PERTURBATION: Final[Perturbation] = "shuffle"
# A program under test normally ends in well under a second; a run that takes this long hangs,
# and a hang under one schedule is a finding like any other failure, not a reason to stop.
DEFAULT_RUN_TIMEOUT_S: Final = 10.0

_Ts = TypeVarTuple("_Ts")
# Called once per run: a coroutine can be awaited only once.
Program = Callable[[], Coroutine[Any, Any, object]]
# One decision of a schedule: the order of a batch ("shuffle"), or whether it was reversed ("reverse").
Choice = tuple[int, ...] | bool


_KEPT: Final = (0, 1)
_SWAPPED: Final = (1, 0)
_PAIR_BYTES: Final = {flip: struct.pack("<3I", 2, *(_SWAPPED if flip else _KEPT)) for flip in (False, True)}


def _check_perturbation(perturbation: str) -> None:
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {perturbation!r}; choose from {', '.join(PERTURBATIONS)}")


class Schedule:
    """The seeded order of each batch of ready callbacks; pure: no asyncio, no I/O.

    `order(n)` returns the order in which to run a batch of `n` callbacks. A batch of two or more
    is one decision: it is counted, folded into the digest and, with `record=True`, kept in
    `choices` (a permutation for "shuffle", True for "reversed" for "reverse"). A batch of one
    has no order to choose and draws nothing, so the draws depend only on the batches that
    could go more than one way.
    """

    def __init__(self, seed: int, perturbation: Perturbation = DEFAULT_PERTURBATION, *,
                 record: bool = False, replay: Sequence[Choice] | None = None) -> None:
        _check_perturbation(perturbation)
        self.seed = seed
        self.perturbation: Perturbation = perturbation
        self.decisions = 0
        self.choices: list[Choice] | None = [] if record else None
        # The choices of an earlier run, made again in order (see `order`), and the first decision
        # whose recorded choice did not fit its batch (drawn from the seed from there on).
        self._replay = replay
        self.replay_left_at: int | None = None
        # A string seed: random.Random hashes it with SHA-512, the same on every platform and version.
        self._random = random.Random(f"schedule {perturbation} {seed}")
        self._hash = hashlib.blake2b(digest_size=16)

    def order(self, n: int) -> Sequence[int]:
        """The positions of a batch of `n` units, in the order they are to run: with `replay`, the
        recorded choice of this decision while the recorded choices fit the batches (the same kind
        of choice, a permutation of as many units); drawn from the seed otherwise."""
        positions = range(n)
        if n < 2:
            return positions
        self.decisions += 1
        recorded = None if self._replay is None else self._recorded(n)
        if self.perturbation == "reverse":
            return self._reverse_or_keep(positions, recorded if isinstance(recorded, bool) else None)
        if n == 2:
            return self._swap_or_keep(recorded if isinstance(recorded, tuple) else None)
        return self._shuffle(positions, recorded if isinstance(recorded, tuple) else None)

    def _recorded(self, n: int) -> Choice | None:
        replay = self._replay
        if replay is None or self.replay_left_at is not None:
            return None
        at = self.decisions - 1
        if at < len(replay):
            choice = replay[at]
            fits = (isinstance(choice, bool) if self.perturbation == "reverse"
                    else not isinstance(choice, bool) and sorted(choice) == list(range(n)))
            if fits:
                return choice
        self.replay_left_at = at
        return None

    def _reverse_or_keep(self, positions: range, recorded: bool | None = None) -> range:
        flip = self._random.random() < 0.5 if recorded is None else recorded
        self._hash.update(struct.pack("<I?", len(positions), flip))
        if self.choices is not None:
            self.choices.append(flip)
        return positions[::-1] if flip else positions

    def _swap_or_keep(self, recorded: tuple[int, ...] | None = None) -> tuple[int, int]:
        # A pair is the most common batch of more than one (a lock handing over, a reply waking
        # its reader): one draw, no list to shuffle; recorded and digested as a permutation.
        flip = self._random.random() < 0.5 if recorded is None else recorded == _SWAPPED
        self._hash.update(_PAIR_BYTES[flip])
        pair = _SWAPPED if flip else _KEPT
        if self.choices is not None:
            self.choices.append(pair)
        return pair

    def _shuffle(self, positions: range, recorded: tuple[int, ...] | None = None) -> list[int]:
        shuffled = list(positions)
        if recorded is None:
            self._random.shuffle(shuffled)
        else:
            shuffled = list(recorded)
        self._hash.update(struct.pack(f"<{len(shuffled) + 1}I", len(shuffled), *shuffled))
        if self.choices is not None:
            self.choices.append(tuple(shuffled))
        return shuffled

    def digest(self) -> str:
        """A hex digest of every decision so far, in order: equal digests mean the same schedule."""
        return self._hash.hexdigest()


_NOBODY: Final = object()  # no callback has been held yet in this batch
# Looked up once: call_soon runs for every callback of the program.
_Future: Final = asyncio.Future
_Task: Final = asyncio.Task
# asyncio's own call_soon, which queues a callback in the ready queue (super() costs an object a call).
_queue_callback: Final = asyncio.SelectorEventLoop.call_soon


class _Pending:
    """The loop's state between passes: the callbacks of the next batch and how they split into units.

    Kept apart from the loop, which gains only two attributes: CPython keeps about 30 attributes of
    a class's instances in its compact, specialised form, asyncio's selector loop has 24 of its own
    (26 on 3.13), and with six more (four on 3.13) every attribute asyncio reads from the loop, on
    every pass, goes the slow way."""

    __slots__ = ("batch_context", "closed", "held", "last_unit", "run_batch", "running", "unit_starts")

    def __init__(self, run_batch: Callable[[list[_Held]], None]) -> None:
        self.held: list[_Held] = []  # the callbacks of the next batch, in the order they came
        self.unit_starts: list[int] = []  # where each unit of `held` starts
        self.last_unit: object = _NOBODY  # the task, future or scheduling callback of the last unit
        self.running: asyncio.Handle | None = None  # the held callback running now
        self.closed = False  # is_closed(), read without a call: call_soon checks it every time
        # Made once, not once per pass. No two batches run at once, so one context can hold them
        # all (each callback runs in its own context).
        self.run_batch = run_batch
        self.batch_context = copy_context()


class _ReleasingSelector(DelegatingSelector):
    """The loop's selector, wrapped: every select() hands the loop's held batch over, and does not
    block while one is held (the loop computed the timeout without seeing the held callbacks)."""

    def __init__(self, inner: selectors.BaseSelector, pending: _Pending) -> None:
        super().__init__(inner)
        self.pending = pending
        self.loop: SeededEventLoop | None = None  # set once the loop that owns it exists

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        if loop is None or not self.pending.held:
            return self.inner.select(timeout)
        try:
            return self.inner.select(0)
        finally:
            loop.release_held()


class _Held(asyncio.Handle):
    """The handle `call_soon` returns, keeping what it runs where the batch runner can read it
    (asyncio.Handle keeps them private). One object per callback, as asyncio's own loop makes:
    a tuple beside it doubled the objects the cycle collector tracks, and the collector's passes
    were most of the loop's extra cost in a run of 10,000 tasks. `call_soon` sets the three
    slots itself: an `__init__` of its own would cost a second Python call per callback."""

    __slots__ = ("held_args", "held_callback", "held_context")

    held_callback: Callable[..., object] | None  # None once cancelled: one check instead of a call
    held_args: tuple[Any, ...]
    held_context: Context

    def cancel(self) -> None:
        super().cancel()
        self.held_callback = None


class SeededEventLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop, running each batch of ready callbacks in an order drawn from `seed`.

    What is permuted are units, not single callbacks. A task's step is a unit of its own, and so
    are the done-callbacks of one future, in their order; other callbacks that one callback (or
    one task step) schedules in a row stay in a row, in their order. asyncio relies on both: a
    transport schedules connection_made() before it starts reading, and `sock_connect` lets its
    own done-callback stop watching the socket before the task woken by the same future builds a
    transport on it. The units are what trio shuffles: tasks made runnable in the same pass.
    Callbacks that asyncio runs itself (I/O, timers) cannot be told apart: what they schedule in
    a row, other than task steps and done-callbacks, is one unit.

    `schedule` holds the draws (`decisions`, `digest()`; with `record=True`, every choice; with
    `replay`, the choices of an earlier run are made again: Schedule.order). The
    held batch runs inside one callback of the underlying loop, so asyncio's debug-mode report of
    slow callbacks sees the batch, not its parts.
    """

    def __init__(self, seed: int, perturbation: Perturbation = DEFAULT_PERTURBATION, *,
                 record: bool = False, replay: Sequence[Choice] | None = None) -> None:
        self.schedule = Schedule(seed, perturbation, record=record, replay=replay)
        self._pending = pending = _Pending(self._run_batch)
        selector = _ReleasingSelector(selectors.DefaultSelector(), pending)
        super().__init__(selector)
        selector.loop = self

    @property
    def decisions(self) -> int:
        return self.schedule.decisions

    def digest(self) -> str:
        return self.schedule.digest()

    def call_soon(self, callback: Callable[[*_Ts], object], *args: *_Ts,
                  context: Context | None = None) -> asyncio.Handle:
        pending = self._pending
        if pending.closed:
            raise RuntimeError("Event loop is closed")
        if context is None:
            context = copy_context()
        arguments: tuple[Any, ...] = args
        handle = _Held(callback, arguments, self, context)
        handle.held_callback, handle.held_args, handle.held_context = callback, arguments, context
        if arguments:
            # A future's done-callbacks are scheduled with the future as their only argument.
            first = arguments[0]
            unit = first if len(arguments) == 1 and isinstance(first, _Future) else pending.running
        else:
            task = getattr(callback, "__self__", None)  # a task's step is a method of the task
            unit = task if isinstance(task, _Task) else pending.running
        if unit is not pending.last_unit:
            pending.last_unit = unit
            pending.unit_starts.append(len(pending.held))
        pending.held.append(handle)
        return handle

    def release_held(self) -> None:
        """Queue the held batch, its units in the order the schedule draws (once per pass)."""
        pending = self._pending
        batch, starts = pending.held, pending.unit_starts
        pending.held, pending.last_unit = [], _NOBODY
        if len(starts) > 1:  # one unit, the most common batch, has no order to draw
            held, order = batch, self.schedule.order(len(starts))
            if len(starts) == len(held):  # every unit one callback, as when tasks wake each other
                batch = [held[position] for position in order]
            else:
                starts.append(len(held))
                batch = [item for position in order for item in held[starts[position]:starts[position + 1]]]
        starts.clear()
        _queue_callback(self, pending.run_batch, batch, context=pending.batch_context)

    def _run_batch(self, batch: list[_Held]) -> None:
        """Run a released batch in its order, as asyncio runs a handle: an exception goes to the
        loop's exception handler; SystemExit and KeyboardInterrupt stop the loop, and the rest of
        the batch runs first on the next pass, as what asyncio had not run stays in its queue."""
        pending = self._pending
        try:
            for handle in batch:
                callback = handle.held_callback
                if callback is None:  # cancelled
                    continue
                pending.running = handle
                try:
                    handle.held_context.run(callback, *handle.held_args)
                except (SystemExit, KeyboardInterrupt):
                    # Found by identity (a handle is equal only to itself): no index kept per callback.
                    self._hold_first(batch[batch.index(handle) + 1:])
                    raise
                except BaseException as exc:
                    self.call_exception_handler(
                        {"message": f"Exception in callback {handle!r}", "exception": exc, "handle": handle}
                    )
        finally:
            pending.running = None

    def _hold_first(self, rest: list[_Held]) -> None:
        """Put callbacks back at the head of the next batch, as one unit."""
        if rest:
            pending = self._pending
            pending.held[:0] = rest
            pending.unit_starts[:] = [0, *(start + len(rest) for start in pending.unit_starts)]

    def close(self) -> None:
        pending = self._pending
        pending.held.clear()
        pending.unit_starts.clear()  # as asyncio's close() drops its ready queue
        try:
            super().close()
        finally:
            pending.closed = self.is_closed()


def seeded_loop_factory(seed: int, perturbation: Perturbation = DEFAULT_PERTURBATION, *,
                        record: bool = False,
                        replay: Sequence[Choice] | None = None) -> Callable[[], SeededEventLoop]:
    """The `loop_factory` for `asyncio.Runner` (or `asyncio.run` on 3.12+) of a seeded loop."""
    _check_perturbation(perturbation)
    return lambda: SeededEventLoop(seed, perturbation, record=record, replay=replay)


@dataclass(frozen=True, slots=True)
class ScheduleRun:
    """One run of a program under one schedule seed: the decisions drawn, and how it ended."""

    seed: int
    perturbation: Perturbation
    decisions: int  # batches whose order was drawn, up to the program's end (not the loop's clean-up)
    digest: str  # of those decisions: the same digest is the same schedule
    elapsed_s: float
    error: str | None = None  # "TypeName: message" of what the program raised; None when it returned
    traceback: str = field(default="", repr=False)
    # Every decision in order, when asked for (Schedule.choices): what `replay=` makes again, and
    # what a shrinker would cut down.
    choices: tuple[Choice, ...] | None = field(default=None, repr=False)
    # With `replay=`: the first decision whose recorded choice did not fit (drawn from the seed
    # from there on); None: every decision made was a recorded one.
    replay_left_at: int | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def kind(self) -> str:
        """How it failed, in a word: the type of what the program raised ("" when it returned)."""
        return "" if self.error is None else self.error.partition(":")[0]


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_with_schedule(
    program: Program,
    seed: int,
    *,
    perturbation: Perturbation = DEFAULT_PERTURBATION,
    timeout_s: float = DEFAULT_RUN_TIMEOUT_S,
    record: bool = False,
    replay: Sequence[Choice] | None = None,
) -> ScheduleRun:
    """Run `program()` (a fresh coroutine) to its end on a new SeededEventLoop of `seed`.

    What the program raises (an assertion, any exception, a cancellation) or running longer than
    `timeout_s` (TimeoutError) is the run's `error`, never raised here; tasks it leaves are cancelled
    as `asyncio.Runner` does. `record=True` keeps every decision in the run's `choices`; `replay`
    (an earlier run's `choices`) makes them again, in order, as long as they fit the batches.

    Raises ValueError for a program that is not callable, an unknown perturbation or a timeout
    that is not positive. Call it where no event loop is running.
    """
    if not callable(program):
        raise ValueError("program must be a callable that returns a new coroutine for every run")
    _check_perturbation(perturbation)
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    loop = SeededEventLoop(seed, perturbation, record=record, replay=replay)

    async def bounded() -> None:
        async with asyncio.timeout(timeout_s):
            await program()

    error, trace = None, ""
    started = time.perf_counter()
    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        try:
            runner.run(bounded())
        except (Exception, asyncio.CancelledError) as exc:  # the program's failure is the finding
            error, trace = _describe(exc), "".join(traceback.format_exception(exc))
        elapsed = time.perf_counter() - started
        decisions, digest = loop.decisions, loop.digest()
        choices = None if loop.schedule.choices is None else tuple(loop.schedule.choices[:decisions])
    return ScheduleRun(seed, perturbation, decisions, digest, elapsed, error, trace, choices,
                       loop.schedule.replay_left_at)
