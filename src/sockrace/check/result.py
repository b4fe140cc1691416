"""What a hammer run ends as: the judged calls, their counts, and the standard RunResult every report reads.

`HammerResult.run_result()` turns the calls into sockrace's one outcome type (outcome.Outcome in a
RunResult): task t is coroutine t, its k-th call is step ct.k, a call's `line` says what it
expects, `received` is the repr() of what it returned. Verdicts map as: correct, crossed, error as
they are; wrong is corrupted (a value nobody asked for); a deadline is an ERROR of type
TimeoutError (so `Outcome.timed_out` holds); task.cancel() an ERROR of type CancelledError; a call
stuck, or ended by the run's deadline, is lost.

Pure: no asyncio, no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sockrace.check.decisions import MAX_YIELDS, Decisions
from sockrace.check.oracle import FAILING, CallOutcome, CallVerdict, End, Tally, explain, quote
from sockrace.check.tape import Tape
from sockrace.events import Event, EventKind
from sockrace.outcome import TIMEOUT_ERROR, Outcome, RunResult
from sockrace.workload import Plan, Step, Verdict, WorkloadConfig

_STANDARD = {
    CallVerdict.CORRECT: Verdict.CORRECT,
    CallVerdict.CROSSED: Verdict.CROSSED,
    CallVerdict.WRONG: Verdict.CORRUPTED,
    CallVerdict.ERROR: Verdict.ERROR,
    CallVerdict.TIMEOUT: Verdict.ERROR,
    CallVerdict.CANCELLED: Verdict.ERROR,
    CallVerdict.UNFINISHED: Verdict.LOST,
    CallVerdict.STUCK: Verdict.LOST,
}


@dataclass(frozen=True, slots=True)
class HammerResult:
    """One hammer run. `outcomes[i]` is call i's; `decisions` replays the run (hammer(replay=...)).

    `ok` is True when no call crossed, none returned a wrong value and none was stuck: errors,
    timeouts and cancellations are what a client may legitimately answer to being cut short.
    """

    label: str
    outcomes: tuple[CallOutcome, ...] = field(repr=False)
    decisions: Decisions = field(repr=False)
    elapsed_s: float
    deadline_hit: bool = False  # the run's overall deadline ended it (not stuck calls: see stalled_s)
    ignored_cancel: tuple[int, ...] = ()  # calls still running after the run: they ignored cancellation
    # Calls were stuck: nothing moved for this long (no call finished; watching the wire, no byte
    # moved and the server owed nothing), so the run gave up on them.
    stalled_s: float | None = None
    tape: Tape | None = field(default=None, repr=False)  # the order of the run over the proxy (tape.py)
    # A replay following an earlier run's tape: the share of it taken in order (pacing.py).
    followed: float | None = None
    watched_wire: bool = False  # stuck was told by whose turn it was (hammer's `wire`), not by time alone
    # "auto" cuts drawn before any call had returned to measure a latency: each fell back to 1 ms.
    uncalibrated: int = 0
    # A replay following a tape: how far, where its bytes differed, and where it went another way.
    followed_how: str | None = None
    # A replay following a tape: the index of the first tape entry it did not follow (where it went
    # another way, or stood when the run ended); None when it followed all of it, or had no tape.
    misaligned_at: int | None = None
    tally: Tally = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tally", Tally.of(self.outcomes))

    def count(self, verdict: CallVerdict) -> int:
        return self.tally.verdicts[verdict]

    @property
    def calls(self) -> int:
        return len(self.outcomes)

    @property
    def correct(self) -> int:
        return self.count(CallVerdict.CORRECT)

    @property
    def crossed(self) -> int:
        return self.count(CallVerdict.CROSSED)

    @property
    def wrong(self) -> int:
        return self.count(CallVerdict.WRONG)

    @property
    def errors(self) -> int:
        return self.count(CallVerdict.ERROR)

    @property
    def timeouts(self) -> int:
        return self.count(CallVerdict.TIMEOUT)

    @property
    def cancelled(self) -> int:
        return self.count(CallVerdict.CANCELLED)

    @property
    def unfinished(self) -> int:
        return self.count(CallVerdict.UNFINISHED)

    @property
    def stuck(self) -> int:
        return self.count(CallVerdict.STUCK)

    @property
    def error_types(self) -> Counter[str]:
        return self.tally.error_types

    @property
    def ok(self) -> bool:
        return not any(self.tally.verdicts[verdict] for verdict in FAILING)

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def first_crossed(self) -> CallOutcome | None:
        crossed = [o for o in self.outcomes if o.verdict is CallVerdict.CROSSED]
        return min(crossed, key=lambda o: o.record.ended_ns or 0) if crossed else None

    def seconds_to_first_crossed(self) -> float | None:
        """From the first call's start to the return of the first crossed reply."""
        first = self.first_crossed
        starts = [o.record.started_ns for o in self.outcomes if o.record.started_ns is not None]
        if first is None or first.record.ended_ns is None or not starts:
            return None
        return (first.record.ended_ns - min(starts)) / 1e9

    def explain(self) -> str:
        """The first crossed reply in plain words (or the first wrong value, or the first stuck call,
        or that none crossed)."""
        text = explain(self.outcomes, stalled_s=self.stalled_s, wire=self.watched_wire)
        if self.deadline_hit:
            text += f" The run's deadline ended it with {self.unfinished} calls unfinished."
        if self.ignored_cancel:
            text += (f" {len(self.ignored_cancel)} calls ignored cancellation and were still running "
                     f"(first: call {self.ignored_cancel[0]}).")
        return text

    def summary(self) -> str:
        """One line of counts."""
        parts = [f"{self.correct} correct", f"{self.crossed} crossed", f"{self.wrong} wrong",
                 f"{self.errors} errors", f"{self.timeouts} timeouts"]
        if self.cancelled:
            parts.append(f"{self.cancelled} cancelled")
        if self.stuck:
            parts.append(f"{self.stuck} stuck")
        if self.unfinished:
            parts.append(f"{self.unfinished} unfinished")
        return f"{self.label}: {self.calls} calls: " + ", ".join(parts)

    def run_result(self, scenario: str = "hammer") -> RunResult:
        """The run as sockrace's standard RunResult (see the module docstring for the mapping),
        recorded: its events let the timeline and the HTML report draw it."""
        decisions = self.decisions
        config = WorkloadConfig(concurrency=decisions.tasks, requests=decisions.calls,
                                seed=decisions.seed, max_yields=MAX_YIELDS)
        steps = {o.index: _step(o) for o in self.outcomes}
        lanes = tuple(tuple(steps[d.index] for d in lane) for lane in decisions.lanes)
        plan = Plan(config, lanes, {step.payload: step for step in steps.values()})
        outcomes = [_outcome(self.outcomes[step_index(step)], steps) for lane in lanes for step in lane]
        return RunResult(mode=self.label, scenario=scenario, plan=plan, outcomes=outcomes,
                         elapsed_s=self.elapsed_s, events=_events(self.outcomes, steps),
                         protocol_replies=False)


def step_index(step: Step) -> int:
    """The call index of a step made by `run_result` (its payload is "call <i>")."""
    return int(step.payload.rpartition(" ")[2])


def _step(outcome: CallOutcome) -> Step:
    decision = outcome.decision
    line = f"call {decision.index} expects {quote(outcome.expected)}\n".encode("utf-8", "replace")
    return Step(decision.task, decision.position, f"call {decision.index}", line, decision.yields, 0, 0)


def _received(outcome: CallOutcome) -> bytes | None:
    if outcome.record.end is not End.RETURNED:
        return None
    return quote(outcome.value).encode("utf-8", "replace") + b"\n"


def _error(outcome: CallOutcome) -> str | None:
    verdict, at_ms = outcome.verdict, outcome.decision.at_ms
    if verdict is CallVerdict.TIMEOUT:
        return f"{TIMEOUT_ERROR}: the call's deadline of {at_ms or 0:.1f} ms ran out"
    if verdict is CallVerdict.CANCELLED:
        return f"CancelledError: task.cancel() {at_ms or 0:.1f} ms after the call started"
    if verdict is CallVerdict.ERROR:
        return outcome.record.error
    if verdict is CallVerdict.STUCK:
        return "stuck: still waiting when nothing was left to wait for"
    return None


def _outcome(outcome: CallOutcome, steps: dict[int, Step]) -> Outcome:
    step = steps[outcome.index]
    owner = steps[outcome.owner] if outcome.owner is not None else None
    if outcome.verdict is CallVerdict.CORRECT:
        owner = step
    return Outcome(step, _STANDARD[outcome.verdict], _received(outcome), owner, _error(outcome))


def _events(outcomes: Sequence[CallOutcome], steps: dict[int, Step]) -> tuple[Event, ...]:
    events = []
    for outcome in outcomes:
        record, step = outcome.record, steps[outcome.index]
        if record.started_ns is None:
            continue
        events.append(Event(record.started_ns, EventKind.START, step))
        if record.ended_ns is None or outcome.verdict is CallVerdict.UNFINISHED:
            continue
        standard = _outcome(outcome, steps)
        if standard.verdict is Verdict.ERROR:
            events.append(Event(record.ended_ns, EventKind.ERROR, step, Verdict.ERROR, None,
                                standard.error or ""))
        else:
            detail = (standard.received or b"").decode("utf-8", "replace").rstrip("\n")
            events.append(Event(record.ended_ns, EventKind.REPLY, step, standard.verdict,
                                standard.owner, detail))
    events.sort(key=lambda e: e.t_ns)
    return tuple(events)
