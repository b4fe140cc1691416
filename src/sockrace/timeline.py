"""The terminal timeline of a recorded run: one column per coroutine, one row per event, in order.

Every request shows up as up to four rows in its coroutine's column: `start`, `wrote` (the whole
line is written), `reading` (it starts waiting for its reply), then `ok` (its own reply),
`got cX.Y` (another request's reply: crossed), `garbled` (a reply to nothing anybody sent) or the
exception it raised. A crossed reply also draws an arrow from the column where the reply went to
the column of the coroutine it belonged to. Requests never answered end with `lost` rows.

Pure formatting: no asyncio, no I/O. Colour is ANSI, decided by the caller (`colour_wanted`).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TextIO

from sockrace.events import Event, EventKind
from sockrace.outcome import RunResult
from sockrace.workload import Step, Verdict

# A timeline is meant for the small runs a person can follow (say 4 coroutines x 3 requests);
# 80 columns is the narrowest terminal still common, so the layout is planned for it.
DEFAULT_WIDTH: Final = 80
# Beyond this many rows a timeline stops being something to read; larger runs are summarised.
MAX_ROWS: Final = 64
# Narrowest column that still fits "c12.10 reading"; fewer coroutines are shown rather than squeezed.
MIN_COLUMN: Final = 15
TIME_WIDTH: Final = 8  # " 12345.6": microseconds (milliseconds for long runs) since the first event
# Columns wider than this only spread the timeline out; the longest cell is about this long.
MAX_COLUMN: Final = 22

_RESET: Final = "\x1b[0m"
_STYLES: Final = {
    "head": "\x1b[1m",
    "step": "\x1b[2m",  # start / wrote / reading: dim, so that the replies stand out
    "ok": "\x1b[32m",
    "crossed": "\x1b[1;31m",
    "corrupted": "\x1b[35m",
    "error": "\x1b[33m",
    "lost": "\x1b[33m",
}

LEGEND: Final = (
    "cX.Y = request Y of coroutine X. ok = it got its own reply; got cX.Y = it got the reply to "
    "request cX.Y (a crossed reply; the arrow points at the coroutine it belonged to); garbled = a "
    "reply to nothing anybody sent; lost = never answered; an exception name = the request raised it."
)
CHECK_LEGEND: Final = (
    "tX.Y = call Y of task X. ok = it returned its own value; got tX.Y = it returned the value call tX.Y "
    "expects (a crossed reply; the arrow points at that call's task); wrong 'x' = it returned 'x', a value "
    "no call expects (cut to the column); TimeoutError = cut by its deadline; CancelledError = cut by "
    "task.cancel(); stuck = still waiting when nothing was left to wait for; unfinished = never made, or "
    "ended by --deadline; another exception name = the call raised it."
)


@dataclass(frozen=True, slots=True)
class Words:
    """What a timeline calls things: compare's coroutines and requests, or check's tasks and calls."""

    prefix: str  # of a step's name: c3.2, t3.2
    lanes: str
    units: str
    wrong: str  # a reply (value) nobody asked for
    lost: str  # never answered
    legend: str
    small_run: str  # the options of a run small enough to show in full
    # Show what came back for a wrong verdict (a check's value, quoted; cut to the column's width).
    # Compare's garbled reply is wire text: its trace and JSON show it, not a cell.
    wrong_value: bool = False


COMPARE_WORDS: Final = Words("c", "coroutines", "requests", "garbled", "lost", LEGEND, "-c 4 -n 3")
CHECK_WORDS: Final = Words("t", "tasks", "calls", "wrong", "unfinished", CHECK_LEGEND, "--tasks 4 --calls 3",
                           wrong_value=True)


def colour_wanted(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """ANSI colour only on a terminal, and never when NO_COLOR is set to anything (no-color.org)."""
    env = os.environ if environ is None else environ
    return stream.isatty() and not env.get("NO_COLOR")


def legend(width: int = DEFAULT_WIDTH, *, words: Words = COMPARE_WORDS) -> list[str]:
    """How to read a timeline, wrapped to `width`."""
    return textwrap.wrap(words.legend, width)


def _name(step: Step, words: Words = COMPARE_WORDS) -> str:
    return f"{words.prefix}{step.coroutine}.{step.index}"


@dataclass(frozen=True, slots=True)
class _Cell:
    text: str
    style: str


def _cell(event: Event, words: Words) -> _Cell:
    name = _name(event.step, words)
    if event.kind is EventKind.START:
        return _Cell(f"{name} start", "step")
    if event.kind is EventKind.WROTE:
        return _Cell(f"{name} wrote", "step")
    if event.kind is EventKind.READING:
        return _Cell(f"{name} reading", "step")
    if event.kind is EventKind.ERROR:
        # The exception's type name: it is ours (from the client), never text from the wire.
        return _Cell(f"{name} {event.detail.partition(':')[0] or 'error'}", "error")
    if event.verdict is Verdict.CORRECT:
        return _Cell(f"{name} ok", "ok")
    if event.verdict is Verdict.CROSSED and event.owner is not None:
        return _Cell(f"{name} got {_name(event.owner, words)}", "crossed")
    value = f" {event.detail}" if words.wrong_value and event.detail else ""
    return _Cell(f"{name} {words.wrong}{value}", "corrupted")


class _Painter:
    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def __call__(self, text: str, style: str) -> str:
        if not self.colour or not text.strip():
            return text
        return f"{_STYLES[style]}{text}{_RESET}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def _row(
    time_text: str, cells: dict[int, _Cell], columns: list[int], width: int, paint: _Painter,
    arrow: tuple[int, int, str] | None = None,
) -> str:
    """One line: the time, then every column's cell padded to `width` (text first, then the arrow)."""
    plain: list[tuple[str, str]] = []  # (text, style) per column, each exactly `width` wide
    for column in columns:
        cell = cells.get(column)
        text = _fit(cell.text, width - 1) if cell else ""
        plain.append((text.ljust(width), cell.style if cell else "step"))
    if arrow is not None:
        # The arrow runs through the padding between the receiver's text and the owner's column.
        receiver, owner, label = (columns.index(arrow[0]), columns.index(arrow[1]), arrow[2])
        head = _fit(label, width - 3)
        if owner > receiver:
            text, style = plain[receiver]
            used = len(text.rstrip())
            plain[receiver] = (text[:used] + " " + "-" * (width - used - 1), style)
            for i in range(receiver + 1, owner):
                plain[i] = ("-" * width, "crossed")
            plain[owner] = (f"> {head}".ljust(width), "crossed")
        else:
            # Stop one short of the receiver's column, so its text does not run into the arrow.
            plain[owner] = ((f"{head} <").ljust(width, "-"), "crossed")
            for i in range(owner + 1, receiver):
                plain[i] = ("-" * width, "crossed")
            text, style = plain[receiver - 1]
            plain[receiver - 1] = (text[:-1] + " ", style)
    parts = [time_text.rjust(TIME_WIDTH), " "]
    for text, style in plain:
        # Paint the text and the arrow separately so that trailing padding stays uncoloured.
        body = text.rstrip(" ")
        parts.append(paint(body, style) + " " * (len(text) - len(body)))
    return "".join(parts).rstrip()


def _summarised(shown: int, coroutines: int, total_rows: int, max_rows: int, width: int,
                words: Words) -> list[str]:
    """The line saying what a summarised timeline leaves out; none when it shows everything."""
    left_out = []
    if shown < coroutines:
        left_out.append(f"{words.lanes} {words.prefix}0-{words.prefix}{shown - 1} of {coroutines}")
    if total_rows > max_rows:
        their = "their " if left_out else ""
        left_out.append(f"the first {max_rows} of {their}{total_rows} rows")
    if not left_out:
        return []
    return textwrap.wrap(
        f"summarised: showing {' and '.join(left_out)}; a small run (say {words.small_run}) shows everything",
        width)


def format_timeline(
    result: RunResult, *, width: int = DEFAULT_WIDTH, colour: bool = False, max_rows: int = MAX_ROWS,
    words: Words = COMPARE_WORDS,
) -> list[str]:
    """The timeline of a recorded run, as lines no longer than `width` (not counting ANSI codes).

    A run with more coroutines than fit, or more events than `max_rows`, is summarised: the first
    coroutines that fit and the first events among them are shown, and a line says what was left out.
    Raises ValueError when `width` cannot hold even one column.
    """
    paint = _Painter(colour)
    config = result.plan.config
    events = result.events
    title = (f"{result.mode} ({result.scenario}): {config.concurrency} {words.lanes} x {config.requests} "
             f"{words.units}, {len(events)} events")
    lines = [paint(_fit(title, width), "head")]
    if not events:
        lines.append("no events were recorded for this run")
        return lines
    # Every column ends with one blank separator; the time column has its own.
    room = width - TIME_WIDTH
    if room < MIN_COLUMN:
        raise ValueError(f"a timeline needs at least {TIME_WIDTH + MIN_COLUMN} columns")
    shown = min(config.concurrency, room // MIN_COLUMN)
    column_width = min(room // shown, MAX_COLUMN)
    columns = list(range(shown))
    visible = [e for e in events if e.coroutine < shown]
    lost = [o for o in result.outcomes if o.verdict is Verdict.LOST and o.step.coroutine < shown]
    total_rows = len(visible) + len(lost)
    lines.extend(_summarised(shown, config.concurrency, total_rows, max_rows, width, words))
    start_ns = events[0].t_ns
    # Microseconds tell the steps of a fast run apart; a run with server latency needs milliseconds.
    unit, divisor = ("us", 1_000) if events[-1].t_ns - start_ns < 10_000_000 else ("ms", 1_000_000)
    header = {c: _Cell(f"{words.prefix}{c}", "head") for c in columns}
    lines.append(_row(f"t ({unit})", header, columns, column_width, paint))
    lines.append(_row("", {c: _Cell("-" * (column_width - 1), "step") for c in columns},
                      columns, column_width, paint))
    for event in visible[:max_rows]:
        arrow = None
        owner = event.owner
        if event.crossed and owner is not None and owner.coroutine != event.coroutine \
                and owner.coroutine < shown:
            arrow = (event.coroutine, owner.coroutine, _name(owner, words))
        cells = {event.coroutine: _cell(event, words)}
        time_text = f"{(event.t_ns - start_ns) / divisor:.1f}"
        lines.append(_row(time_text, cells, columns, column_width, paint, arrow))
    for outcome in lost[: max(0, max_rows - len(visible))]:
        step = outcome.step
        # A stuck call of a check says so (its outcome's error); never answered otherwise.
        label = "stuck" if (outcome.error or "").startswith("stuck") else words.lost
        lines.append(_row("end", {step.coroutine: _Cell(f"{_name(step, words)} {label}", "lost")},
                          columns, column_width, paint))
    if total_rows > max_rows:
        lines.append(f"... {total_rows - max_rows} more rows not shown")
    return lines
