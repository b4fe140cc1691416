"""Shrink: from a failing setting, the smallest one that still fails, and its story.

    shrunk = await shrink(attempt, failing_setting)
    print(shrunk.minimal.describe(), shrunk.story())

A greedy search over settings (explore.Setting), smallest first: fewer tasks, fewer calls, faults
dropped (reset, coalesce, split, then the delay itself), faults kept to one direction, and the
delay and deadline ranges narrowed by halves. A candidate is kept when it "still fails": in at least
`must_fail` of `replays` runs under one seed, trying the current seed first and then the next few
(a smaller run draws other decisions from the same seed, so the seed that fails may move). Every
kept candidate restarts the search from it; the search ends when no candidate fails, or when the
run budget is spent, and the minimal setting is then a local minimum: no single step makes it
smaller and still failing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Final

from sockrace.check.decisions import Interrupt
from sockrace.check.explore import Attempt, Failure, Setting, failed
from sockrace.check.faults import Faults
from sockrace.check.result import HammerResult
from sockrace.errors import NotFailing as NotFailing  # defined there, named here too

# Three runs, two of which must fail: over real sockets a setting that fails only once in a while is
# not the one to hand a maintainer; in-process every run is the same, and 1 of 1 is enough.
DEFAULT_REPLAYS: Final = 3
DEFAULT_MUST_FAIL: Final = 2
# Seeds tried per candidate: the current one and the next three. A smaller run draws its deadlines
# and task order afresh, and the failure often hides under one seed but not the next.
DEFAULT_SEEDS: Final = 4
# The runs a shrink may make: a search from 10 tasks x 20 calls takes about 30 steps, each a few
# runs; past this budget the best setting so far is returned.
DEFAULT_MAX_RUNS: Final = 300
# A range narrower than this is a point already, as far as timers on a real machine go.
MIN_RANGE_MS: Final = 1.0




@dataclass(frozen=True, slots=True)
class Shrunk:
    """What shrink found: the minimal failing setting, a failing run of it, and the steps taken."""

    original: Setting
    minimal: Setting
    result: HammerResult  # a failing run of `minimal`
    steps: tuple[str, ...]  # the reductions kept, in order, e.g. "1 task", "no split"
    runs: int  # attempts made in all
    elapsed_s: float
    budget_spent: bool = False  # the search stopped at its run budget, not at a local minimum

    @property
    def failure(self) -> Failure | None:
        return Failure.first_of(self.result)

    def story(self) -> str:
        """The failure told in plain words: which call was cut short when, whose reply went where."""
        return self.result.explain()

    def summary(self) -> str:
        steps = ", ".join(self.steps) if self.steps else "nothing could be taken away"
        stop = " (run budget spent)" if self.budget_spent else ""
        return (f"shrunk to {self.minimal.describe()} in {self.runs} runs, {self.elapsed_s:.1f} s"
                f"{stop}; steps: {steps}")


def _halves(name: str, lo_hi: tuple[float, float]) -> Iterator[tuple[str, tuple[float, float]]]:
    lo, hi = lo_hi
    if hi - lo < 2 * MIN_RANGE_MS:
        return
    middle = round((lo + hi) / 2, 1)
    yield f"{name} {lo:g}-{middle:g} ms", (lo, middle)
    yield f"{name} {middle:g}-{hi:g} ms", (middle, hi)


def _fewer(count: int) -> list[int]:
    return sorted({n for n in (1, 2, count // 2, count - 1) if 1 <= n < count})


def _fault_candidates(faults: Faults) -> Iterator[tuple[str, Faults]]:
    if faults.reset:
        yield "no reset", replace(faults, reset=0.0)
    if faults.coalesce:
        yield "no coalesce", replace(faults, coalesce=0.0)
    if faults.split:
        yield "no split", replace(faults, split=0.0)
    if faults.delay_ms is not None:
        yield "no delay", replace(faults, delay_ms=None)
    if faults.enabled and faults.direction == "both":
        for direction in ("to_client", "to_server"):
            yield f"faults {direction} only", replace(faults, direction=direction)
    if faults.delay_ms is not None:
        for words, lo_hi in _halves("delay", faults.delay_ms):
            yield words, replace(faults, delay_ms=lo_hi)


def _drawn_deadlines(result: HammerResult | None) -> tuple[float, float] | None:
    """The range the deadlines of an "auto" run fell in, as the run resolved them (0.1 ms steps)."""
    if result is None:
        return None
    moments = [d.at_ms for d in result.decisions.by_index()
               if d.interrupt is Interrupt.DEADLINE and d.at_ms is not None]
    if not moments:
        return None
    lo = max(0.1, math.floor(min(moments) * 10) / 10)
    return lo, max(lo, math.ceil(max(moments) * 10) / 10)


def candidates(setting: Setting, result: HammerResult | None = None) -> Iterator[tuple[str, Setting]]:
    """Every one-step reduction of `setting`, the biggest first, each with a few words saying it.

    `result`, a failing run of `setting`, lets "auto" deadlines become the fixed range that run
    drew: every call then gets a deadline (auto leaves half of them free and the first round
    uncut), so a run of one task and two calls can still cut one call short and hand its reply to
    the next, and the range can be narrowed like any other.
    """
    for tasks in _fewer(setting.tasks):
        yield f"{tasks} task{'s' if tasks > 1 else ''}", replace(setting, tasks=tasks)
    for calls in _fewer(setting.calls):
        yield f"{calls} call{'s' if calls > 1 else ''}", replace(setting, calls=calls)
    for words, faults in _fault_candidates(setting.faults):
        yield words, replace(setting, faults=faults)
    if isinstance(setting.timeout_ms, tuple):
        for words, lo_hi in _halves("deadlines", setting.timeout_ms):
            yield words, replace(setting, timeout_ms=lo_hi)
    elif setting.timeout_ms == "auto" and (drawn := _drawn_deadlines(result)) is not None:
        yield f"deadlines {drawn[0]:g}-{drawn[1]:g} ms (as drawn)", replace(setting, timeout_ms=drawn)


class _Judge:
    """Runs candidates and says which still fail, within the run budget."""

    def __init__(self, attempt: Attempt, replays: int, must_fail: int, seeds: int, max_runs: int) -> None:
        self.attempt = attempt
        self.replays, self.must_fail, self.seeds, self.max_runs = replays, must_fail, seeds, max_runs
        self.runs = 0

    @property
    def spent(self) -> bool:
        return self.runs >= self.max_runs

    async def fails(self, setting: Setting, seeds: int) -> tuple[Setting, HammerResult] | None:
        """The first of `seeds` seeds from setting.seed under which it fails often enough, with a
        failing run; None when none does (or the budget runs out)."""
        for seed in range(setting.seed, setting.seed + seeds):
            found = await self._fails_under(setting.with_seed(seed))
            if found is not None:
                return setting.with_seed(seed), found
        return None

    async def _fails_under(self, setting: Setting) -> HammerResult | None:
        failing: HammerResult | None = None
        failures = 0
        for done in range(self.replays):
            if self.spent:
                return None
            self.runs += 1
            result = await self.attempt(setting)
            if failed(result):
                failures += 1
                failing = failing or result
            if failures >= self.must_fail:
                return failing
            if failures + (self.replays - done - 1) < self.must_fail:
                return None
        return None


OnStep = Callable[[str, Setting], None]


def _check(replays: object, must_fail: object, seeds: object, max_runs: object) -> None:
    for name, value in (("replays", replays), ("must_fail", must_fail), ("seeds", seeds),
                        ("max_runs", max_runs)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    assert isinstance(replays, int)
    assert isinstance(must_fail, int)
    if must_fail > replays:
        raise ValueError(f"must_fail must be at most replays ({replays}), got {must_fail}")


async def shrink(attempt: Attempt, setting: Setting, *, replays: int = DEFAULT_REPLAYS,
                 must_fail: int = DEFAULT_MUST_FAIL, seeds: int = DEFAULT_SEEDS,
                 max_runs: int = DEFAULT_MAX_RUNS, on_step: OnStep | None = None) -> Shrunk:
    """The smallest setting reachable from `setting` by single steps that still fails in at least
    `must_fail` of `replays` runs (see the module docstring). `on_step(words, setting)` is called
    for every step kept.

    Raises NotFailing when `setting` itself (under its own seed) does not fail that often, and
    ValueError for bad arguments. What `attempt` raises propagates.
    """
    _check(replays, must_fail, seeds, max_runs)
    started = time.perf_counter()
    judge = _Judge(attempt, replays, must_fail, seeds, max_runs)
    found = await judge.fails(setting, seeds=1)
    if found is None:
        raise NotFailing(f"{setting.describe()} failed in fewer than {must_fail} of {replays} runs: "
                         "nothing to shrink")
    current, result = found
    steps: list[str] = []
    progressed = True
    while progressed and not judge.spent:
        progressed = False
        for words, candidate in candidates(current, result):
            kept = await judge.fails(candidate, seeds)
            if kept is not None:
                current, result = kept
                steps.append(words)
                if on_step is not None:
                    on_step(words, current)
                progressed = True
                break
            if judge.spent:
                break
    return Shrunk(setting, current, result, tuple(steps), judge.runs, time.perf_counter() - started,
                  judge.spent)
