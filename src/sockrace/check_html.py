"""The HTML page of a `sockrace check` run: ONE self-contained file, readable without JavaScript or network.

From the top: the heading the caller gives (what ran, how big, which seed, through what), whether the
run passed, the proxy's faults, the story of the run (HammerResult.explain()) and the command that
replays it; then one swimlane per task on a time axis that starts at the run's first call; then the
count of every verdict, and the failing calls with their values.

What is drawn, precisely: the first `max_lanes` tasks and, of each, its first `max_calls_per_lane`
calls in the order the task made them ("the drawn calls"; every call of a default run). A drawn call
that started is a `g.call` element carrying `data-call` (its index), `data-task` and `data-verdict`:
a bar from its start to its end ending in a dot coloured by its verdict. A stuck call's end is where
the run gave up on it; an unfinished call's bar runs to the last moment the run recorded; a call
that never started has no bar. Each drawn crossed call gets ONE red arrow (a path of class
`crossed-arrow`, `data-from` and `data-to` call indexes) from the moment it returned to the bar of the
call whose value it got, so that a fully drawn run has exactly `result.crossed` arrows; the one the
story tells (result.first_crossed) is bolder, of class `first` too; an arrow whose target is not drawn
points down out of the lanes and names it. A call whose reply leaked (cut short,
its value then returned to another call) is ringed in red and carries `data-leaked="true"`.

The cuts: each drawn call that started under a deadline or a task.cancel() with a resolved moment gets
ONE mark (a `g.cut` with `data-call` and `data-cut` "deadline" or "cancel") at its start + at_ms: a
capped vertical line for a deadline, a cross for task.cancel(), faint when the call had already ended
by then (the cut never fired). Its tooltip says "deadline at 1.2 ms" or "task.cancel() at 0.8 ms".

Everything from the user's code (values, expected values, error messages) and every text the caller
passes is shown with control characters escaped and HTML-escaped, values with repr() cut to the
story's length (oracle.quote), error messages cut to MAX_TEXT. Pure formatting: no asyncio, no I/O.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Final

from sockrace.check.decisions import Interrupt
from sockrace.check.oracle import FAILING, CallOutcome, CallVerdict, quote
from sockrace.check.result import HammerResult
from sockrace.html_report import PAGE_CSS, LaneGeometry, Swimlanes

# The default check (10 tasks x 20 calls) is drawn in full; beyond about this many lanes and bars
# per lane a bar gets too thin to hover, and a run of 10 000 tasks would make a file of megabytes.
MAX_LANES: Final = 16
MAX_CALLS_PER_LANE: Final = 20
# An error message is cut here: enough for the exception's type and the start of its message.
MAX_TEXT: Final = 120
# Rows of the failing-calls table: the first few tell the run's story, and a run where every call
# crossed would otherwise bury the page under hundreds of rows that say the same thing.
MAX_FAILING_LISTED: Final = 20

# The lanes span the page (left: room for the labels, "task 15"); sizes in SVG user units.
_GEOMETRY: Final = LaneGeometry(width=960, left=58, lane=24)
_BAR: Final = 8
_DOT: Final = 3.6
_MIN_BAR: Final = 1.5  # a call of a few microseconds in a run of seconds is still a visible sliver
_CUT: Final = 7  # half the height of a cut mark: it stands out above and below the bar
_CROSS: Final = 3.5  # half the width of a task.cancel() cross

# The verdicts in the order the summary lists them: the good one, the client's failures, then the
# ends a client may legitimately answer to being cut short.
_ORDER: Final = (
    CallVerdict.CORRECT, CallVerdict.CROSSED, CallVerdict.WRONG, CallVerdict.STUCK,
    CallVerdict.ERROR, CallVerdict.TIMEOUT, CallVerdict.CANCELLED, CallVerdict.UNFINISHED,
)
_VERDICT_COLOURS: Final = {
    CallVerdict.CORRECT: "#2e8b57",
    CallVerdict.CROSSED: "#d11a1a",
    CallVerdict.WRONG: "#8e44ad",
    CallVerdict.STUCK: "#1c1c1c",
    CallVerdict.ERROR: "#e67e22",
    CallVerdict.TIMEOUT: "#b8860b",
    CallVerdict.CANCELLED: "#2c7fb8",
    CallVerdict.UNFINISHED: "#95a5a6",
}

_CSS: Final = PAGE_CSS + """
.status { font-size: 1.1em; font-weight: 600; margin: .3em 0; }
.status.passed { color: #2e8b57; }
.status.failed { color: #d11a1a; }
.story { max-width: 70em; }
pre.replay { background: #f3f4f6; padding: .5em .8em; border-radius: 4px; overflow-x: auto;
             white-space: pre-wrap; word-break: break-all; }
.legend svg { display: inline-block; width: 14px; height: 14px; vertical-align: -2px; margin-right: .3em; }
.lanes { border: 1px solid #ddd; border-radius: 6px; padding: .6em .8em; }
.lane { fill: #f6f7f9; }
.call .bar { fill-opacity: .45; }
.call.unfinished .bar { fill: none; stroke: #95a5a6; stroke-dasharray: 3 2; }
.leaked-ring { fill: none; stroke: #d11a1a; stroke-width: 1.6; stroke-dasharray: 4 2; }
.cut path { fill: none; stroke-width: 2; stroke-linecap: round; }
.cut.deadline path { stroke: #111; }
.cut.cancel path { stroke: #1f4e8c; }
.cut.unreached { opacity: .35; }
.cut .hit { fill: transparent; }
.crossed-arrow { fill: none; stroke: #d11a1a; stroke-width: 1.4; opacity: .85; }
.crossed-arrow.first { stroke-width: 2.6; opacity: 1; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _printable(text: str) -> str:
    """`text` with every control character (and other unprintable one) escaped as repr() would."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _value(value: object) -> str:
    """A value of the user's code: repr() cut as in the story (never raising), control characters escaped."""
    return _printable(quote(value))


def _text(text: str | None) -> str:
    """A message from the user's code (an exception's), cut to MAX_TEXT."""
    shown = _printable(text or "-")
    return shown if len(shown) <= MAX_TEXT else shown[: MAX_TEXT - 1] + "\u2026"


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _cut_words(outcome: CallOutcome) -> str:
    """The cut of a call in the story's words: "deadline at 1.2 ms" or "task.cancel() at 0.8 ms"."""
    decision = outcome.decision
    kind = "deadline" if decision.interrupt is Interrupt.DEADLINE else "task.cancel()"
    return f"{kind} at {decision.at_ms or 0:.1f} ms"


class _Lanes:
    """The swimlane SVG of a check run: one lane per task."""

    def __init__(self, result: HammerResult, max_lanes: int, max_per_lane: int) -> None:
        decisions = result.decisions
        self.result = result
        self.tasks = decisions.tasks
        self.lanes = min(self.tasks, max_lanes)
        self.per_lane = min(max((len(lane) for lane in decisions.lanes), default=0), max_per_lane)
        self.drawn = [result.outcomes[d.index] for lane in decisions.lanes[: self.lanes]
                      for d in lane[:max_per_lane]]
        self.started = [o for o in self.drawn if o.record.started_ns is not None]
        self.barred = {o.index for o in self.started}
        # Whose value went where: the calls that returned call i's value, for call i's tooltip.
        self.receivers: dict[int, list[int]] = {}
        for outcome in result.outcomes:
            if outcome.verdict is CallVerdict.CROSSED and outcome.owner is not None:
                self.receivers.setdefault(outcome.owner, []).append(outcome.index)
        self.leaked = {o.owner for o in result.outcomes
                       if o.verdict is CallVerdict.CROSSED and o.owner is not None and o.owner_leaked}
        moments = [t for o in result.outcomes
                   for t in (o.record.started_ns, o.record.ended_ns) if t is not None]
        # The axis starts at the run's first call, as the story's "N ms into the run" does.
        t0 = min((o.record.started_ns for o in self.result.outcomes if o.record.started_ns is not None),
                 default=0)
        # Where an unfinished call's bar ends: the last moment the run recorded.
        self.last = max(moments, default=t0)
        ends = [self.end(o) for o in self.started]
        cuts = [t for o in self.started if (t := self.cut_at(o)) is not None]
        self.crossed = [o for o in self.started if o.verdict is CallVerdict.CROSSED and o.owner is not None]
        self.cuts = [o for o in self.started if self.cut_at(o) is not None]
        exits = sum(1 for o in self.crossed if o.owner not in self.barred)
        self.frame = Swimlanes(_GEOMETRY, lanes=self.lanes, t0=t0, moments=[*ends, *cuts], exits=exits,
                               marker_id="check-head")

    def end(self, outcome: CallOutcome) -> int:
        """Where a started call's bar ends: its end, or for a call still running, the run's last moment."""
        ended = outcome.record.ended_ns
        return self.last if ended is None else ended

    @staticmethod
    def cut_at(outcome: CallOutcome) -> int | None:
        """The loop-clock moment a started call was to be cut (start + at_ms); None: it had no cut."""
        decision, started = outcome.decision, outcome.record.started_ns
        if decision.interrupt is Interrupt.NONE or decision.at_ms is None or started is None:
            return None
        return started + round(decision.at_ms * 1e6)

    def svg(self) -> str:
        parts = self.frame.opening("one lane per task, one bar per call", "task ")
        parts.extend(self._call(o) for o in self.started)
        parts.extend(self._cut(o) for o in self.cuts)  # over the bars, so that a bar never hides a cut
        parts.extend(self._arrows())
        parts.append("</svg>")
        return "\n".join(parts)

    def describe(self, outcome: CallOutcome) -> str:
        """A call's tooltip: who made it, what it expects, how it ended, where its value went."""
        decision, record, verdict = outcome.decision, outcome.record, outcome.verdict
        head = (f"call {outcome.index} (task {decision.task}, its call {decision.position + 1}): "
                f"expects {_value(outcome.expected)}")
        took = _ms(self.end(outcome) - (record.started_ns or 0))
        if verdict is CallVerdict.CORRECT:
            body = f"returned it after {took}"
        elif verdict is CallVerdict.CROSSED:
            body = f"returned {_value(outcome.value)} after {took}, the value call {outcome.owner} expects"
            if outcome.owner_leaked:
                body += " (that call had been cut short: its reply leaked)"
        elif verdict is CallVerdict.WRONG:
            body = f"returned {_value(outcome.value)} after {took}, a value no call of the run expects"
        elif verdict is CallVerdict.ERROR:
            body = f"raised {_text(record.error)} after {took}"
        elif verdict in (CallVerdict.TIMEOUT, CallVerdict.CANCELLED):
            body = f"cut by its {_cut_words(outcome)}, it ended {took} after it started"
        elif verdict is CallVerdict.STUCK:
            body = f"still waiting {took} after it started, when the run gave up on it"
        else:
            body = "still running when the run ended" if record.started_ns is not None else "never started"
        text = f"{head}: {body}: {verdict.value}"
        if (receivers := self.receivers.get(outcome.index)) is not None:
            names = ", ".join(f"call {i}" for i in receivers)
            text += f"; its {'reply' if outcome.index in self.leaked else 'value'} was returned to {names}"
        return text

    def _call(self, outcome: CallOutcome) -> str:
        verdict, task = outcome.verdict, outcome.decision.task
        frame = self.frame
        x0, x1 = frame.x(outcome.record.started_ns or frame.t0), frame.x(self.end(outcome))
        width, y = max(x1 - x0, _MIN_BAR), frame.y(task)
        leaked = outcome.index in self.leaked
        marked = (" leaked", ' data-leaked="true"') if leaked else ("", "")
        parts = [
            f'<g class="call {verdict.value}{marked[0]}" data-call="{outcome.index}" '
            f'data-task="{task}" data-verdict="{verdict.value}"{marked[1]}>',
            f"<title>{_e(self.describe(outcome))}</title>",
        ]
        if leaked:
            parts.append(f'<rect class="leaked-ring" x="{x0 - 3:.1f}" y="{y - _BAR / 2 - 3:.1f}" '
                         f'width="{width + 6:.1f}" height="{_BAR + 6}" rx="3"/>')
        parts.append(f'<rect class="bar" x="{x0:.1f}" y="{y - _BAR / 2:.1f}" width="{width:.1f}" '
                     f'height="{_BAR}" fill="{_VERDICT_COLOURS[verdict]}"/>')
        if verdict is not CallVerdict.UNFINISHED:  # it has no end to mark
            parts.append(f'<circle cx="{x1:.1f}" cy="{y:.1f}" r="{_DOT}" '
                         f'fill="{_VERDICT_COLOURS[verdict]}"/>')
        parts.append("</g>")
        return "".join(parts)

    def _cut(self, outcome: CallOutcome) -> str:
        at = self.cut_at(outcome)
        assert at is not None  # only calls in self.cuts are drawn
        decision, record = outcome.decision, outcome.record
        ended = record.ended_ns
        x, y = self.frame.x(at), self.frame.y(decision.task)
        kind = "deadline" if decision.interrupt is Interrupt.DEADLINE else "cancel"
        # The verdict says whether the cut fired; times only tell for a call that ended otherwise.
        fired = CallVerdict.TIMEOUT if kind == "deadline" else CallVerdict.CANCELLED
        reached = outcome.verdict is fired or ended is None or at <= ended
        tip = f"call {outcome.index}: {_cut_words(outcome)} after it started"
        if not reached:
            took = _ms((ended or 0) - (record.started_ns or 0))
            tip += f"; it never fired: the call had ended after {took}"
        if kind == "deadline":  # a capped line: a wall the call ran into
            shape = f"M{x:.1f},{y - _CUT:.1f} V{y + _CUT:.1f} M{x - 3:.1f},{y - _CUT:.1f} H{x + 3:.1f}"
        else:  # a cross: cancelled from outside
            shape = (f"M{x - _CROSS:.1f},{y - _CROSS:.1f} L{x + _CROSS:.1f},{y + _CROSS:.1f} "
                     f"M{x - _CROSS:.1f},{y + _CROSS:.1f} L{x + _CROSS:.1f},{y - _CROSS:.1f}")
        return (f'<g class="cut {kind}{"" if reached else " unreached"}" data-call="{outcome.index}" '
                f'data-cut="{kind}" data-at-ms="{decision.at_ms}"><title>{_e(tip)}</title>'
                f'<rect class="hit" x="{x - 4:.1f}" y="{y - _CUT:.1f}" width="8" height="{2 * _CUT}"/>'
                f'<path d="{shape}"/></g>')

    def _arrows(self) -> Iterator[str]:
        """One red arrow per drawn crossed call: from when it returned to the call whose value it got."""
        frame, outcomes = self.frame, self.result.outcomes
        # The crossing the story tells (the first returned) is drawn bolder: where to start reading.
        first = self.result.first_crossed
        for outcome in self.crossed:
            owner = outcome.owner
            assert owner is not None  # self.crossed holds only calls with an owner
            x1 = frame.x(self.end(outcome))
            target = None
            if owner in self.barred:  # else the owner has no bar drawn: the arrow leaves the lanes
                bar = outcomes[owner]
                # Point at the owner's bar at the moment the value was returned, or its nearest end.
                low, high = frame.x(bar.record.started_ns or frame.t0), frame.x(self.end(bar))
                target = (low, high, frame.y(bar.decision.task))
            leaked = " (its reply leaked: that call had been cut short)" if outcome.owner_leaked else ""
            tip = (f"call {outcome.index} returned {_value(outcome.value)}, the value call {owner} "
                   f"expects{leaked}")
            bold = "first" if first is not None and outcome.index == first.index else ""
            yield frame.arrow(x1, frame.y(outcome.decision.task), target, data_from=str(outcome.index),
                              data_to=str(owner), tip=tip, exit_label=f"call {owner}", classes=bold)

    def html(self) -> str:
        total, crossed = self.result.calls, self.result.crossed
        cuts = _plural(len(self.cuts), "cut mark", "cut marks")
        arrows = _plural(len(self.crossed), "red arrow", "red arrows")
        if len(self.drawn) == total:
            note = (f"All {_plural(total, 'call', 'calls')} drawn; {arrows} = "
                    f"{_plural(crossed, 'crossed call', 'crossed calls')}; "
                    f"{cuts} = the calls that ran under a deadline or task.cancel().")
        else:
            note = (f"Drawn: tasks 0\u2013{self.lanes - 1} of {self.tasks}, the first {self.per_lane} calls "
                    f"of each ({len(self.drawn)} of {total}); {arrows} = the crossed calls among them "
                    f"({crossed} in the whole run); {cuts} = the drawn calls that ran under a deadline or "
                    "task.cancel().")
        if (never := len(self.drawn) - len(self.started)) > 0:
            note += (" 1 drawn call never started and has no bar." if never == 1
                     else f" {never} drawn calls never started and have no bar.")
        return (
            f'<section class="lanes" data-calls="{total}" data-calls-drawn="{len(self.drawn)}" '
            f'data-crossed="{crossed}" data-crossed-drawn="{len(self.crossed)}" '
            f'data-cuts-drawn="{len(self.cuts)}">\n{self.svg()}\n<p class="muted">{_e(note)}</p>\n</section>'
        )


def _status(result: HammerResult) -> str:
    if result.ok:
        return "passed: no call crossed, returned a wrong value or was stuck"
    failures = [_plural(result.count(v), f"{v.value} call", f"{v.value} calls")
                for v in _ORDER if v in FAILING and result.count(v)]
    return "failed: " + ", ".join(failures)


def _legend() -> str:
    deadline = ('<svg viewBox="0 0 14 14" aria-hidden="true"><path d="M7,0 V14 M4,0 H10" stroke="#111" '
                'stroke-width="2" fill="none"/></svg>')
    cancel = ('<svg viewBox="0 0 14 14" aria-hidden="true"><path d="M3,3 L11,11 M3,11 L11,3" '
              'stroke="#1f4e8c" stroke-width="2" fill="none"/></svg>')
    ring = ('<svg viewBox="0 0 14 14" aria-hidden="true"><rect x="1" y="3" width="12" height="8" rx="2" '
            'fill="none" stroke="#d11a1a" stroke-width="1.6" stroke-dasharray="4 2"/></svg>')
    items = [
        *(f'<span class="swatch" style="background:{_VERDICT_COLOURS[v]}"></span>{_e(v.value)}'
          for v in _ORDER),
        f"{deadline}the call's deadline (asyncio.timeout)",
        f"{cancel}task.cancel() of the call",
        f"{ring}a call cut short whose reply leaked to another call",
        '<span style="color:#d11a1a;font-weight:600">&#8594;</span> a crossed call, drawn from the moment '
        "it returned to the call whose value it got",
    ]
    return '<p class="legend">' + "".join(f"<span>{item}</span>" for item in items) + "</p>"


def _table(result: HammerResult) -> str:
    head = "<th>calls</th>" + "".join(f"<th>{_e(v.value)}</th>" for v in _ORDER)
    cells = [f'<td class="num">{result.calls}</td>']
    for verdict in _ORDER:
        count = result.count(verdict)
        bad = " bad" if verdict in FAILING and count else ""
        cells.append(f'<td class="num{bad}" data-verdict="{verdict.value}">{count}</td>')
    return (f'<table class="summary"><thead><tr>{head}</tr></thead>'
            f'<tbody><tr>{"".join(cells)}</tr></tbody></table>')


def _facts(result: HammerResult) -> str:
    facts = [f"The run took {result.elapsed_s:.2f} s."]
    if result.error_types:
        kinds = ", ".join(f"{_text(kind)} {count}" for kind, count in result.error_types.most_common())
        facts.append(f"Errors by type: {kinds}.")
    return f'<p class="muted">{_e(" ".join(facts))}</p>'


def _failing(result: HammerResult, t0: int) -> list[str]:
    """The failing calls, the first to end first, with their values: the rows a tooltip would hide."""
    failing = sorted((o for o in result.outcomes if o.verdict in FAILING),
                     key=lambda o: (o.record.ended_ns is None, o.record.ended_ns or 0, o.index))
    if not failing:
        return []
    rows = []
    for outcome in failing[:MAX_FAILING_LISTED]:
        record, verdict = outcome.record, outcome.verdict
        if verdict is CallVerdict.CROSSED:
            returned = _value(outcome.value)
            note = f"the value call {outcome.owner} expects" + (
                ", whose reply leaked: that call had been cut short" if outcome.owner_leaked else "")
        elif verdict is CallVerdict.WRONG:
            returned, note = _value(outcome.value), "a value no call of the run expects"
        else:
            returned, note = "-", "still waiting when the run gave up on it"
        ended = "-" if record.ended_ns is None else _ms(record.ended_ns - t0)
        cells = [str(outcome.index), str(outcome.decision.task), verdict.value, _value(outcome.expected),
                 returned, ended, note]
        shown = "".join(f"<td>{_e(c)}</td>" for c in cells)
        rows.append(f'<tr data-call="{outcome.index}">{shown}</tr>')
    head = "".join(f"<th>{c}</th>" for c in ("call", "task", "verdict", "expects", "returned",
                                                "ended (into the run)", "why it fails"))
    parts = ["<h2>Failing calls</h2>",
             f'<table class="failing"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>']
    if len(failing) > MAX_FAILING_LISTED:
        parts.append(f'<p class="muted">The first {MAX_FAILING_LISTED} of {len(failing)} failing calls.</p>')
    return parts


def render_check(
    result: HammerResult,
    *,
    heading: str,
    faults: str,
    story: str,
    replay: str,
    max_lanes: int = MAX_LANES,
    max_calls_per_lane: int = MAX_CALLS_PER_LANE,
) -> str:
    """The page of one check run as one HTML document (see the module docstring for what is drawn).

    heading: what ran (the page's title too); faults: the proxy's faults in a few words (Faults.describe());
    story: the run in plain words (result.explain()); replay: the command that makes the same run again.
    Raises ValueError when a limit is below 1.
    """
    if max_lanes < 1 or max_calls_per_lane < 1:
        raise ValueError("max_lanes and max_calls_per_lane must be at least 1")
    lanes = _Lanes(result, max_lanes, max_calls_per_lane)
    state = "passed" if result.ok else "failed"
    title = _e(_printable(heading))
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
        f'<p class="status {state}">{_e(_status(result))}</p>',
        f'<p class="faults">Proxy faults: {_e(_printable(faults))}</p>',
        "<h2>What happened</h2>",
        f'<p class="story">{_e(_printable(story))}</p>',
        "<h2>Replay</h2>",
        f'<pre class="replay"><code>{_e(_printable(replay))}</code></pre>',
        "<h2>Tasks</h2>",
        '<p class="muted">Each lane is one task sharing the client; each bar one call, from when its task '
        "made it to when it returned, raised or was given up on, ending in a dot coloured by its verdict. "
        "Time runs left to right from the run's first call. Hover a bar, a cut or an arrow for the "
        "details.</p>",
        _legend(),
        lanes.html(),
        "<h2>Summary</h2>",
        _table(result),
        _facts(result),
        *_failing(result, lanes.frame.t0),
        "</body></html>",
        "",
    ])
