"""The seeded decisions of a hammer run, drawn apart from the doing.

Every choice `hammer` makes is here, as data: which task makes which call in which order, how many
times the task yields before each call, and whether the call runs free, under a deadline (its own
task cancelled, as `asyncio.timeout` does) or is cancelled by `task.cancel()` of a sub-task at a
given moment. A run's `Decisions`, with every moment resolved to milliseconds, is part of its
result; handing it back to `hammer(..., replay=decisions)` makes the same choices again.

Moments are drawn in two steps so that "auto" deadlines can follow the latencies a run observes:
the seed gives each call a number `draw` in [0, 1), and a `Moments` source turns it into
milliseconds, either within a fixed range or within the latencies seen so far.

Pure: no asyncio, no I/O.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final, Literal

# Up to this many `await asyncio.sleep(0)` before a call: enough to vary which task gets to the
# shared connection first, few enough to cost nothing next to a round trip.
MAX_YIELDS: Final = 3
# With "auto" deadlines, this share of the calls runs without one: their latencies are never cut
# short, so the observed latencies do not shrink under the run's own deadlines.
AUTO_FREE_SHARE: Final = 0.5
# The latencies "auto" draws from: the most recent completed calls, so that deadlines keep
# following the run as its latency changes (queues growing, a server warming up).
LATENCY_WINDOW: Final = 64
# The calls of one run: a result keeps every call's outcome, and beyond this memory, not the
# client, is what gets tested (the same bound as a sockrace workload).
MAX_CALLS: Final = 1_000_000

Timeout = tuple[float, float] | Literal["auto"] | None


class Interrupt(StrEnum):
    """How a call may be cut short."""

    NONE = "none"  # runs until it returns or raises (within the run's overall deadline)
    DEADLINE = "deadline"  # its task is cancelled at_ms after the call started, as asyncio.timeout does
    CANCEL = "cancel"  # runs in a sub-task that gets task.cancel() at_ms after the call started


@dataclass(frozen=True, slots=True)
class CallDecision:
    """What was decided for call number `index` (the argument of `call(i)`)."""

    index: int
    task: int  # the task that makes the call
    position: int  # its place among that task's calls
    yields: int  # asyncio.sleep(0) before the call
    interrupt: Interrupt
    draw: float  # in [0, 1): where in the moment range this call's deadline or cancel falls
    at_ms: float | None = None  # the deadline or cancel moment; None until resolved (or NONE)


@dataclass(frozen=True, slots=True)
class Decisions:
    """Every decision of one run. `lanes[t]` lists the calls of task t, in the order it makes them.

    `calibrate`: the first call of every task runs free, and no task goes on until all of them
    have returned: that round measures the client's latency at the run's own concurrency.
    `delay_ms`: the proxy's delays were calibrated around the client's own timeout (a backend whose
    calls cannot be cut, check/driver.py): the first call of every task ran first, without faults,
    and the other calls with delays drawn in this range. None: the faults' own delays, from the start.
    """

    seed: int
    lanes: tuple[tuple[CallDecision, ...], ...]
    calibrate: bool
    delay_ms: tuple[float, float] | None = None

    @property
    def tasks(self) -> int:
        return len(self.lanes)

    @property
    def calls(self) -> int:
        """Calls per task."""
        return len(self.lanes[0]) if self.lanes else 0

    @property
    def total(self) -> int:
        return sum(len(lane) for lane in self.lanes)

    def by_index(self) -> list[CallDecision]:
        ordered: list[CallDecision | None] = [None] * self.total
        for lane in self.lanes:
            for decision in lane:
                ordered[decision.index] = decision
        return [d for d in ordered if d is not None]

    def resolved(self, moments: Iterable[tuple[int, float]]) -> Decisions:
        """These decisions with the moments resolved during a run: (call index, at_ms) pairs."""
        at = dict(moments)
        lanes = tuple(
            tuple(replace(d, at_ms=at[d.index]) if d.index in at else d for d in lane)
            for lane in self.lanes
        )
        return Decisions(self.seed, lanes, self.calibrate, self.delay_ms)


def check_timeout(timeout_ms: object) -> Timeout:
    """`timeout_ms` as given when valid; raises ValueError saying what is allowed otherwise."""
    if timeout_ms is None or timeout_ms == "auto":
        return None if timeout_ms is None else "auto"
    message = f'timeout_ms must be (lo, hi) in ms with 0 < lo <= hi, "auto" or None, got {timeout_ms!r}'
    if not (isinstance(timeout_ms, tuple | list) and len(timeout_ms) == 2):
        raise ValueError(message)
    lo, hi = timeout_ms
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi))
    if not (numbers and math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(message)
    return float(lo), float(hi)


def draw(seed: int, tasks: int, calls: int, timeout_ms: Timeout, cancel_fraction: float) -> Decisions:
    """The decisions of a run of `tasks` x `calls` calls; fixed-range moments are resolved here,
    "auto" ones (and cancels without a range) are left for `Moments` to resolve while running."""
    rng = random.Random(f"hammer {seed}")
    order = list(range(tasks * calls))
    rng.shuffle(order)
    fixed = timeout_ms if isinstance(timeout_ms, tuple) else None
    calibrate = fixed is None and (timeout_ms == "auto" or cancel_fraction > 0)
    lanes = []
    for task in range(tasks):
        lane = []
        for position in range(calls):
            yields, share, where = int(rng.random() * (MAX_YIELDS + 1)), rng.random(), rng.random()
            interrupt = _interrupt(share, timeout_ms, cancel_fraction)
            if calibrate and position == 0:
                interrupt = Interrupt.NONE
            at_ms = None
            if fixed is not None and interrupt is not Interrupt.NONE:
                at_ms = fixed[0] + where * (fixed[1] - fixed[0])
            index = order[task * calls + position]
            lane.append(CallDecision(index, task, position, yields, interrupt, where, at_ms))
        lanes.append(tuple(lane))
    return Decisions(seed, tuple(lanes), calibrate)


def _interrupt(share: float, timeout_ms: Timeout, cancel_fraction: float) -> Interrupt:
    if share < cancel_fraction:
        return Interrupt.CANCEL
    if timeout_ms is None:
        return Interrupt.NONE
    if timeout_ms == "auto":
        # The calls left after the cancelled ones: AUTO_FREE_SHARE of them run free.
        rest = (share - cancel_fraction) / (1 - cancel_fraction)
        return Interrupt.NONE if rest < AUTO_FREE_SHARE else Interrupt.DEADLINE
    return Interrupt.DEADLINE


class Moments:
    """Turns a call's `draw` into milliseconds within the latencies observed so far.

    A moment falls uniformly between the shortest and the longest latency in the window: the
    deadlines then span the round trips the run really sees, so that a good share of them fires
    while a request is out, however fast or slow the machine and the server are.
    """

    def __init__(self, window: int = LATENCY_WINDOW) -> None:
        self._latencies: deque[float] = deque(maxlen=window)
        self.uncalibrated = 0  # moments drawn before any latency was observed (each 1 ms)

    def observe(self, latency_ms: float) -> None:
        self._latencies.append(latency_ms)

    @property
    def observed(self) -> int:
        return len(self._latencies)

    def at(self, where: float) -> float:
        """The moment for a draw of `where`; 1 ms when nothing has been observed yet."""
        if not self._latencies:
            self.uncalibrated += 1
            return 1.0
        lo, hi = min(self._latencies), max(self._latencies)
        return lo + where * (hi - lo)

