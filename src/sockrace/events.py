"""What happened when, during one run: the events a timeline or a report draws.

Recording is opt-in. The client and the race hold `recorder: Recorder | None` and check it for
None before doing anything, so a run that nobody asked to record pays one comparison per hook.
When it is on, a hook costs one `time.perf_counter_ns()`, one small tuple and one list append;
the readable `Event` objects are only built afterwards, by `Recorder.events()`.

Pure: no asyncio, no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Protocol

from sockrace.workload import Step, Verdict


class EventKind(enum.Enum):
    START = "start"  # the coroutine calls the strategy for this request
    WROTE = "wrote"  # the whole request line has been handed to the connection (after drain)
    READING = "reading"  # the coroutine starts waiting for its reply
    REPLY = "reply"  # a reply line came back to this coroutine (maybe another coroutine's)
    ERROR = "error"  # the request raised instead of returning a reply


@dataclass(frozen=True, slots=True)
class Event:
    t_ns: int  # time.perf_counter_ns(): monotonic, comparable only within one process
    kind: EventKind
    step: Step  # the request this event belongs to (its coroutine is the lane it happened in)
    verdict: Verdict | None = None  # REPLY and ERROR events only
    owner: Step | None = None  # REPLY only: the request the reply really answers, when it answers one
    detail: str = ""  # REPLY: the reply line as received; ERROR: "ExceptionType: message"

    @property
    def coroutine(self) -> int:
        return self.step.coroutine

    @property
    def crossed(self) -> bool:
        return self.verdict is Verdict.CROSSED


class Judged(Protocol):
    """What `Recorder.events()` reads of a judged request: outcome.Outcome is one (outcome.py
    imports this module for Event, so this one names only the fields it needs)."""

    @property
    def step(self) -> Step: ...
    @property
    def verdict(self) -> Verdict: ...
    @property
    def owner(self) -> Step | None: ...


class Recorder:
    """Collects the events of ONE run, in the order they happened.

    The hooks store bare tuples and leave decoding and judging to `events()`: a recorded run should
    race the way an unrecorded one does, so the hooks do as little as they can.
    """

    __slots__ = ("_raw",)

    def __init__(self) -> None:
        self._raw: list[tuple[int, EventKind, Step, bytes | str]] = []

    def mark(self, kind: EventKind, step: Step) -> None:
        """A START, WROTE or READING event of `step`, now."""
        self._raw.append((perf_counter_ns(), kind, step, ""))

    def reply(self, step: Step, line: bytes) -> None:
        """`step` received the reply `line` (its own or not: `events()` says which)."""
        self._raw.append((perf_counter_ns(), EventKind.REPLY, step, line))

    def error(self, step: Step, description: str) -> None:
        """`step` raised instead of returning a reply; `description` is "ExceptionType: message"."""
        self._raw.append((perf_counter_ns(), EventKind.ERROR, step, description))

    def __len__(self) -> int:
        return len(self._raw)

    def events(self, outcomes: Iterable[Judged] = ()) -> tuple[Event, ...]:
        """Every event so far, oldest first (the order of the calls, which is the order of time).

        REPLY and ERROR events take their verdict, and the request the reply answers, from the
        matching entry of `outcomes` (the run's judged outcomes); without one they have neither.
        """
        judged = {(o.step.coroutine, o.step.index): o for o in outcomes}
        events = []
        for t_ns, kind, step, detail in self._raw:
            if kind is EventKind.REPLY or kind is EventKind.ERROR:
                outcome = judged.get((step.coroutine, step.index))
                text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else detail
                verdict = outcome.verdict if outcome is not None else None
                owner = outcome.owner if outcome is not None else None
                events.append(Event(t_ns, kind, step, verdict, owner, text))
            else:
                events.append(Event(t_ns, kind, step))
        return tuple(events)
