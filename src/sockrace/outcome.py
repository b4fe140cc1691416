"""What every report formats: the judged outcome of each request, a run's result, the counter's results.

Pure data: no asyncio, no I/O, so that the report, the timeline and the HTML page can import it
without importing anything that runs. The race (race.py) and the counter (counter.py) produce
these records; report.py, timeline.py and html_report.py only read them.

An outcome is about ONE call and is not tied to how the call was made: `step` says which call it
was (its lane is `step.coroutine`, its place in the lane `step.index`, `step.line` what was sent),
`verdict` what became of it, `owner` whose reply it got when it got another call's. Anything that
makes judged calls (a run of the demo client through a strategy, or calls through somebody
else's client) can end in a RunResult and be shown by the same table, JSON, timeline and HTML.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sockrace.events import Event
from sockrace.workload import Plan, Step, Verdict

# The prefix of an ERROR outcome's `error` that says the caller's deadline ran out. Such an
# outcome is counted as an ERROR like any other (compare's counts), and `timed_out` tells it apart.
TIMEOUT_ERROR = "TimeoutError"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The judged outcome of one request."""

    step: Step
    verdict: Verdict
    received: bytes | None = None  # the reply line, when one came
    owner: Step | None = None  # the step the reply really answers, when it answers one
    error: str | None = None  # "ExceptionType: message" for errors

    @property
    def error_type(self) -> str:
        """The exception's type name of an ERROR outcome ("" for the others)."""
        return (self.error or "").partition(":")[0]

    @property
    def timed_out(self) -> bool:
        """The request failed because its deadline ran out, not because anything went wrong on the wire."""
        return self.verdict is Verdict.ERROR and self.error_type == TIMEOUT_ERROR


@dataclass(slots=True)
class RunResult:
    """One run: every request's outcome, in plan order, and what the run did besides.

    `mode` is the name of the strategy that ran (see client.py: a mode is what a strategy is called
    on the command line and in the JSON documents).
    """

    mode: str
    scenario: str
    plan: Plan = field(repr=False)  # a repr of thousands of steps helps nobody (and costs)
    outcomes: list[Outcome] = field(repr=False)
    elapsed_s: float
    counts: Counter[Verdict] = field(default_factory=Counter)
    error_types: Counter[str] = field(default_factory=Counter)
    events: tuple[Event, ...] = ()  # filled only when the run was recorded (see events.py)
    dropped: int = 0  # replies that arrived for a request nobody waited for any more, thrown away
    reopened: int = 0  # times the strategy closed the connection and opened a fresh one
    request_timeout_s: float | None = None  # the limit put on each request, if any
    # True when the replies are lines of sockrace's protocol (compare, client); False for calls made
    # through somebody else's client (check.hammer), whose "reply" is the value a call returned.
    protocol_replies: bool = True

    def __post_init__(self) -> None:
        self.counts = Counter(o.verdict for o in self.outcomes)
        self.error_types = Counter(o.error_type for o in self.outcomes if o.verdict is Verdict.ERROR)

    @property
    def requests(self) -> int:
        return len(self.outcomes)

    def count(self, verdict: Verdict) -> int:
        return self.counts[verdict]

    @property
    def timeouts(self) -> int:
        """ERROR outcomes whose deadline ran out (already counted among the errors)."""
        return self.error_types[TIMEOUT_ERROR]

    @property
    def req_per_s(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def perfect(self) -> bool:
        return self.count(Verdict.CORRECT) == self.requests


@dataclass(frozen=True, slots=True)
class IncrRace:
    """The server half of `sockrace counter`: many connections INCR one key, then it is read back."""

    unsafe_incr: bool
    clients: int
    increments: int
    final: int

    @property
    def expected(self) -> int:
        return self.clients * self.increments

    @property
    def lost(self) -> int:
        return self.expected - self.final


@dataclass(frozen=True, slots=True)
class CounterResult:
    """Both races of `sockrace counter`, each without and with its fix."""

    coroutines: int
    without_lock: int
    with_lock: int
    unsafe_incr: IncrRace
    atomic_incr: IncrRace

    @property
    def fixes_hold(self) -> bool:
        """The lock and the atomic INCR both count every update."""
        return self.with_lock == self.coroutines and self.atomic_incr.lost == 0
