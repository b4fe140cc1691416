"""What happened when, during one run: the events a timeline or a report draws.

Recording is opt-in. The client and the race hold `recorder: Recorder | None` and check it for
None before doing anything, so a run that nobody asked to record pays one comparison per hook.
When it is on, a hook costs one `time.perf_counter_ns()` and one list append; the readable
`Event` objects are only built afterwards, by `Recorder.events()`.

Pure: no asyncio, no I/O.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

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


_Raw = tuple[int, EventKind, Step, Verdict | None, Step | None, str]


class Recorder:
    """Collects the events of ONE run, in the order they happened."""

    __slots__ = ("_raw",)

    def __init__(self) -> None:
        self._raw: list[_Raw] = []

    def mark(
        self,
        kind: EventKind,
        step: Step,
        verdict: Verdict | None = None,
        owner: Step | None = None,
        detail: str = "",
    ) -> None:
        self._raw.append((time.perf_counter_ns(), kind, step, verdict, owner, detail))

    def __len__(self) -> int:
        return len(self._raw)

    def events(self) -> tuple[Event, ...]:
        """Every event so far, oldest first (the order of the calls, which is the order of time)."""
        return tuple(Event(*raw) for raw in self._raw)
