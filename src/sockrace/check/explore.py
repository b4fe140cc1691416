"""Find it, replay it: run a check once per seed, and re-run one seed to see the same failure come back.

    attempt = lambda setting: ...          # one run of the check under `setting`, a HammerResult
    found = await sweep(attempt, Setting(tasks=4, calls=5), range(1, 501))
    again = await replay(attempt, found.first.setting, repeat=10)

A `Setting` (runner.py) is everything a run's decisions are drawn from: the seed, the run's size, its
deadlines and cancellations, the stuck bound and the proxy's faults. An `attempt` turns one setting
into one judged run: through a FaultProxy in front of a real server (`check_attempt`), or in-process
for tests. Replaying a seed is running its setting again, and over real sockets following the first
run's tape (pacing.py): its writes, the client's bytes and its cuts in its order, pass for pass of the
event loop, as far as the client keeps to it; `Replay` counts how often the same failure came back. A
failure is "the same" when the same verdict falls on the same call pair (call i got call j's reply).

Shrinking a failing run's record to a minimal one is shrink.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final, Generic, Protocol, TypeVar

from sockrace.check.oracle import FAILING, CallOutcome, CallVerdict, Tally
from sockrace.check.result import HammerResult
from sockrace.check.runner import CheckConfig, run_check
from sockrace.check.runner import Setting as Setting  # defined there, beside CheckConfig
from sockrace.check.scenario import Scenario, load
from sockrace.check.schedule import (
    DEFAULT_PERTURBATION,
    DEFAULT_RUN_TIMEOUT_S,
    Perturbation,
    Program,
    ScheduleRun,
    run_with_schedule,
)

# The replays `--replay S` makes when no `--repeat` is given: enough to tell "always" from "often".
DEFAULT_REPEAT: Final = 10

Attempt = Callable[["Setting"], Awaitable[HammerResult]]


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong in a run: `call` got the value `owner` expects (crossed), a value nobody
    expects (wrong, `owner` None), or was still waiting when nothing was left to wait for (stuck,
    `owner` None). Two runs fail the same way when they share a Failure."""

    verdict: CallVerdict
    call: int
    owner: int | None

    @classmethod
    def first_of(cls, result: HammerResult) -> Failure | None:
        """The run's first crossed reply (the first returned), else its first wrong value, else its
        first stuck call (the first to start), else None."""
        for verdict in (CallVerdict.CROSSED, CallVerdict.WRONG):
            found = [o for o in result.outcomes if o.verdict is verdict]
            if found:
                first = min(found, key=lambda o: (o.record.ended_ns or 0, o.index))
                return cls(verdict, first.index, first.owner)
        stuck = [o for o in result.outcomes if o.verdict is CallVerdict.STUCK]
        if stuck:
            first = min(stuck, key=lambda o: (o.record.started_ns or 0, o.index))
            return cls(CallVerdict.STUCK, first.index, None)
        return None

    @classmethod
    def all_of(cls, result: HammerResult) -> frozenset[Failure]:
        return frozenset(cls.of(o) for o in result.outcomes if o.verdict in FAILING)

    def came_back(self, result: HammerResult, *, same_pair: bool = True) -> bool:
        """Whether `result` failed this way again: the same verdict on the same call pair, or (not
        `same_pair`: a run whose order on the wire is not followed, through a driver) the same
        verdict on any call."""
        if same_pair:
            return self in Failure.all_of(result)
        return any(o.verdict is self.verdict for o in result.outcomes)

    @classmethod
    def of(cls, outcome: CallOutcome) -> Failure:
        return cls(outcome.verdict, outcome.index, outcome.owner)

    def describe(self) -> str:
        if self.verdict is CallVerdict.CROSSED:
            return f"call {self.call} got call {self.owner}'s reply"
        if self.verdict is CallVerdict.STUCK:
            return f"call {self.call} was stuck"
        return f"call {self.call} got a value no call expects"


def failed(result: HammerResult) -> bool:
    """A failing run: some call crossed, returned a wrong value or was stuck (errors and timeouts are
    allowed)."""
    return not result.ok


@dataclass(frozen=True, slots=True)
class SeedRun:
    """One run of a sweep or a replay."""

    setting: Setting
    result: HammerResult

    @property
    def seed(self) -> int:
        return self.setting.seed

    @property
    def failure(self) -> Failure | None:
        return Failure.first_of(self.result)

    @property
    def failed(self) -> bool:
        return failed(self.result)

    @property
    def kind(self) -> str:
        """How it failed, in a word (crossed, wrong, stuck)."""
        failure = self.failure
        return "?" if failure is None else failure.verdict.value


class Explored(Protocol):
    """A run a sweep keeps: its seed, whether it failed, and how in a word. A check's run (SeedRun)
    and a program's run on the seeded loop (schedule.ScheduleRun) both are."""

    @property
    def seed(self) -> int: ...

    @property
    def failed(self) -> bool: ...

    @property
    def kind(self) -> str: ...


R = TypeVar("R", bound=Explored)


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a sweep is: handed to its progress callback after every seed."""

    done: int
    total: int | None  # None: the seeds were an iterable of unknown length
    failures: int
    elapsed_s: float

    @property
    def seeds_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds to the last seed at the rate so far; None when unknown."""
        if self.total is None or not self.done or self.elapsed_s <= 0:
            return None
        return (self.total - self.done) / self.seeds_per_s

    def line(self) -> str:
        """The one-line progress a terminal shows, e.g. "seeds 40/500, 0 failing, 12.5 seeds/s, ETA 37 s"."""
        total = "" if self.total is None else f"/{self.total}"
        eta = self.eta_s
        tail = "" if eta is None or math.isinf(eta) else f", ETA {eta:.0f} s"
        return f"seeds {self.done}{total}, {self.failures} failing, {self.seeds_per_s:.1f} seeds/s{tail}"


OnProgress = Callable[[Progress], None]


@dataclass(frozen=True, slots=True)
class Tried:
    """What a sweep keeps of every seed: its counts and the seconds its run took as a whole."""

    seed: int
    tally: Tally
    seconds: float


@dataclass(frozen=True, slots=True)
class Sweep(Generic[R]):
    """Runs made once per seed: the seeds tried, the runs that failed, the first of them; `records`
    has every seed's counts (for a check's runs)."""

    tried: tuple[int, ...]
    failures: tuple[R, ...]
    elapsed_s: float
    records: tuple[Tried, ...] = ()

    @property
    def failing_seeds(self) -> tuple[int, ...]:
        return tuple(run.seed for run in self.failures)

    @property
    def first(self) -> R | None:
        return self.failures[0] if self.failures else None

    @property
    def failure_rate(self) -> float:
        return len(self.failures) / len(self.tried) if self.tried else 0.0

    @property
    def seeds_per_s(self) -> float:
        return len(self.tried) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        """e.g. "20 seeds tried, 3 failing (15%): seeds 2 (crossed), 7 (stuck), 19 (crossed)" or
        "500 seeds tried, 0 failing"."""
        line = f"{len(self.tried)} seeds tried, {len(self.failures)} failing"
        if self.failures:
            shown = ", ".join(f"{run.seed} ({run.kind})" for run in self.failures[:10])
            more = ", ..." if len(self.failures) > 10 else ""
            line += f" ({self.failure_rate:.0%}): seed{'s' if len(self.failures) > 1 else ''} {shown}{more}"
        return line


class Exploration(Generic[R]):
    """The one exploration engine: takes each seed's run in turn, keeps the failing ones, says
    whether to go on (not past the first failure unless `keep_going`) and reports progress. A check's
    sweep (`sweep`, async) and a program's sweep over schedules (`sweep_schedules`, each run on a
    loop of its own) feed it; both end as a Sweep."""

    def __init__(self, seeds: Iterable[int], *, keep_going: bool = False,
                 on_progress: OnProgress | None = None) -> None:
        self.total = len(seeds) if isinstance(seeds, Sequence | range) else None
        self.keep_going, self.on_progress = keep_going, on_progress
        self.tried: list[int] = []
        self.failures: list[R] = []
        self.records: list[Tried] = []
        self.started = time.perf_counter()

    def take(self, run: R, seconds: float, tally: Tally | None = None) -> bool:
        """Keep `run` (which took `seconds`); True while the sweep is to go on."""
        self.tried.append(run.seed)
        if tally is not None:
            self.records.append(Tried(run.seed, tally, seconds))
        if run.failed:
            self.failures.append(run)
        if self.on_progress is not None:
            self.on_progress(Progress(len(self.tried), self.total, len(self.failures),
                                      time.perf_counter() - self.started))
        return self.keep_going or not self.failures

    def result(self) -> Sweep[R]:
        return Sweep(tuple(self.tried), tuple(self.failures), time.perf_counter() - self.started,
                     tuple(self.records))


def parse_seeds(text: str) -> range:
    """ "1-500" or "7" as a range of seeds; raises ValueError in one line otherwise."""
    first, dash, last = text.strip().partition("-")
    try:
        low, high = int(first), int(last) if dash else int(first)
    except ValueError:
        raise ValueError(f"seeds must be N or LO-HI (e.g. 1-500), got {text!r}") from None
    if low < 0 or high < low:
        raise ValueError(f"seeds must be N or LO-HI with 0 <= LO <= HI, got {text!r}")
    return range(low, high + 1)


async def sweep(attempt: Attempt, setting: Setting, seeds: Iterable[int], *, keep_going: bool = False,
                on_progress: OnProgress | None = None) -> Sweep[SeedRun]:
    """Run `setting` under each seed in turn (each attempt makes its own proxy and client); stop at
    the first failing seed unless `keep_going`. `on_progress` is called after every seed.

    What `attempt` raises (a scenario that fails, an upstream that is gone) propagates: a sweep
    cannot judge a run that did not happen.
    """
    exploring: Exploration[SeedRun] = Exploration(seeds, keep_going=keep_going, on_progress=on_progress)
    for seed in seeds:
        began = time.perf_counter()
        run = SeedRun(setting.with_seed(seed), await attempt(setting.with_seed(seed)))
        if not exploring.take(run, time.perf_counter() - began, run.result.tally):
            break
    return exploring.result()


def sweep_schedules(program: Program, seeds: Iterable[int], *,
                    perturbation: Perturbation = DEFAULT_PERTURBATION,
                    timeout_s: float = DEFAULT_RUN_TIMEOUT_S, keep_going: bool = False,
                    on_progress: OnProgress | None = None) -> Sweep[ScheduleRun]:
    """Run `program()` once under each schedule seed, each run on a seeded loop of its own
    (schedule.run_with_schedule); stop at the first failure unless `keep_going`. Call it where no
    event loop is running.

    The first failure's `seed` replays it: `run_with_schedule(program, seed)` draws the same
    decisions (same `digest`) for a program whose only nondeterminism is the schedule. Raises
    ValueError as `run_with_schedule` does.
    """
    exploring: Exploration[ScheduleRun] = Exploration(seeds, keep_going=keep_going, on_progress=on_progress)
    for seed in seeds:
        run = run_with_schedule(program, seed, perturbation=perturbation, timeout_s=timeout_s)
        if not exploring.take(run, run.elapsed_s):
            break
    return exploring.result()


@dataclass(frozen=True, slots=True)
class Replay:
    """One setting run `repeat` times: how often it failed, and how often the same way."""

    setting: Setting
    reference: Failure | None  # the failure looked for: given, or the first failing run's
    runs: tuple[SeedRun, ...]
    elapsed_s: float
    # The failure comes back as the same pair (True), or as the same verdict (False: through a driver,
    # which follows no tape, the pair is the kernel's timing; docs/driver.md).
    same_pair: bool = True

    @property
    def repeat(self) -> int:
        return len(self.runs)

    @property
    def failed(self) -> int:
        return sum(failed(run.result) for run in self.runs)

    @property
    def same(self) -> int:
        """Runs in which the reference failure came back: the same verdict on the same call pair (on
        any call, without `same_pair`)."""
        if self.reference is None:
            return 0
        return sum(self.reference.came_back(run.result, same_pair=self.same_pair) for run in self.runs)

    @property
    def exact(self) -> bool:
        return self.reference is not None and self.same == self.repeat

    @property
    def followed(self) -> list[float]:
        """For each run that followed a tape (a recorded first run's, or a run record's): the share
        of it taken in order."""
        return [run.result.followed for run in self.runs if run.result.followed is not None]

    @property
    def misaligned_at(self) -> list[int | None]:
        """For each run that followed a tape: the first entry of it that run did not follow (where
        it drifted), None when it followed all of it."""
        return [run.result.misaligned_at for run in self.runs if run.result.followed is not None]

    def summary(self) -> str:
        if self.reference is None:
            return f"seed {self.setting.seed}: no failure in {self.repeat} runs"
        if not self.same_pair:
            return (f"seed {self.setting.seed}: {self.reference.verdict.value} again in {self.same} of "
                    f"{self.repeat} runs ({self.failed} of {self.repeat} failed at all; first recorded: "
                    f"{self.reference.describe()}; through a driver the pair follows the timing)")
        return (f"seed {self.setting.seed}: {self.reference.describe()} in {self.same} of {self.repeat} "
                f"runs ({self.failed} of {self.repeat} failed at all)")

    def pacing(self) -> str | None:
        """How far the replays kept to the first run's order, when they followed its tape, and where
        the one that kept to it least went another way."""
        shares = sorted(self.followed)
        if not shares:
            return None
        median = shares[len(shares) // 2]
        text = (f"The replays took the first run's writes, arrivals and cuts in its order for "
                f"{shares[0]:.0%}-{shares[-1]:.0%} of them (median {median:.0%}); past that point a run "
                f"goes its own way.")
        least = min((run.result for run in self.runs if run.result.followed is not None),
                    key=lambda result: result.followed or 0.0)
        if least.followed_how:
            text += f" The one that kept to it least {least.followed_how}."
        return text


async def replay(attempt: Attempt, setting: Setting, *, repeat: int = DEFAULT_REPEAT,
                 failure: Failure | None = None, same_pair: bool = True) -> Replay:
    """Run `setting` (its seed included) `repeat` times and count how often `failure` comes back;
    without one, the first failing run's failure is the one looked for. The first run draws its
    decisions from the seed (or makes `setting.decisions` again, a run record's) and records its
    tape; every later one makes that run's decisions again and follows its tape. A recorded run that
    did not fail the way looked for is not worth following: the runs after it record again, until
    one does. A setting that brings its own tape (a run record's) is followed from the first run on.
    Without `same_pair`, a failure comes back as the same verdict on any call (Failure.came_back)."""
    if type(repeat) is not int or repeat < 1:
        raise ValueError(f"repeat must be an integer >= 1, got {repeat!r}")
    runs: list[SeedRun] = []
    started = time.perf_counter()
    again = setting if setting.tape is not None else replace(setting, record=True)
    for _ in range(repeat):
        run = SeedRun(setting, await attempt(again))
        if failure is None:
            failure = run.failure
        if again.record:
            # Later runs make this run's decisions again, its "auto" deadlines included (a fresh draw
            # would calibrate them on that run's own latencies, and move the race window).
            decisions = run.result.decisions
            came_back = failure is not None and failure.came_back(run.result, same_pair=same_pair)
            again = (replace(setting, decisions=decisions, tape=run.result.tape) if came_back
                     else replace(setting, decisions=decisions, record=True))
        runs.append(run)
    return Replay(setting, failure, tuple(runs), time.perf_counter() - started, same_pair)


def setting_of(config: CheckConfig) -> Setting:
    """The setting a `sockrace check` configuration runs under: `config.setting`."""
    return config.setting


def check_attempt(config: CheckConfig, scenario: Scenario | None = None) -> Attempt:
    """An attempt that runs `config`'s scenario against its upstream through a fresh FaultProxy
    (run_check), under each setting it is given. The scenario is loaded once, here."""
    # A driver loads it in its own process (it may not even import in this one).
    loaded = scenario if scenario is not None or config.driver is not None else load(config.scenario)

    async def attempt(setting: Setting) -> HammerResult:
        return (await run_check(config.with_setting(setting), scenario=loaded)).result

    return attempt
