from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers import race_in_memory
from sockrace.cli import main
from sockrace.client import STRATEGIES
from sockrace.events import EventKind, Recorder
from sockrace.html_report import render
from sockrace.outcome import Outcome, RunResult
from sockrace.workload import Plan, Verdict, WorkloadConfig

SMALL = WorkloadConfig(concurrency=4, requests=3, seed=1)


@dataclass
class Panel:
    mode: str
    scenario: str
    attrs: dict[str, str]
    requests: list[str] = field(default_factory=list)
    verdicts: dict[str, str] = field(default_factory=dict)
    arrows: list[tuple[str, str]] = field(default_factory=list)  # (from, to)


class ReportParser(HTMLParser):
    """What a test needs from the report: the panels, their requests and red arrows, and anything
    that could make the file fetch something or run code."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.panels: list[Panel] = []
        self.tags: Counter[str] = Counter()
        self.references: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags[tag] += 1
        self.references += [v for k, v in a.items() if k in ("src", "href") or k.startswith("on")]
        classes = a.get("class", "").split()
        if tag == "section" and "panel" in classes:
            self.panels.append(Panel(a["data-mode"], a["data-scenario"], a))
        elif "data-request" in a:
            self.panels[-1].requests.append(a["data-request"])
            self.panels[-1].verdicts[a["data-request"]] = a["data-verdict"]
        if "crossed-arrow" in classes:
            self.panels[-1].arrows.append((a["data-from"], a["data-to"]))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(document: str) -> ReportParser:
    parser = ReportParser()
    parser.feed(document)
    parser.close()
    return parser


def name(step: object) -> str:
    return f"c{step.coroutine}.{step.index}"  # type: ignore[attr-defined]


async def small_runs() -> list[RunResult]:
    """Every mode in both scenarios over the in-memory link: the same figures on every run."""
    results = []
    for scenario, split in (("shared connection", False), ("split writes", True)):
        config = dataclasses.replace(SMALL, split_writes=split)
        for mode in STRATEGIES:
            results.append(await race_in_memory(mode, config, recorder=Recorder(), scenario=scenario))
    return results


@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_every_request_appears_and_red_arrows_equal_the_crossed_count() -> None:
    results = await small_runs()
    report = parse(render(results))

    assert [(p.scenario, p.mode) for p in report.panels] == [(r.scenario, r.mode) for r in results]
    assert sum(r.count(Verdict.CROSSED) for r in results) > 0  # the seed makes the unsafe run cross
    for panel, result in zip(report.panels, results, strict=True):
        expected = [name(o.step) for o in result.outcomes]
        assert sorted(panel.requests) == sorted(expected)  # each request exactly once
        assert panel.verdicts == {name(o.step): o.verdict.value for o in result.outcomes}
        assert len(panel.arrows) == result.count(Verdict.CROSSED)
        assert Counter(panel.arrows) == Counter(
            (name(o.step), name(o.owner)) for o in result.outcomes
            if o.verdict is Verdict.CROSSED and o.owner is not None
        )
        assert panel.attrs["data-crossed"] == str(result.count(Verdict.CROSSED))
    total_arrows = sum(len(p.arrows) for p in report.panels)
    assert total_arrows == sum(r.count(Verdict.CROSSED) for r in results)


@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_the_report_is_self_contained() -> None:
    results = await small_runs()
    document = render(results)
    report = parse(document)

    assert report.tags["script"] == report.tags["link"] == report.tags["img"] == report.tags["iframe"] == 0
    # The only references are to the arrowheads defined inside the same SVG.
    assert report.references == []
    assert not re.search(r"https?://|@import|url\((?!#)", document)
    assert report.tags["style"] == 1
    assert report.tags["svg"] == len(results) + 1  # one per panel, plus the throughput chart
    assert report.tags["table"] == 1


@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_summary_table_and_throughput_bars_cover_every_run() -> None:
    results = await small_runs()
    document = render(results)
    report = parse(document)

    text = " ".join(report.text)
    for result in results:
        assert f"{result.scenario} / {result.mode}" in text  # a bar label
        assert f"{result.req_per_s:,.0f} req/s" in text
    assert report.tags["tr"] == 1 + len(results)
    assert document.count('<rect class="perfect"') == sum(r.perfect for r in results)
    assert document.count('<rect class="broken"') == sum(not r.perfect for r in results)


@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_big_runs_draw_the_first_lanes_and_say_so() -> None:
    result = await race_in_memory("unsafe", SMALL, recorder=Recorder())
    report = parse(render([result], max_lanes=2, max_requests_per_lane=2))
    (panel,) = report.panels

    drawn = {"c0.0", "c0.1", "c1.0", "c1.1"}
    assert set(panel.requests) == drawn
    crossed_drawn = [o for o in result.outcomes if name(o.step) in drawn and o.verdict is Verdict.CROSSED]
    assert len(panel.arrows) == len(crossed_drawn) == int(panel.attrs["data-crossed-drawn"])
    assert panel.attrs["data-requests-drawn"] == "4"
    note = "Drawn: coroutines c0\u2013c1 of 4, the first 2 requests of each (4 of 12)"
    assert note in " ".join(report.text)


def hostile_result() -> RunResult:
    """A run whose reply and error text try to inject markup and terminal escapes."""
    plan = Plan.build(WorkloadConfig(concurrency=2, requests=1))
    first, second = plan.steps[0][0], plan.steps[1][0]
    reply = b"<script>alert('x')</script>\x1b[31m\x00\n"
    error = 'ValueError: <img src=x onerror="alert(1)">'
    recorder = Recorder()
    for step in (first, second):
        recorder.mark(EventKind.START, step)
        recorder.mark(EventKind.WROTE, step)
        recorder.mark(EventKind.READING, step)
    recorder.reply(first, reply)
    recorder.error(second, error)
    outcomes = [
        Outcome(first, Verdict.CORRUPTED, received=reply),
        Outcome(second, Verdict.ERROR, error=error),
    ]
    return RunResult("unsafe", "<b>scenario</b>", plan, outcomes, 0.001, events=recorder.events(outcomes))


def test_everything_from_the_wire_is_escaped() -> None:
    document = render([hostile_result()])
    report = parse(document)

    assert report.tags["script"] == report.tags["img"] == report.tags["b"] == 0
    assert report.references == []
    assert "\x1b" not in document
    assert "\x00" not in document
    text = " ".join(report.text)
    assert "<script>alert('x')</script>" in text  # shown as text, not run
    assert "\\x1b[31m" in text  # control characters shown escaped
    assert '<img src=x onerror="alert(1)">' in text
    assert report.panels[0].scenario == "<b>scenario</b>"


def test_a_report_needs_a_run() -> None:
    with pytest.raises(ValueError, match="no runs to report"):
        render([])


@pytest.mark.timeout(30)
def test_compare_cli_writes_a_report_whose_arrows_match_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "report.html"
    code = main(["compare", "-c", "4", "-n", "3", "--json", "--html", str(path)])
    out, err = capsys.readouterr()

    assert code == 0
    assert err.strip() == f"sockrace: wrote the HTML report to {path}"
    document = json.loads(out)
    report = parse(path.read_text(encoding="utf-8"))
    runs = [(s["name"], m) for s in document["scenarios"] for m in s["modes"]]
    assert [(p.scenario, p.mode) for p in report.panels] == [(s, m["mode"]) for s, m in runs]
    everyone = sorted(f"c{c}.{i}" for c in range(4) for i in range(3))
    for panel, (_, mode) in zip(report.panels, runs, strict=True):
        assert sorted(panel.requests) == everyone
        assert len(panel.arrows) == mode["crossed"]


def test_compare_html_into_a_missing_directory_fails_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nowhere" / "report.html"
    assert main(["compare", "-c", "1", "-n", "1", "--html", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"sockrace: cannot write --html {path}: no such directory\n"


def test_compare_html_onto_a_directory_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", "-c", "1", "-n", "1", "--html", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"sockrace: cannot write --html {tmp_path}: Is a directory\n"
