"""The per-call oracle of a hammer run: what each call returned, judged against what every call expects.

A call is `correct` when it returned the value it expects, `crossed` when it returned the value
another call of the run expects (that call is named, and whether it had been cut short, so that its
reply leaked), `wrong` when its value matches no call, `stuck` when it was still waiting when nothing
was left to wait for (hammer.py says when that is), `error` when it raised, `timeout` when our
deadline fired, `cancelled` when our task.cancel() did, `unfinished` when the run's overall deadline
ended it, or it never started (its task was stuck on an earlier call, or the run stopped).

crossed, wrong and stuck are failures of the client; the others are what a client may legitimately
answer to being cut short.

`expect` values should be unique among the calls in flight at the same time: a value that two
calls expect cannot tell which of them it answers. Repeated or unhashable values (and values whose
`==` raises) are allowed and never break the oracle; they only make crossings harder to see.

Pure: no asyncio, no I/O.
"""

from __future__ import annotations

import math
import traceback
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from sockrace.check.decisions import CallDecision, Decisions

# A value quoted in a sentence is cut here: enough to recognise it, short enough for one line.
MAX_QUOTED: Final = 60


class CallVerdict(StrEnum):
    CORRECT = "correct"
    CROSSED = "crossed"
    WRONG = "wrong"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    UNFINISHED = "unfinished"
    STUCK = "stuck"


# The verdicts that fail a run: the client's own faults, whatever it was asked to survive.
FAILING: Final = frozenset({CallVerdict.CROSSED, CallVerdict.WRONG, CallVerdict.STUCK})
# Ends of a call that cut it short: a reply it was owed may still arrive, and go to someone else.
CUT_SHORT: Final = frozenset({CallVerdict.TIMEOUT, CallVerdict.CANCELLED, CallVerdict.ERROR,
                              CallVerdict.UNFINISHED, CallVerdict.STUCK})


class End(StrEnum):
    """How a call ended, before any judging."""

    RETURNED = "returned"
    RAISED = "raised"
    DEADLINE = "deadline"
    CANCELLED = "cancelled"
    UNFINISHED = "unfinished"
    STUCK = "stuck"  # still waiting when the run gave up on it: nothing was left to wait for


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What happened to one call: its end, what it returned or raised, when it ran (loop clock, ns)."""

    index: int
    end: End
    started_ns: int | None = None  # None: never started
    ended_ns: int | None = None
    value: object = None
    error: str | None = None  # "ExceptionType: message"
    # Kept as it was raised and formatted only on demand: formatting costs about a millisecond,
    # which, spent during the run, would stall every other call in flight.
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def traceback(self) -> str | None:
        """The user's traceback, for a --debug."""
        if self.exception is None:
            return None
        return "".join(traceback.format_exception(self.exception))

    @property
    def duration_ms(self) -> float | None:
        if self.started_ns is None or self.ended_ns is None:
            return None
        return (self.ended_ns - self.started_ns) / 1e6


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """The judged outcome of one call."""

    decision: CallDecision
    record: CallRecord
    verdict: CallVerdict
    expected: object
    owner: int | None = None  # crossed: the call whose expected value this call returned
    owner_leaked: bool = False  # crossed: that call had been cut short, so its reply leaked

    @property
    def index(self) -> int:
        return self.decision.index

    @property
    def value(self) -> object:
        return self.record.value

    @property
    def error_type(self) -> str:
        return (self.record.error or "").partition(":")[0]


def quote(value: object) -> str:
    """repr() of a value for a sentence, cut to MAX_QUOTED characters; never raises."""
    try:
        text = repr(value)
    except Exception as exc:  # the user's __repr__ is a guest too
        text = f"<{type(value).__name__} whose repr() raised {type(exc).__name__}>"
    return text if len(text) <= MAX_QUOTED else text[: MAX_QUOTED - 3] + "..."


def same(a: object, b: object) -> bool:
    """a == b, False when == raises or gives something that is not a truth value."""
    try:
        return bool(a == b)
    except Exception:
        return False


class Expectations:
    """Which calls expect a value: a dict for the hashable values, a list for the rest."""

    def __init__(self, expected: Sequence[object]) -> None:
        self.expected = expected
        self._hashed: dict[Hashable, list[int]] = {}
        self._unhashed: list[int] = []
        for i, value in enumerate(expected):
            try:
                self._hashed.setdefault(value, []).append(i)
            except Exception:  # unhashable, or a __hash__ / __eq__ that raises
                self._unhashed.append(i)

    def matches(self, value: object) -> list[int]:
        """Every call whose expected value equals `value`, in index order."""
        try:
            found = list(self._hashed.get(value, ()))
            rest = self._unhashed
        except Exception:  # `value` cannot be looked up by hash: compare with every call
            found, rest = [], list(range(len(self.expected)))
        found.extend(i for i in rest if same(value, self.expected[i]))
        return sorted(set(found))


def judge(
    decisions: Decisions, records: Sequence[CallRecord], expected: Sequence[object]
) -> list[CallOutcome]:
    """The outcome of every call, by call index. `records[i]` and `expected[i]` belong to call i."""
    by_index = decisions.by_index()
    first_pass = [_first_verdict(record, expected[record.index]) for record in records]
    index: Expectations | None = None  # built only when some value is not the expected one
    outcomes = []
    for record, verdict in zip(records, first_pass, strict=True):
        decision = by_index[record.index]
        if verdict is not CallVerdict.WRONG:
            outcomes.append(CallOutcome(decision, record, verdict, expected[record.index]))
            continue
        index = index or Expectations(expected)
        others = [j for j in index.matches(record.value) if j != record.index]
        if not others:
            outcomes.append(CallOutcome(decision, record, verdict, expected[record.index]))
            continue
        owner = _likeliest_owner(record, others, records, first_pass)
        outcomes.append(CallOutcome(decision, record, CallVerdict.CROSSED, expected[record.index],
                                    owner, first_pass[owner] in CUT_SHORT))
    return outcomes


def _first_verdict(record: CallRecord, expected: object) -> CallVerdict:
    if record.end is End.RETURNED:
        return CallVerdict.CORRECT if same(record.value, expected) else CallVerdict.WRONG
    return {
        End.RAISED: CallVerdict.ERROR,
        End.DEADLINE: CallVerdict.TIMEOUT,
        End.CANCELLED: CallVerdict.CANCELLED,
        End.UNFINISHED: CallVerdict.UNFINISHED,
        End.STUCK: CallVerdict.STUCK,
    }[record.end]


def _likeliest_owner(
    record: CallRecord, candidates: list[int], records: Sequence[CallRecord], verdicts: Sequence[CallVerdict]
) -> int:
    """Among the calls expecting the value, the one whose reply it most likely was: a call cut
    short (its reply was left on the wire) before one that was not, then the nearest in time."""
    start = record.started_ns or 0

    def rank(j: int) -> tuple[bool, float]:
        other = records[j].started_ns
        distance = math.inf if other is None else abs(other - start)
        return verdicts[j] not in CUT_SHORT, distance

    return min(candidates, key=rank)


@dataclass(frozen=True, slots=True)
class Tally:
    """The counts of a run's verdicts, and its error types."""

    verdicts: Counter[CallVerdict]
    error_types: Counter[str]

    @classmethod
    def of(cls, outcomes: Sequence[CallOutcome]) -> Tally:
        verdicts = Counter(o.verdict for o in outcomes)
        errors = Counter(o.error_type for o in outcomes if o.verdict is CallVerdict.ERROR)
        return cls(verdicts, errors)


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


def _how_it_ended(outcome: CallOutcome) -> str:
    record, decision = outcome.record, outcome.decision
    took = _ms((record.ended_ns or 0) - (record.started_ns or 0))
    verdict = outcome.verdict
    if verdict is CallVerdict.TIMEOUT:
        # The call ends when the client has unwound, which may be well after the deadline fired.
        return f"was cancelled by its {decision.at_ms:.1f} ms deadline and ended {took} after it started"
    if verdict is CallVerdict.CANCELLED:
        return f"was cancelled by task.cancel() at {decision.at_ms:.1f} ms and ended {took} after it started"
    if verdict is CallVerdict.ERROR:
        return f"failed with {outcome.error_type} {took} after it started"
    if verdict is CallVerdict.UNFINISHED:
        return "was still running when the run ended"
    if verdict is CallVerdict.STUCK:
        return "was stuck, still waiting when the run gave up on it"
    if verdict is CallVerdict.CORRECT:
        return f"returned {quote(outcome.value)} too (the expected values repeat)"
    return f"itself returned {quote(outcome.value)} {took} after it started"


def explain_crossing(crossed: CallOutcome, owner: CallOutcome) -> str:
    """The story of one crossed reply, in plain words."""
    lead = f"call {owner.index} (expects {quote(owner.expected)}) {_how_it_ended(owner)}"
    gap = (crossed.record.started_ns or 0) - (owner.record.started_ns or 0)
    when = f"{_ms(abs(gap))} {'later' if gap >= 0 else 'earlier'}"
    reply = "its reply" if owner.owner_leaked or owner.verdict in CUT_SHORT else "a reply equal to its value"
    return (f"{lead}; {reply} {quote(crossed.value)} was returned to call {crossed.index} "
            f"(expects {quote(crossed.expected)}, task {crossed.decision.task}), which started {when}.")


def _duration(ns: int) -> str:
    seconds = ns / 1e9
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else _ms(ns)


def _cut(outcome: CallOutcome, zero_ns: int) -> str:
    """How a call was cut short, and when in the run, e.g. "call 12 by its 1.2 ms deadline at 10.1 ms"."""
    verdict, at_ms = outcome.verdict, outcome.decision.at_ms or 0
    how = (f"by its {at_ms:.1f} ms deadline" if verdict is CallVerdict.TIMEOUT
           else f"by task.cancel() at {at_ms:.1f} ms" if verdict is CallVerdict.CANCELLED
           else f"failing with {outcome.error_type}")
    return f"call {outcome.index} {how} at {_ms((outcome.record.ended_ns or 0) - zero_ns)}"


# Calls cut short named in a stuck call's sentence: the latest, where a leak most likely began.
MAX_CUTS_NAMED: Final = 3


def explain_stuck(outcomes: Sequence[CallOutcome], stalled_s: float | None, wire: bool) -> str:
    """The first call that hung, since when, and the calls cut short before it (where a leaked
    connection or pool slot comes from), in one sentence."""
    stuck = sorted((o for o in outcomes if o.verdict is CallVerdict.STUCK),
                   key=lambda o: (o.record.started_ns or 0, o.index))
    first = stuck[0]
    zero_ns = min(o.record.started_ns for o in outcomes if o.record.started_ns is not None)
    started = (first.record.started_ns or 0) - zero_ns
    waited = (first.record.ended_ns or 0) - (first.record.started_ns or 0)
    quiet = "" if stalled_s is None else _duration(round(stalled_s * 1e9))
    why = (f"no byte had moved and the server owed no reply for {quiet}" if wire
           else f"no call had finished for {quiet}")
    others = f" ({len(stuck)} calls stuck in all)" if len(stuck) > 1 else ""
    text = (f"call {first.index} (expects {quote(first.expected)}, task {first.decision.task}) was stuck: it "
            f"started {_ms(started)} into the run and was still waiting {_duration(waited)} later, when "
            f"{why}{others}")
    cuts = sorted((o for o in outcomes if o.verdict in (CallVerdict.TIMEOUT, CallVerdict.CANCELLED,
                                                        CallVerdict.ERROR)
                   and (o.record.ended_ns or 0) <= (first.record.started_ns or 0)),
                  key=lambda o: (o.record.ended_ns or 0, o.index))
    if not cuts:
        return text + "; no call had been cut short before it started."
    named = ", ".join(_cut(o, zero_ns) for o in cuts[-MAX_CUTS_NAMED:])
    shown = min(len(cuts), MAX_CUTS_NAMED)
    lead = (f"{len(cuts)} calls had been cut short before it started, the last {shown}: " if len(cuts) > 1
            else "one call had been cut short before it started: ")
    return f"{text}; {lead}{named}."


def explain(outcomes: Sequence[CallOutcome], *, stalled_s: float | None = None, wire: bool = False) -> str:
    """The first crossed reply (the first to be returned) in plain words, else the first wrong
    value, else the first stuck call (`stalled_s` and `wire` say what the run waited for), else a
    line saying nothing crossed."""
    crossed = [o for o in outcomes if o.verdict is CallVerdict.CROSSED and o.owner is not None]
    if crossed:
        first = min(crossed, key=lambda o: o.record.ended_ns or 0)
        assert first.owner is not None
        more = f" ({len(crossed) - 1} more crossed replies)" if len(crossed) > 1 else ""
        return explain_crossing(first, outcomes[first.owner]) + more
    wrong = [o for o in outcomes if o.verdict is CallVerdict.WRONG]
    if wrong:
        first = min(wrong, key=lambda o: o.record.ended_ns or 0)
        return (f"call {first.index} (expects {quote(first.expected)}) returned {quote(first.value)}, "
                "which no call of the run expects.")
    if any(o.verdict is CallVerdict.STUCK for o in outcomes):
        return explain_stuck(outcomes, stalled_s, wire)
    tally = Tally.of(outcomes)
    return (f"no call returned another call's value: {tally.verdicts[CallVerdict.CORRECT]} of "
            f"{len(outcomes)} correct.")

