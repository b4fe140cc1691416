"""The run record: one failing run as a file anyone can replay, in another process, on another machine.

A record holds what the run was drawn from (the scenario's name, the upstream, and its Setting: the
seed, the size, deadlines, cancellations, stuck bound and faults; the loop and its schedule), what it
decided (every call's decision, its "auto" moments resolved), what the timing decided (the tape, when
one was recorded), and what it came to (the failure looked for, the counts, the story). `sockrace
replay FILE` runs the recorded decisions again, following the tape, and counts how often the same
failure comes back.

The file is JSON, versioned: {"format": "sockrace-run-record", "version": 1, ...}; docs/json.md
lists its keys. A file of another format or a newer version is refused in one sentence.

Pure: no asyncio, no I/O but `save` and `load`.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from sockrace.check.decisions import CallDecision, Decisions, Interrupt, Timeout
from sockrace.check.driver_commands import portable, resolved
from sockrace.check.explore import Failure, Setting
from sockrace.check.faults import Direction, faults_from_json, faults_to_json
from sockrace.check.oracle import CallVerdict
from sockrace.check.tape import Arrival, Cut, Entry, Piece, Reset, Tape
from sockrace.errors import RecordError

FORMAT: Final = "sockrace-run-record"
VERSION: Final = 1
Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run, as a file holds it. `setting.decisions` and `setting.tape` replay it."""

    scenario: str  # FILE.py:FUNC or module:FUNC, as given to `sockrace check`
    upstream: Address
    setting: Setting  # seed, size, deadlines, faults; with the run's decisions and tape
    failure: Failure | None  # what a replay looks for
    deadline_s: float
    stall_s: float | None  # None: "auto"
    faults_in_setup: bool = False
    schedule: Mapping[str, Any] | None = None  # {"seed": N, "perturbation": "shuffle"} on the seeded loop
    loop: str = "asyncio"
    counts: Mapping[str, int] | None = None
    story: str = ""
    sockrace_version: str = ""
    python: str = platform.python_version()
    # When the recorded run itself followed a tape (a replay's run, a shrunk candidate's): the first
    # entry of that tape it did not follow (HammerResult.misaligned_at); None: it followed all of it,
    # or none was followed.
    misaligned_at: int | None = None
    # The driver command line the run's scenario ran under (docs/driver.md); None: in sockrace's process.
    driver: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # One stuck bound: the setting's (what the run was drawn from); `stall_s` spells it as the
        # file does, None for "auto". Given one way only, the other follows.
        setting = self.setting
        if self.stall_s is None and isinstance(setting.stall_s, int | float):
            object.__setattr__(self, "stall_s", float(setting.stall_s))
        elif self.stall_s is not None and setting.stall_s == "auto":
            object.__setattr__(self, "setting", replace(setting, stall_s=self.stall_s))


def _decision(decision: CallDecision) -> list[Any]:
    return [decision.index, decision.task, decision.position, decision.yields, decision.interrupt.value,
            decision.draw, decision.at_ms]


def _entry(entry: Entry) -> list[Any]:
    if isinstance(entry, Piece):
        return ["piece", entry.connection, entry.direction.value, entry.length, entry.crc, entry.at_s,
                entry.at_pass]
    if isinstance(entry, Reset):
        return ["reset", entry.connection, entry.direction.value, entry.at_s, entry.at_pass]
    if isinstance(entry, Arrival):
        return ["arrival", entry.connection, entry.total, entry.at_s, entry.at_pass]
    return ["cut", entry.call, entry.at_s, entry.at_pass]


def _timeout(timeout: Timeout) -> Any:
    return timeout if timeout is None or timeout == "auto" else list(timeout)


def to_dict(record: RunRecord) -> dict[str, Any]:
    """The record as the JSON document `save` writes."""
    setting, decisions = record.setting, record.setting.decisions
    failure = record.failure
    return {
        "format": FORMAT,
        "version": VERSION,
        "sockrace_version": record.sockrace_version,
        "python": record.python,
        "scenario": record.scenario,
        "upstream": list(record.upstream),
        "seed": setting.seed,
        "tasks": setting.tasks,
        "calls": setting.calls,
        "timeout_ms": _timeout(setting.timeout_ms),
        "cancel_fraction": setting.cancel_fraction,
        "client_timeout_ms": setting.client_timeout_ms,
        "deadline_s": record.deadline_s,
        "stall_timeout_s": record.stall_s,
        "faults": faults_to_json(setting.faults),
        "faults_in_setup": record.faults_in_setup,
        "loop": record.loop,
        "schedule": None if record.schedule is None else dict(record.schedule),
        "failure": None if failure is None else {"verdict": failure.verdict.value, "call": failure.call,
                                                 "owner": failure.owner},
        "counts": None if record.counts is None else dict(record.counts),
        "story": record.story,
        "decisions": None if decisions is None else {
            "seed": decisions.seed, "calibrate": decisions.calibrate,
            "delay_ms": None if decisions.delay_ms is None else list(decisions.delay_ms),
            "lanes": [[_decision(d) for d in lane] for lane in decisions.lanes]},
        "tape": None if setting.tape is None else [_entry(e) for e in setting.tape.entries],
        "misaligned_at": record.misaligned_at,
        # This machine's interpreter and shipped drivers as placeholders (driver_commands.py).
        "driver": None if record.driver is None else list(portable(record.driver)),
    }


def save(record: RunRecord, path: str | os.PathLike[str]) -> None:
    """Write `record` to `path` as JSON. Raises OSError when it cannot be written."""
    text = json.dumps(to_dict(record), separators=(",", ":"))
    Path(path).write_text(text + "\n", encoding="utf-8")


def load(path: str | os.PathLike[str]) -> RunRecord:
    """The record in the file at `path`. Raises RecordError saying, in one sentence, why the file is
    not a run record this version can replay (and OSError when it cannot be read)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path} is not a sockrace run record: not JSON ({exc})") from None
    return from_dict(document, str(path))


def _need(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise RecordError(f"{where} is not a valid sockrace run record: {what}")


def _client_timeout(value: Any, where: str) -> float | None:
    """A record's client_timeout_ms: null (or absent: made before it was kept), or above 0."""
    if value is None:
        return None
    _need(isinstance(value, int | float) and not isinstance(value, bool) and value > 0, where,
          "client_timeout_ms must be a number above 0 or null")
    return float(value)


def _delay_range(value: Any, where: str) -> tuple[float, float]:
    lo, hi = _pair(value, where, "decisions.delay_ms")
    _need(all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi)) and 0 <= lo <= hi,
          where, "decisions.delay_ms must be [lo, hi] with 0 <= lo <= hi")
    return float(lo), float(hi)


def _pair(value: Any, where: str, name: str) -> tuple[Any, Any]:
    _need(isinstance(value, list) and len(value) == 2, where, f"{name} must be a pair")
    return value[0], value[1]


def from_dict(document: Any, where: str = "the record") -> RunRecord:
    """The record a JSON document holds; raises RecordError in one sentence when it does not hold one."""
    _need(isinstance(document, dict), where, "not a JSON object")
    if document.get("format") != FORMAT:
        raise RecordError(f"{where} is not a sockrace run record (its format is {document.get('format')!r})")
    version = document.get("version")
    if type(version) is not int or version > VERSION:
        raise RecordError(f"{where} is a run record of version {version!r}; this sockrace reads version "
                          f"{VERSION} (upgrade sockrace to replay it)")
    try:
        return _from_dict(document, where)
    except RecordError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise RecordError(
            f"{where} is not a valid sockrace run record: {type(exc).__name__}: {exc}") from None


def _from_dict(d: dict[str, Any], where: str) -> RunRecord:
    host, port = _pair(d["upstream"], where, "upstream")
    _need(isinstance(host, str) and type(port) is int, where, "upstream must be [host, port]")
    timeout = d["timeout_ms"]
    if isinstance(timeout, list):
        timeout = tuple(_pair(timeout, where, "timeout_ms"))
    faults = faults_from_json(d["faults"])
    decisions = None
    if d["decisions"] is not None:
        doc = d["decisions"]
        lanes = tuple(tuple(CallDecision(int(i), int(t), int(p), int(y), Interrupt(k), float(draw),
                                         None if at is None else float(at))
                            for i, t, p, y, k, draw, at in lane) for lane in doc["lanes"])
        delay = doc.get("delay_ms")  # none before delays were calibrated
        decisions = Decisions(int(doc["seed"]), lanes, bool(doc["calibrate"]),
                              None if delay is None else _delay_range(delay, where))
    tape = None if d["tape"] is None else Tape(tuple(_read_entry(e) for e in d["tape"]))
    stall = d["stall_timeout_s"]
    # A record of before cancellations were an input has none.
    setting = Setting(int(d["seed"]), int(d["tasks"]), int(d["calls"]), timeout, faults,
                      cancel_fraction=float(d.get("cancel_fraction", 0.0)),
                      stall_s="auto" if stall is None else float(stall),
                      client_timeout_ms=_client_timeout(d.get("client_timeout_ms"), where),
                      decisions=decisions, tape=tape)
    failure_doc = d["failure"]
    failure = None if failure_doc is None else Failure(
        CallVerdict(failure_doc["verdict"]), int(failure_doc["call"]),
        None if failure_doc["owner"] is None else int(failure_doc["owner"]))
    misaligned = d.get("misaligned_at")  # a record made before it was kept has none
    driver = d.get("driver")  # nor one made before drivers
    words = driver if isinstance(driver, list) else []
    _need(driver is None or (bool(words) and all(isinstance(w, str) for w in words)), where,
          "driver must be a list of strings or null")
    return RunRecord(str(d["scenario"]), (host, port), setting, failure, float(d["deadline_s"]),
                     None if stall is None else float(stall), bool(d["faults_in_setup"]), d["schedule"],
                     str(d["loop"]), d["counts"], str(d["story"]), str(d["sockrace_version"]),
                     str(d["python"]), None if misaligned is None else int(misaligned),
                     None if driver is None else resolved(driver))


def _read_entry(entry: list[Any]) -> Entry:
    kind, *rest = entry
    if kind == "piece":
        connection, direction, length, crc, at_s, at_pass = rest
        return Piece(int(connection), Direction(direction), int(length), int(crc), float(at_s), at_pass)
    if kind == "reset":
        connection, direction, at_s, at_pass = rest
        return Reset(int(connection), Direction(direction), float(at_s), at_pass)
    if kind == "arrival":
        connection, total, at_s, at_pass = rest
        return Arrival(int(connection), int(total), float(at_s), at_pass)
    if kind == "cut":
        call, at_s, at_pass = rest
        return Cut(int(call), float(at_s), at_pass)
    raise ValueError(f"unknown tape entry {kind!r}")
