"""The HTML report of recorded runs: ONE self-contained file, readable without JavaScript or network.

Layout: one panel per run (scenario x mode), the panels of a scenario side by side. A panel is an
inline SVG with one swimlane per coroutine on a time axis: each request is a bar from the moment
its coroutine started it to the moment its reply (or exception) came back, darker while the request
was being written, ending in a dot coloured by verdict. Every crossed reply is a red arrow (an SVG
path of class `crossed-arrow`) from the request that received the reply to the request it belonged
to. Below the panels: the summary table, one sentence per run, and throughput as a bar chart.

What is drawn, precisely: a panel draws the first `max_lanes` coroutines of the run and, of each,
its first `max_requests_per_lane` requests ("the drawn requests"; every request of a small run).
It draws ONE red arrow per drawn request whose verdict is crossed, and no other, so the number of
`crossed-arrow` elements in a panel equals the panel's `data-crossed-drawn`, which equals the run's
crossed count whenever the whole run is drawn. An arrow whose owner lies outside the drawn lanes
points down out of the panel and names its owner. Each drawn request is a `g.request` element
carrying `data-request="cX.Y"` and `data-verdict`.

Everything that came from the wire is shown with repr() (control characters escaped), cut to a
sane length, and HTML-escaped. Pure formatting: no asyncio, no I/O.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from sockrace import report
from sockrace.events import Event, EventKind
from sockrace.outcome import RunResult
from sockrace.workload import Step, Verdict

# A lane per coroutine stays legible up to a few dozen; the default run has 100 coroutines x 10
# requests in each of several runs, which drawn in full would make a file of megabytes.
MAX_LANES: Final = 16
MAX_REQUESTS_PER_LANE: Final = 20
# Beyond this many arrows leaving a panel their labels overlap; the arrows' tooltips still name them.
MAX_EXIT_LABELS: Final = 8
# Wire text in tooltips is cut here: a reply line may be up to the line limit (64 KiB).
MAX_DETAIL: Final = 120

_BAR: Final = 8  # the height of a request's bar, in SVG user units

_VERDICT_COLOURS: Final = {
    Verdict.CORRECT: "#2e8b57",
    Verdict.CROSSED: "#d11a1a",
    Verdict.CORRUPTED: "#8e44ad",
    Verdict.ERROR: "#e67e22",
    Verdict.LOST: "#7f8c8d",
}

# The look every sockrace page shares (this report and check_html.py's): text, headings, legend, tables.
PAGE_CSS: Final = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em;
       color: #222; background: #fff; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
h2 { font-size: 1.15em; margin: 1.4em 0 .4em; }
h3 { font-size: 1em; margin: 1em 0 .3em; color: #444; }
.muted { color: #666; }
.legend span { display: inline-block; margin-right: 1.2em; }
.swatch { display: inline-block; width: .9em; height: .9em; border-radius: 50%;
          vertical-align: -.1em; margin-right: .3em; }
svg { display: block; width: 100%; height: auto; }
svg text { font: 10px system-ui, sans-serif; fill: #555; }
table { border-collapse: collapse; }
th, td { padding: .2em .7em; border-bottom: 1px solid #e3e3e3; }
th { text-align: left; background: #f3f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.bad { color: #d11a1a; font-weight: 600; }
"""

_CSS: Final = PAGE_CSS + """
.panels { display: flex; flex-wrap: wrap; gap: 1em; }
.panel { flex: 1 1 420px; max-width: 760px; border: 1px solid #ddd; border-radius: 6px;
         padding: .6em .8em; }
.panel h4 { margin: 0; font-size: 1em; }
.panel p { margin: .2em 0; }
.panel.perfect h4 { color: #2e8b57; }
.panel.broken h4 { color: #d11a1a; }
svg.bars text { font-size: 12px; }
.lane { fill: #f6f7f9; }
.request .writing { fill: #2c5d8f; }
.request .waiting { fill: #9bb8d3; }
.request.lost .waiting { fill: none; stroke: #7f8c8d; stroke-dasharray: 3 2; }
.crossed-arrow { fill: none; stroke: #d11a1a; stroke-width: 1.4; opacity: .85; }
.bars rect.perfect { fill: #2e8b57; }
.bars rect.broken { fill: #d11a1a; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _wire(text: str | bytes | None) -> str:
    """Text from the wire, safe to show: repr() escapes control characters; then cut to a sane size."""
    if text is None:
        return "-"
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    shown = repr(text.rstrip("\r\n"))
    return shown if len(shown) <= MAX_DETAIL else shown[: MAX_DETAIL - 1] + "\u2026"


def _name(step: Step) -> str:
    return f"c{step.coroutine}.{step.index}"


@dataclass(slots=True)
class _Span:
    """The recorded life of one request."""

    step: Step
    start: int | None = None
    wrote: int | None = None
    end: int | None = None  # REPLY or ERROR
    end_event: Event | None = None


def _spans(events: Sequence[Event]) -> dict[tuple[int, int], _Span]:
    spans: dict[tuple[int, int], _Span] = {}
    for event in events:
        key = (event.step.coroutine, event.step.index)
        span = spans.get(key)
        if span is None:
            span = spans[key] = _Span(event.step)
        if event.kind is EventKind.START:
            span.start = event.t_ns
        elif event.kind is EventKind.WROTE:
            span.wrote = event.t_ns
        elif event.kind in (EventKind.REPLY, EventKind.ERROR):
            span.end, span.end_event = event.t_ns, event
    return spans


def nice_step(span_ns: float, ticks: int = 5) -> float:
    """A round tick interval (1, 2 or 5 times a power of ten) giving about `ticks` ticks."""
    raw = max(span_ns / ticks, 1.0)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def duration(ns: float) -> str:
    """An axis label: milliseconds, or microseconds below one."""
    if ns >= 1_000_000:
        return f"{ns / 1_000_000:g} ms"
    return f"{ns / 1_000:g} \u00b5s"


@dataclass(frozen=True, slots=True)
class LaneGeometry:
    """The sizes of a swimlane SVG, in SVG user units (the SVG scales to the width of its box)."""

    width: int
    left: int  # room for the lane labels
    lane: int  # the height of one lane
    right: int = 14
    top: int = 26  # room for the axis labels
    bottom: int = 6
    bottom_with_exits: int = 26  # room for arrows that leave the drawn lanes, and their labels


# A compare panel: one of several side by side.
_PANEL: Final = LaneGeometry(width=560, left=44, lane=22)


class Swimlanes:
    """The frame of a swimlane SVG, shared by compare's panels (here) and a check's lanes (check_html.py).

    It draws the SVG's opening (its tag and the red arrowhead), the time axis from t0 to t1, one labelled
    lane per row, and the red arrows of crossed replies; it scales a moment to x and a lane to y. What stands
    in the lanes (bars, dots, marks) and the closing </svg> are the caller's.
    """

    def __init__(self, geometry: LaneGeometry, *, lanes: int, t0: int, moments: Iterable[int], exits: int,
                 marker_id: str) -> None:
        """lanes: how many are drawn; t0: the axis' start; moments: what the axis must reach (it ends at the
        latest, after t0 in any case); exits: how many arrows leave the drawn lanes (room is left below)."""
        self.geometry = geometry
        self.lanes = lanes
        self.t0 = t0
        t1 = max(moments, default=t0 + 1)
        self.t1 = t1 if t1 > t0 else t0 + 1
        self.exits = exits
        self.marker_id = marker_id
        self.height = (geometry.top + lanes * geometry.lane
                       + (geometry.bottom_with_exits if exits else geometry.bottom))

    def x(self, t_ns: int) -> float:
        g = self.geometry
        return g.left + (t_ns - self.t0) / (self.t1 - self.t0) * (g.width - g.left - g.right)

    def y(self, lane: int) -> float:
        return self.geometry.top + lane * self.geometry.lane + self.geometry.lane / 2

    def opening(self, aria_label: str, lane_label: str) -> list[str]:
        """The SVG's tag, the arrowhead, the axis and the lanes, each labelled `lane_label` and its number."""
        g = self.geometry
        parts = [
            f'<svg viewBox="0 0 {g.width} {self.height}" role="img" aria-label="{_e(aria_label)}">',
            f'<defs><marker id="{_e(self.marker_id)}" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" '
            'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" fill="#d11a1a"/>'
            "</marker></defs>",
        ]
        parts.extend(self._axis())
        for lane in range(self.lanes):
            top = g.top + lane * g.lane
            parts.append(f'<rect class="lane" x="{g.left}" y="{top + 2}" '
                         f'width="{g.width - g.left - g.right}" height="{g.lane - 4}"/>')
            parts.append(f'<text x="{g.left - 6}" y="{self.y(lane) + 3.5:.1f}" text-anchor="end">'
                         f"{_e(lane_label)}{lane}</text>")
        return parts

    def _axis(self) -> Iterator[str]:
        top = self.geometry.top
        step = nice_step(self.t1 - self.t0)
        bottom = top + self.lanes * self.geometry.lane
        tick = 0.0
        while tick <= self.t1 - self.t0:
            x = self.x(self.t0 + int(tick))
            yield (f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{bottom}" stroke="#e2e2e2"/>'
                   f'<text x="{x:.1f}" y="{top - 8}" text-anchor="middle">{_e(duration(tick))}</text>')
            tick += step

    def arrow(self, x1: float, y1: float, target: tuple[float, float, float] | None, *, data_from: str,
              data_to: str, tip: str, exit_label: str, classes: str = "") -> str:
        """A red arrow (a path of class `crossed-arrow` and `classes`) from (x1, y1) to the target's bar (its
        left and right x, its lane's y) at x1 or the bar's nearest end; with no target (its lane is not drawn)
        down out of the lanes, labelled `exit_label` unless more than MAX_EXIT_LABELS arrows leave."""
        if target is not None:
            low, high, y2 = target
            x2 = min(max(x1, low), high)
            label = ""
        else:
            x2, y2 = x1, float(self.height - 4)
            label = "" if self.exits > MAX_EXIT_LABELS else (
                f'<text x="{x2 + 3:.1f}" y="{y2:.1f}" fill="#d11a1a">{_e(exit_label)}</text>'
            )
        if y1 == y2:  # the same lane: arc above it so that the arrow does not hide the bars
            cx, cy = (x1 + x2) / 2, y1 - self.geometry.lane * 0.9
        else:  # bow sideways, so that arrows between the same lanes stay apart
            cx, cy = (x1 + x2) / 2 + min(abs(y2 - y1) * 0.35, 40), (y1 + y2) / 2
        kind = f"crossed-arrow {classes}" if classes else "crossed-arrow"
        return (f'<path class="{_e(kind)}" data-from="{_e(data_from)}" data-to="{_e(data_to)}" '
                f'd="M{x1:.1f},{y1:.1f} Q{cx:.1f},{cy:.1f} {x2:.1f},{y2:.1f}" '
                f'marker-end="url(#{_e(self.marker_id)})"><title>{_e(tip)}</title></path>{label}')


class _Panel:
    """The swimlane SVG of one run."""

    def __init__(self, result: RunResult, panel_id: str, max_lanes: int, max_per_lane: int) -> None:
        config = result.plan.config
        self.result = result
        self.lanes = min(config.concurrency, max_lanes)
        self.per_lane = min(config.requests, max_per_lane)
        self.drawn = [step for row in result.plan.steps[: self.lanes] for step in row[: self.per_lane]]
        self.outcomes = {(o.step.coroutine, o.step.index): o for o in result.outcomes}
        self.spans = _spans(result.events)
        times = [
            t for step in self.drawn
            if (span := self.spans.get((step.coroutine, step.index))) is not None
            for t in (span.start, span.wrote, span.end) if t is not None
        ]
        exits = sum(
            1 for s in self.drawn
            if (o := self.outcomes[s.coroutine, s.index]).verdict is Verdict.CROSSED
            and o.owner is not None and o.owner.coroutine >= self.lanes
        )
        self.frame = Swimlanes(_PANEL, lanes=self.lanes, t0=result.events[0].t_ns if result.events else 0,
                               moments=times, exits=exits, marker_id=f"{panel_id}-head")

    @property
    def crossed_drawn(self) -> int:
        return sum(1 for s in self.drawn if self.outcomes[s.coroutine, s.index].verdict is Verdict.CROSSED)

    def svg(self) -> str:
        parts = self.frame.opening(f"swimlanes of {self.result.mode}, {self.result.scenario}", "c")
        parts.extend(self._request(step) for step in self.drawn)
        parts.extend(self._arrows())
        parts.append("</svg>")
        return "\n".join(parts)

    def _request(self, step: Step) -> str:
        frame = self.frame
        outcome = self.outcomes[step.coroutine, step.index]
        span = self.spans.get((step.coroutine, step.index), _Span(step))
        verdict = outcome.verdict
        y = frame.y(step.coroutine)
        start = span.start if span.start is not None else frame.t0
        end = span.end if span.end is not None else frame.t1  # lost: runs to the edge
        wrote = span.wrote if span.wrote is not None else start
        note = verdict.value
        if verdict is Verdict.CROSSED and outcome.owner is not None:
            note += f" (the reply to {_name(outcome.owner)})"
        elif verdict is Verdict.ERROR:
            note += f" ({_wire(outcome.error)})"
        title = f"{_name(step)}: sent {_wire(step.line)}, got {_wire(outcome.received)}: {note}"
        x0, xw, x1 = frame.x(start), frame.x(wrote), frame.x(end)
        parts = [
            f'<g class="request {verdict.value}" data-request="{_name(step)}" '
            f'data-verdict="{verdict.value}">',
            f"<title>{_e(title)}</title>",
            f'<rect class="waiting" x="{x0:.1f}" y="{y - _BAR / 4:.1f}" width="{max(x1 - x0, 1):.1f}" '
            f'height="{_BAR / 2:.1f}"/>',
            f'<rect class="writing" x="{x0:.1f}" y="{y - _BAR / 2:.1f}" width="{max(xw - x0, 1.5):.1f}" '
            f'height="{_BAR}"/>',
        ]
        if verdict is not Verdict.LOST:
            parts.append(f'<circle cx="{x1:.1f}" cy="{y:.1f}" r="3.6" fill="{_VERDICT_COLOURS[verdict]}"/>')
        parts.append("</g>")
        return "".join(parts)

    def _arrows(self) -> Iterator[str]:
        """One red arrow per drawn crossed reply: from the receiving request to the request it answers."""
        frame = self.frame
        for step in self.drawn:
            outcome = self.outcomes[step.coroutine, step.index]
            owner = outcome.owner
            if outcome.verdict is not Verdict.CROSSED or owner is None:
                continue
            span = self.spans.get((step.coroutine, step.index), _Span(step))
            x1 = frame.x(span.end if span.end is not None else frame.t1)
            target = None
            if owner.coroutine < self.lanes:  # else its lane is not drawn: the arrow leaves the panel
                bar = self.spans.get((owner.coroutine, owner.index), _Span(owner))
                # Point at the owner's bar at the moment the reply arrived, or its nearest end.
                low = frame.x(bar.start) if bar.start is not None else x1
                high = frame.x(bar.end) if bar.end is not None else frame.x(frame.t1)
                target = (low, high, frame.y(owner.coroutine))
            yield frame.arrow(x1, frame.y(step.coroutine), target, data_from=_name(step),
                              data_to=_name(owner), tip=f"{_name(step)} received the reply to {_name(owner)}",
                              exit_label=_name(owner))

    def html(self) -> str:
        result = self.result
        config = result.plan.config
        total = result.requests
        crossed = result.count(Verdict.CROSSED)
        state = "perfect" if result.perfect else "broken"
        if len(self.drawn) == total:
            drawn = (f"All {total} requests drawn; {crossed} red "
                     f"{'arrow' if crossed == 1 else 'arrows'} = {crossed} crossed "
                     f"{'reply' if crossed == 1 else 'replies'}.")
        else:
            drawn = (f"Drawn: coroutines c0\u2013c{self.lanes - 1} of {config.concurrency}, the first "
                     f"{self.per_lane} requests of each ({len(self.drawn)} of {total}); "
                     f"{self.crossed_drawn} red arrows = the crossed replies among them "
                     f"({crossed} in the whole run).")
        body = (self.svg() if result.events else
                '<p class="muted">This run was not recorded, so there is no timeline to draw.</p>')
        return (
            f'<section class="panel {state}" data-mode="{_e(result.mode)}" '
            f'data-scenario="{_e(result.scenario)}" data-requests="{total}" '
            f'data-requests-drawn="{len(self.drawn)}" data-crossed="{crossed}" '
            f'data-crossed-drawn="{self.crossed_drawn}">\n'
            f"<h4>{_e(result.mode)}</h4>\n<p>{_e(report.sentence(result))}</p>\n{body}\n"
            f'<p class="muted">{_e(drawn)}</p>\n</section>'
        )


def _legend() -> str:
    items = [
        '<span class="swatch" style="background:#2c5d8f;border-radius:0"></span>started, until written '
        "(includes any wait for a lock)",
        '<span class="swatch" style="background:#9bb8d3;border-radius:0"></span>waiting for the reply',
        *(f'<span class="swatch" style="background:{colour}"></span>reply: {_e(verdict.value)}'
          for verdict, colour in _VERDICT_COLOURS.items() if verdict is not Verdict.LOST),
        '<span style="color:#d11a1a;font-weight:600">&#8594;</span> a crossed reply, drawn from the '
        "request that received it to the request it belonged to",
    ]
    return '<p class="legend">' + "".join(f"<span>{item}</span>" for item in items) + "</p>"


def _table(results: Sequence[RunResult]) -> str:
    bad_columns = {"crossed", "corrupted", "errors", "lost"}
    head = "".join(f"<th>{_e(c)}</th>" for c in report.COLUMNS)
    rows = []
    for row in report.table_rows(results):
        cells = []
        for column, cell in zip(report.COLUMNS, row, strict=True):
            classes = [] if column in ("scenario", "mode") else ["num"]
            if column in bad_columns and cell not in ("0", ""):
                classes.append("bad")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{_e(cell)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _throughput(results: Sequence[RunResult]) -> str:
    label_width, bar_width, row = 230, 300, 22
    best = max((r.req_per_s for r in results), default=0.0) or 1.0
    height = row * len(results) + 6
    total_width = label_width + bar_width + 110  # room after the longest bar for its figure
    parts = [f'<svg class="bars" viewBox="0 0 {total_width} {height}" style="max-width:{total_width}px" '
             'role="img" aria-label="throughput per run">']
    for i, result in enumerate(results):
        y = 3 + i * row
        width = result.req_per_s / best * bar_width
        state = "perfect" if result.perfect else "broken"
        parts.append(
            f'<text x="{label_width - 8}" y="{y + 14}" text-anchor="end">'
            f"{_e(result.scenario)} / {_e(result.mode)}</text>"
            f'<rect class="{state}" x="{label_width}" y="{y + 3}" width="{max(width, 1):.1f}" '
            f'height="{row - 8}"><title>{_e(f"{result.req_per_s:,.0f} requests per second")}</title></rect>'
            f'<text x="{label_width + max(width, 1) + 6:.1f}" y="{y + 14}">'
            f"{result.req_per_s:,.0f} req/s</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render(
    results: Sequence[RunResult],
    *,
    max_lanes: int = MAX_LANES,
    max_requests_per_lane: int = MAX_REQUESTS_PER_LANE,
) -> str:
    """The whole report as one HTML document (see the module docstring for what is drawn).

    Raises ValueError when there is no result to report or a limit is below 1.
    """
    if not results:
        raise ValueError("no runs to report")
    if max_lanes < 1 or max_requests_per_lane < 1:
        raise ValueError("max_lanes and max_requests_per_lane must be at least 1")
    config = results[0].plan.config
    scenarios: dict[str, list[RunResult]] = {}
    for result in results:
        scenarios.setdefault(result.scenario, []).append(result)
    sections = []
    for s, (scenario, runs) in enumerate(scenarios.items()):
        panels = "\n".join(
            _Panel(run, f"p{s}-{m}", max_lanes, max_requests_per_lane).html() for m, run in enumerate(runs)
        )
        sections.append(f"<h3>{_e(scenario)}</h3>\n<div class=\"panels\">\n{panels}\n</div>")
    title = (f"sockrace: {config.concurrency} coroutines x {config.requests} requests over one connection "
             f"(seed {config.seed})")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        '<p class="muted">Each lane is one coroutine sharing the connection; time runs left to right '
        "from the run's first event. Hover a bar for what was sent and received.</p>",
        _legend(),
        *sections,
        "<h2>Summary</h2>",
        _table(results),
        "<ul>" + "".join(f"<li>{_e(report.sentence(r))}</li>" for r in results) + "</ul>",
        "<h2>Throughput</h2>",
        '<p class="muted">Requests per second of each run (green: every reply correct; red: not).</p>',
        _throughput(results),
        "</body></html>",
        "",
    ])
