"""What happened when, during one run: the events a timeline or a report draws.

Recording is opt-in. The client and the race hold `recorder: Recorder | None` and check it for
None before doing anything, so a run that nobody asked to record pays one comparison per hook.
When it is on, a hook costs one `time.perf_counter_ns()`, one small tuple and one list append;
the readable `Event` objects are only built afterwards, by `Recorder.events()`.

Pure: no asyncio, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

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


class Recorder:
    """Collects the events of ONE run, in the order they happened.

    The hooks store bare tuples and leave decoding to `events()`: a recorded run should race the
    way an unrecorded one does, so the hooks do as little as they can.
    """

    __slots__ = ("_raw",)

    def __init__(self) -> None:
        # (t_ns, kind, step) or, for the last event of a request, (t_ns, kind, step, verdict, owner, detail)
        self._raw: list[tuple[Any, ...]] = []

    def mark(self, kind: EventKind, step: Step) -> None:
        """A START, WROTE or READING event of `step`, now."""
        self._raw.append((perf_counter_ns(), kind, step))

    def reply(self, step: Step, verdict: Verdict, owner: Step | None, line: bytes) -> None:
        """`step` received the reply `line`, judged `verdict`; `owner` is the request it answers."""
        self._raw.append((perf_counter_ns(), EventKind.REPLY, step, verdict, owner, line))

    def error(self, step: Step, description: str) -> None:
        """`step` raised instead of returning a reply; `description` is "ExceptionType: message"."""
        self._raw.append((perf_counter_ns(), EventKind.ERROR, step, Verdict.ERROR, None, description))

    def __len__(self) -> int:
        return len(self._raw)

    def events(self) -> tuple[Event, ...]:
        """Every event so far, oldest first (the order of the calls, which is the order of time)."""
        return tuple(_event(raw) for raw in self._raw)


def _event(raw: tuple[Any, ...]) -> Event:
    if len(raw) == 3:
        return Event(*raw)
    t_ns, kind, step, verdict, owner, detail = raw
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    return Event(t_ns, kind, step, verdict, owner, detail)
