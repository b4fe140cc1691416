"""Shrink: from a failing run's record, a smaller record that still fails, every time it is replayed.

    shrunk = await shrink(attempt, failing_setting)
    print(shrunk.minimal.describe(), shrunk.story())

The shrinker cuts what a run recorded, not the setting it was drawn from: its decisions
(decisions.py: which task makes which call, in what order, and which calls are cut short) and its
tape (tape.py: the order its writes, arrivals and cuts took). From the current record it derives
candidates, the biggest cut first:

    tasks          one task alone (a task of the calls the failure names); only the failure's tasks;
                   a half, quarter or eighth of the others; one task less
    calls          one of the failure's calls alone; only the failure's calls; the calls after them
                   in their tasks; a half, quarter or eighth of the others; one call less
    interruptions  only the failure's calls cut short; one cut less (the call then runs free)
    calibration    no calibration round (once every moment is resolved, it only holds tasks back)
    faults         a fault dropped, faults kept to one direction, the delay range halved

A cut of the decisions takes the calls and cuts it drops out of the tape too, renumbers what is
left, and follows that tape: where the run no longer keeps to it (the bytes of a dropped call are
still on it), it runs free (pacing.py); when that run does not fail, the cut decisions are run a
few times more with their timing left to the kernel, recording a tape afresh. A fault is in the tape's timing,
not only in the setting, so a candidate of the faults keeps the decisions and records a tape afresh.

A candidate is *kept* only when it fails reliably: its run (recording a tape of its own) fails, and
then every one of `replays` runs that make that run's
decisions again and follow its tape fail the same way (the same verdict on the same call pair), as
`sockrace replay` of it would. That run's decisions and tape become the record, and the search goes
on from it; it ends when no candidate is kept, or when the run budget is spent. The minimal record is
then a local minimum: no single cut keeps the failure reliably.

The search starts from a recorded failing run of `setting` (its own decisions and tape when it has
them, as a run record does), held to the same rule: up to `tries` recordings until one comes back in
all its replays.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Final

from sockrace.check.decisions import CallDecision, Decisions, Interrupt
from sockrace.check.explore import Attempt, Failure, Setting
from sockrace.check.faults import shrink_faults
from sockrace.check.result import HammerResult
from sockrace.check.tape import Cut, Tape
from sockrace.errors import NotFailing as NotFailing  # defined there, named here too

# Replays a candidate's record must all fail the same way to be kept: a record that comes back 8
# times in 10 passes 6 of 6 about once in four (0.8**6), one that comes back 7 times in 10 once in
# nine, so that the record handed over comes back at least 9 times in 10 (measured in
# docs/when-a-check-fails.md); each kept cut costs 1 + 6 runs.
DEFAULT_REPLAYS: Final = 6
# Runs of a cut's decisions with the timing left to the kernel, when following the cut tape did not
# fail: a race met now and then is met in one of a few runs, and its replays then follow that run.
FRESH_TRIES: Final = 2
# Recordings of the setting to shrink, until one fails and comes back in all its replays.
DEFAULT_TRIES: Final = 3
# The runs a shrink may make: a search from 10 tasks x 20 calls keeps about 15 cuts, each 1 + replays
# runs, and tries a few times as many that fail at their first run; past this budget the smallest
# record so far is returned.
DEFAULT_MAX_RUNS: Final = 300


@dataclass(frozen=True, slots=True)
class Shrunk:
    """What shrink found: the minimal record (a Setting with its decisions and tape), the recorded
    failing run of it, and the cuts kept."""

    original: Setting
    minimal: Setting  # .decisions and .tape: the record a replay makes again and follows
    result: HammerResult  # the run that recorded minimal.decisions and minimal.tape
    steps: tuple[str, ...]  # the cuts kept, in order, e.g. "1 task", "2 calls", "no split"
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


# ------------------------------------------------------------------ cutting a record (pure)


def cut(decisions: Decisions, tape: Tape | None, drop: Iterable[int] = (),
        free: Iterable[int] = ()) -> tuple[Decisions, Tape | None] | None:
    """`decisions` without the calls in `drop` and with the calls in `free` no longer cut short
    (both by their indexes in `decisions`); the calls renumbered 0..n-1 in their old order, tasks left
    empty dropped, each task's positions counted again. `tape` follows: the Cut entries of calls
    dropped or freed go, the others name the new numbers; the bytes stay (which call wrote them is not
    on the tape). None when no call is left."""
    dropped, freed = frozenset(drop), frozenset(free)
    lanes = [[d for d in lane if d.index not in dropped] for lane in decisions.lanes]
    lanes = [lane for lane in lanes if lane]
    if not lanes:
        return None
    numbers = {old: new for new, old in enumerate(sorted(d.index for lane in lanes for d in lane))}
    renumbered = tuple(
        tuple(_renumbered(d, numbers[d.index], task, position, d.index in freed)
              for position, d in enumerate(lane))
        for task, lane in enumerate(lanes))
    cuts = frozenset(d.index for lane in renumbered for d in lane if d.interrupt is not Interrupt.NONE)
    new_tape = None
    if tape is not None:
        entries = []
        for entry in tape.entries:
            if isinstance(entry, Cut):
                new = numbers.get(entry.call)
                if new is None or new not in cuts:
                    continue
                entry = replace(entry, call=new)
            entries.append(entry)
        new_tape = Tape(tuple(entries))
    return Decisions(decisions.seed, renumbered, decisions.calibrate, decisions.delay_ms), new_tape


def _renumbered(decision: CallDecision, index: int, task: int, position: int, free: bool) -> CallDecision:
    if free:
        return replace(decision, index=index, task=task, position=position, interrupt=Interrupt.NONE,
                       at_ms=None)
    return replace(decision, index=index, task=task, position=position)


def _named(failure: Failure) -> frozenset[int]:
    """The calls a failure names: the call that got the wrong value, and whose value it was."""
    return frozenset(i for i in (failure.call, failure.owner) if i is not None)


def _calls(count: int) -> str:
    return f"{count} call{'s' if count != 1 else ''}"


def _tasks(count: int) -> str:
    return f"{count} task{'s' if count != 1 else ''}"


Cutting = tuple[str, frozenset[int], frozenset[int]]
# The parts a run's other tasks or calls are cut into, in turn, before they go one by one: halves,
# quarters, eighths (as delta debugging does), so that a long run loses most of them in a few steps.
CHUNKS: Final = (2, 4, 8)


def _chunks(items: list[int]) -> Iterator[list[int]]:
    """`items` cut into 2, then 4, then 8 consecutive parts (each of at least one item, none all of
    them), each part in turn."""
    for parts in CHUNKS:
        if len(items) < parts:
            return
        size = len(items) / parts
        for part in range(parts):
            yield items[round(part * size):round((part + 1) * size)]


def _cuttings(decisions: Decisions, failure: Failure) -> Iterator[Cutting]:
    """The cuts of `decisions` worth trying, the biggest first: (words, calls dropped, calls freed)."""
    named = _named(failure)
    everything = decisions.by_index()
    nothing: frozenset[int] = frozenset()
    # Tasks: one alone (one of the failure's first), only the failure's, then one less.
    lanes_named = [t for t, lane in enumerate(decisions.lanes) if any(d.index in named for d in lane)]
    lanes_others = [t for t in range(decisions.tasks) if t not in lanes_named]
    if decisions.tasks > 1:
        for task in lanes_named:
            yield _tasks(1), frozenset(d.index for d in everything if d.task != task), nothing
    if 1 < len(lanes_named) < decisions.tasks:
        yield (_tasks(len(lanes_named)),
               frozenset(d.index for d in everything if d.task not in lanes_named), nothing)
    for chunk in _chunks(lanes_others):
        gone = frozenset(d.index for d in everything if d.task in chunk)
        yield _tasks(decisions.tasks - len(chunk)), gone, nothing
    if decisions.tasks > 2:
        for task in [*reversed(lanes_others), *reversed(lanes_named)]:
            yield _tasks(decisions.tasks - 1), frozenset(d.index for d in decisions.lanes[task]), nothing
    # Calls: one of the failure's alone, only the failure's, those after them in their tasks, half the
    # others, then one less.
    every = frozenset(d.index for d in everything)
    if decisions.total > 1:
        for index in sorted(named):
            yield _calls(1), every - {index}, nothing
    others = [d.index for d in everything if d.index not in named]
    if others and len(named) > 1:
        yield _calls(len(named)), frozenset(others), nothing
    last: dict[int, int] = {}
    for d in everything:
        if d.index in named:
            last[d.task] = max(last.get(d.task, 0), d.position)
    after = frozenset(d.index for d in everything if d.task in last and d.position > last[d.task])
    if after and len(after) < len(others):
        yield _calls(decisions.total - len(after)), after, nothing
    for chunk in _chunks(others):
        yield _calls(decisions.total - len(chunk)), frozenset(chunk), nothing
    if decisions.total > 2:
        for index in [*reversed(others), *sorted(named)]:
            yield _calls(decisions.total - 1), frozenset({index}), nothing
    # Interruptions: only the failure's calls cut short, then one cut less.
    interrupted = [d.index for d in everything if d.interrupt is not Interrupt.NONE]
    unnamed = [i for i in interrupted if i not in named]
    if unnamed and len(unnamed) < len(interrupted):
        left = len(interrupted) - len(unnamed)
        yield f"{_calls(left)} cut short", nothing, frozenset(unnamed)
    for index in reversed(interrupted):
        yield f"{_calls(len(interrupted) - 1)} cut short", nothing, frozenset({index})


def candidates(setting: Setting, failure: Failure) -> Iterator[tuple[str, Setting]]:
    """Every one-step cut of the record `setting` holds (its decisions and tape), the biggest first,
    each with a few words saying it. A cut of the faults leaves no tape: its run records one."""
    decisions = setting.decisions
    if decisions is None:
        return
    tried: set[tuple[frozenset[int], frozenset[int]]] = set()
    for words, drop, free in _cuttings(decisions, failure):
        made = cut(decisions, setting.tape, drop, free)
        if made is not None and (drop, free) not in tried:
            tried.add((drop, free))
            yield words, described(replace(setting, decisions=made[0], tape=made[1]))
    resolved = all(d.at_ms is not None for d in decisions.by_index() if d.interrupt is not Interrupt.NONE)
    if decisions.calibrate and resolved:
        uncalibrated = replace(decisions, calibrate=False)
        yield "no calibration round", described(replace(setting, decisions=uncalibrated))
    for words, faults in shrink_faults(setting.faults):  # each kind of fault says what is smaller
        yield words, described(replace(setting, faults=faults, tape=None))


def described(setting: Setting) -> Setting:
    """`setting` with its size and deadlines as its decisions have them: the tasks, the calls of the
    longest, and the range the deadlines fell in (none when no call has one)."""
    decisions = setting.decisions
    if decisions is None:
        return setting
    moments = [d.at_ms for d in decisions.by_index()
               if d.interrupt is Interrupt.DEADLINE and d.at_ms is not None]
    timeout = setting.timeout_ms
    if not moments:
        timeout = None
    elif timeout is not None:
        # In 0.1 ms steps, around what was drawn, and never 0: a range a run can be given again.
        lo = max(0.1, math.floor(min(moments) * 10) / 10)
        timeout = (lo, max(lo, math.ceil(max(moments) * 10) / 10))
    return replace(setting, tasks=decisions.tasks, calls=max(len(lane) for lane in decisions.lanes),
                   timeout_ms=timeout)


# ------------------------------------------------------------------ the search


@dataclass(frozen=True, slots=True)
class _Record:
    setting: Setting  # with the decisions and the tape of `run`
    run: HammerResult
    failure: Failure


class _Judge:
    """Runs candidates and keeps those that fail reliably, within the run budget."""

    def __init__(self, attempt: Attempt, replays: int, max_runs: int, same_pair: bool) -> None:
        self.attempt = attempt
        self.replays, self.max_runs = replays, max_runs
        self.same_pair = same_pair
        self.runs = 0

    @property
    def spent(self) -> bool:
        return self.runs >= self.max_runs

    async def _run(self, setting: Setting) -> HammerResult | None:
        if self.spent:
            return None
        self.runs += 1
        return await self.attempt(setting)

    async def record(self, candidate: Setting) -> _Record | None:
        """The record of a run of `candidate` (following its tape, if it has one, and recording its
        own) when that run fails and every one of `replays` runs following that run's decisions and
        tape fails the same way; else None. When the run following the tape does not fail, the
        decisions are run up to FRESH_TRIES times more with the timing left to the kernel (recording
        afresh): a tape cut down still holds the bytes of the calls dropped, and a run held to it may
        never get to the moment the failure needs."""
        first = await self._run(replace(candidate, record=True))
        failure = None if first is None else Failure.first_of(first)
        for _ in range(FRESH_TRIES if candidate.tape is not None else 0):
            if first is None or failure is not None:
                break
            first = await self._run(replace(candidate, tape=None, record=True))
            failure = None if first is None else Failure.first_of(first)
        if first is None or failure is None:
            return None
        recorded = replace(candidate, decisions=first.decisions, tape=first.tape, record=False)
        for _ in range(self.replays):
            again = await self._run(recorded)
            if again is None or not failure.came_back(again, same_pair=self.same_pair):
                return None
        return _Record(recorded, first, failure)


OnStep = Callable[[str, Setting], None]


def _check(replays: object, tries: object, max_runs: object) -> None:
    for name, value in (("replays", replays), ("tries", tries), ("max_runs", max_runs)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


async def shrink(attempt: Attempt, setting: Setting, *, replays: int = DEFAULT_REPLAYS,
                 tries: int = DEFAULT_TRIES, max_runs: int = DEFAULT_MAX_RUNS,
                 on_step: OnStep | None = None, same_pair: bool = True) -> Shrunk:
    """The smallest record reachable from a failing run of `setting` by single cuts that each fail
    in every one of `replays` replays (see the module docstring). `on_step(words, setting)` is
    called for every cut kept, with the record it made. Without `same_pair` (through a driver, whose
    runs follow no tape) a replay fails the same way with the same verdict on any call.

    Raises NotFailing when no run of `tries` recordings of `setting` fails and comes back in all its
    replays, and ValueError for bad arguments. What `attempt` raises propagates.
    """
    _check(replays, tries, max_runs)
    started = time.perf_counter()
    judge = _Judge(attempt, replays, max_runs, same_pair)
    current: _Record | None = None
    for _ in range(tries):
        current = await judge.record(setting)
        if current is not None or judge.spent:
            break
    if current is None:
        raise NotFailing(f"{setting.describe()} did not fail and come back in {replays} of {replays} "
                         f"replays in {tries} tries: nothing to shrink")
    steps: list[str] = []
    progressed = True
    while progressed and not judge.spent:
        progressed = False
        for words, candidate in candidates(current.setting, current.failure):
            kept = await judge.record(candidate)
            if kept is not None:
                current = replace(kept, setting=described(kept.setting))
                steps.append(words)
                if on_step is not None:
                    on_step(words, current.setting)
                progressed = True
                break
            if judge.spent:
                break
    return Shrunk(setting, current.setting, current.run, tuple(steps), judge.runs,
                  time.perf_counter() - started, judge.spent)
