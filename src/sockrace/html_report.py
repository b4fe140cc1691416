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
from collections.abc import Iterator, Sequence
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

# Panel geometry, in SVG user units (the SVG scales to the panel's width).
_WIDTH: Final = 560
_LEFT: Final = 44  # room for the lane labels
_RIGHT: Final = 14
_TOP: Final = 26  # room for the axis labels
_LANE: Final = 22
_BOTTOM: Final = 6
_BOTTOM_WITH_EXITS: Final = 26  # room for arrows that leave the drawn lanes, and their labels
_BAR: Final = 8

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
    """A round tick interval (1, 2 or 5 times a power of ten) giving about `ticks` ticks (check_html.py's
    axis too)."""
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


class _Panel:
    """The swimlane SVG of one run."""

    def __init__(self, result: RunResult, panel_id: str, max_lanes: int, max_per_lane: int) -> None:
        config = result.plan.config
        self.result = result
        self.id = panel_id
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
        self.t0 = result.events[0].t_ns if result.events else 0
        self.t1 = max(times, default=self.t0 + 1)
        if self.t1 <= self.t0:
            self.t1 = self.t0 + 1
        self.exits = sum(
            1 for s in self.drawn
            if (o := self.outcomes[s.coroutine, s.index]).verdict is Verdict.CROSSED
            and o.owner is not None and o.owner.coroutine >= self.lanes
        )
        self.height = _TOP + self.lanes * _LANE + (_BOTTOM_WITH_EXITS if self.exits else _BOTTOM)

    def x(self, t_ns: int) -> float:
        return _LEFT + (t_ns - self.t0) / (self.t1 - self.t0) * (_WIDTH - _LEFT - _RIGHT)

    def y(self, coroutine: int) -> float:
        return _TOP + coroutine * _LANE + _LANE / 2

    @property
    def crossed_drawn(self) -> int:
        return sum(1 for s in self.drawn if self.outcomes[s.coroutine, s.index].verdict is Verdict.CROSSED)

    def svg(self) -> str:
        parts = [
            f'<svg viewBox="0 0 {_WIDTH} {self.height}" role="img" '
            f'aria-label="swimlanes of {_e(self.result.mode)}, {_e(self.result.scenario)}">',
            f'<defs><marker id="{self.id}-head" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" '
            'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" fill="#d11a1a"/>'
            "</marker></defs>",
        ]
        parts.extend(self._axis())
        for lane in range(self.lanes):
            top = _TOP + lane * _LANE
            parts.append(f'<rect class="lane" x="{_LEFT}" y="{top + 2}" width="{_WIDTH - _LEFT - _RIGHT}" '
                         f'height="{_LANE - 4}"/>')
            parts.append(f'<text x="{_LEFT - 6}" y="{self.y(lane) + 3.5:.1f}" text-anchor="end">'
                         f"c{lane}</text>")
        parts.extend(self._request(step) for step in self.drawn)
        parts.extend(self._arrows())
        parts.append("</svg>")
        return "\n".join(parts)

    def _axis(self) -> Iterator[str]:
        step = nice_step(self.t1 - self.t0)
        bottom = _TOP + self.lanes * _LANE
        tick = 0.0
        while tick <= self.t1 - self.t0:
            x = self.x(self.t0 + int(tick))
            yield (f'<line x1="{x:.1f}" y1="{_TOP - 4}" x2="{x:.1f}" y2="{bottom}" stroke="#e2e2e2"/>'
                   f'<text x="{x:.1f}" y="{_TOP - 8}" text-anchor="middle">{_e(duration(tick))}</text>')
            tick += step

    def _request(self, step: Step) -> str:
        outcome = self.outcomes[step.coroutine, step.index]
        span = self.spans.get((step.coroutine, step.index), _Span(step))
        verdict = outcome.verdict
        y = self.y(step.coroutine)
        start = span.start if span.start is not None else self.t0
        end = span.end if span.end is not None else self.t1  # lost: runs to the edge
        wrote = span.wrote if span.wrote is not None else start
        note = verdict.value
        if verdict is Verdict.CROSSED and outcome.owner is not None:
            note += f" (the reply to {_name(outcome.owner)})"
        elif verdict is Verdict.ERROR:
            note += f" ({_wire(outcome.error)})"
        title = f"{_name(step)}: sent {_wire(step.line)}, got {_wire(outcome.received)}: {note}"
        x0, xw, x1 = self.x(start), self.x(wrote), self.x(end)
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
        for step in self.drawn:
            outcome = self.outcomes[step.coroutine, step.index]
            owner = outcome.owner
            if outcome.verdict is not Verdict.CROSSED or owner is None:
                continue
            span = self.spans.get((step.coroutine, step.index), _Span(step))
            x1 = self.x(span.end if span.end is not None else self.t1)
            y1 = self.y(step.coroutine)
            if owner.coroutine < self.lanes:
                target = self.spans.get((owner.coroutine, owner.index), _Span(owner))
                # Point at the owner's bar at the moment the reply arrived, or its nearest end.
                low = self.x(target.start) if target.start is not None else x1
                high = self.x(target.end) if target.end is not None else self.x(self.t1)
                x2, y2 = min(max(x1, low), high), self.y(owner.coroutine)
                label = ""
            else:  # the owner's lane is not drawn: leave the panel downwards (and name it, if legible)
                x2, y2 = x1, float(self.height - 4)
                label = "" if self.exits > MAX_EXIT_LABELS else (
                    f'<text x="{x2 + 3:.1f}" y="{y2:.1f}" fill="#d11a1a">{_e(_name(owner))}</text>'
                )
            if y1 == y2:  # the same lane: arc above it so that the arrow does not hide the bars
                cx, cy = (x1 + x2) / 2, y1 - _LANE * 0.9
            else:  # bow sideways, so that arrows between the same lanes stay apart
                cx, cy = (x1 + x2) / 2 + min(abs(y2 - y1) * 0.35, 40), (y1 + y2) / 2
            yield (f'<path class="crossed-arrow" data-from="{_name(step)}" data-to="{_name(owner)}" '
                   f'd="M{x1:.1f},{y1:.1f} Q{cx:.1f},{cy:.1f} {x2:.1f},{y2:.1f}" '
                   f'marker-end="url(#{self.id}-head)"><title>'
                   f"{_e(f'{_name(step)} received the reply to {_name(owner)}')}</title></path>{label}")

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
