"""The HTML page of a check run (check_html.render_check): one lane per task, a bar per call, an arrow per
crossed call, a mark per cut, the story and the replay command, everything from the user's code escaped.

Runs are made by `hammer` with in-process fake clients (no network), or built from records when a test
needs exact times."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest

from helpers import HeldReplies, decision, value
from sockrace.check import HammerResult, hammer
from sockrace.check.decisions import CallDecision, Decisions, Interrupt, draw
from sockrace.check.oracle import MAX_QUOTED, CallRecord, CallVerdict, End, judge
from sockrace.check_html import MAX_FAILING_LISTED, render_check

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

HEADING = "sockrace check examples/x.py:naive: 4 tasks x 5 calls, seed 3, through a proxy to 127.0.0.1:7777"
FAULTS = "delay 1-5 ms, split"
REPLAY = "sockrace check examples/x.py:naive --upstream 127.0.0.1:7777 --seed 3"
# compare's words for what a check calls a task, a call and its verdicts: none belongs on a check's page.
COMPARE_WORDS = ("coroutine", "request", "garbled", "corrupted", "lost", "dropped")
DEADLINE_S = 10.0  # a run's bound where something else ends it much sooner


@dataclass
class Mark:
    """An element of the page a test looks at: its attributes, and its tooltip."""

    attrs: dict[str, str]
    classes: list[str]
    title: str = ""
    bar: dict[str, str] = field(default_factory=dict)  # a call's bar (rect.bar); a cut's hit area (rect.hit)


class PageParser(HTMLParser):
    """The calls, cuts and arrows of a check's page, its lanes, tables and text, and anything that could
    make the file fetch something or run code."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.calls: dict[int, Mark] = {}
        self.cuts: dict[int, Mark] = {}
        self.arrows: list[Mark] = []
        self.lanes: list[dict[str, str]] = []
        self.section: dict[str, str] = {}
        self.summary: dict[str, str] = {}
        self.failing_rows = 0
        self.tags: Counter[str] = Counter()
        self.references: list[str] = []
        self.text: list[str] = []
        self.title_tag = ""
        self._verdict: str | None = None  # the verdict of the summary's cell being read
        self._current: Mark | None = None  # the element a <title> inside the SVG belongs to
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        self.tags[tag] += 1
        self.references += [v for k, v in a.items() if k in ("src", "href") or k.startswith("on")]
        self._in.append(tag)
        if tag == "g" and "call" in classes:
            self._current = self.calls[int(a["data-call"])] = Mark(a, classes)
        elif tag == "g" and "cut" in classes:
            self._current = self.cuts[int(a["data-call"])] = Mark(a, classes)
        elif "crossed-arrow" in classes:
            self._current = Mark(a, classes)
            self.arrows.append(self._current)
        elif tag == "rect" and ("bar" in classes or "hit" in classes) and self._current is not None:
            self._current.bar = a
        elif tag == "rect" and "lane" in classes:
            self.lanes.append(a)
        elif tag == "section" and "lanes" in classes:
            self.section = a
        elif tag == "td" and "data-verdict" in a:
            self._verdict = a["data-verdict"]
        elif tag == "tr" and "data-call" in a:
            self.failing_rows += 1

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            self._in.pop()
        if tag in ("g", "path"):
            self._current = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        where = self._in[-1] if self._in else ""
        if where == "title" and "svg" in self._in and self._current is not None:
            self._current.title += data
        elif where == "title":
            self.title_tag += data
        elif where == "td" and self._verdict is not None:
            self.summary[self._verdict] = data
            self._verdict = None

    @property
    def all_text(self) -> str:
        return " ".join(self.text)


def parse(document: str) -> PageParser:
    parser = PageParser()
    parser.feed(document)
    parser.close()
    return parser


def page(result: HammerResult, story: str | None = None, **limits: int) -> str:
    told = result.explain() if story is None else story
    return render_check(result, heading=HEADING, faults=FAULTS, story=told, replay=REPLAY, **limits)


async def leaked_run() -> HammerResult:
    """Call 0 gives up on its deadline at 1 ms and call 1 on task.cancel() at 1 ms, both waiting for their
    replies; calls 2 and 3 then get those replies, and call 4 gets call 2's."""
    held = HeldReplies(release_on=2)
    lane = (decision(0, 0, 0, Interrupt.DEADLINE, 1.0), decision(1, 0, 1, Interrupt.CANCEL, 1.0),
            decision(2, 0, 2), decision(3, 0, 3), decision(4, 0, 4))
    return await hammer(held.call, value, replay=Decisions(seed=0, lanes=(lane,), calibrate=False))


def built(lanes: tuple[tuple[CallDecision, ...], ...], records: list[CallRecord]) -> HammerResult:
    """A run built from records, judged as hammer judges them: exact times for the tests of geometry."""
    decisions = Decisions(seed=0, lanes=lanes, calibrate=False)
    outcomes = tuple(judge(decisions, records, [value(i) for i in range(len(records))]))
    return HammerResult("built", outcomes, decisions, elapsed_s=0.02)


class FakeWire:
    """A wire on which nothing moves and the server owes nothing: a call still waiting is stuck."""

    def server_owes(self) -> bool:
        return False

    def arrivals(self) -> int:
        return 0


# ------------------------------------------------------------------------------------------ crossings


async def test_a_leaked_reply_is_an_arrow_to_the_call_cut_short_which_is_ringed() -> None:
    result = await leaked_run()
    crossed = CallVerdict.CROSSED
    verdicts = [o.verdict for o in result.outcomes]
    assert verdicts == [CallVerdict.TIMEOUT, CallVerdict.CANCELLED, *[crossed] * 3]
    report = parse(page(result))

    assert len(report.arrows) == result.crossed == 3
    arrows = {(int(a.attrs["data-from"]), int(a.attrs["data-to"])) for a in report.arrows}
    assert arrows == {(2, 0), (3, 1), (4, 2)}
    assert report.section["data-crossed-drawn"] == report.section["data-crossed"] == "3"
    leaked = {i for i, call in report.calls.items() if call.attrs.get("data-leaked") == "true"}
    assert leaked == {0, 1}  # call 2's value went to call 4 too, but call 2 was not cut short
    assert "leaked" in report.calls[0].classes
    # The story tells the first crossing: its arrow is the bold one.
    first = result.first_crossed
    assert first is not None
    assert [a.attrs["data-from"] for a in report.arrows if "first" in a.classes] == [str(first.index)]
    assert report.calls[0].title.endswith("timeout; its reply was returned to call 2")
    assert "returned 'v0' after " in report.calls[2].title
    leak = "the value call 0 expects (that call had been cut short: its reply leaked)"
    assert leak in report.calls[2].title
    text = report.all_text
    assert result.explain() in text
    assert REPLAY in text
    assert f"Proxy faults: {FAULTS}" in text
    assert "failed: 3 crossed calls" in text


async def test_the_cuts_are_marked_by_kind_with_their_moments() -> None:
    result = await leaked_run()
    report = parse(page(result))

    assert set(report.cuts) == {0, 1}
    deadline, cancel = report.cuts[0], report.cuts[1]
    assert (deadline.attrs["data-cut"], cancel.attrs["data-cut"]) == ("deadline", "cancel")
    assert "deadline" in deadline.classes
    assert "cancel" in cancel.classes
    assert deadline.title == "call 0: deadline at 1.0 ms after it started"
    assert cancel.title == "call 1: task.cancel() at 1.0 ms after it started"
    assert "unreached" not in deadline.classes + cancel.classes  # both fired: the calls waited on
    assert report.section["data-cuts-drawn"] == "2"


async def test_a_seeded_run_gets_one_cut_mark_per_call_under_a_deadline_or_task_cancel() -> None:
    never = asyncio.Event()

    async def call(i: int) -> str:
        await never.wait()
        return value(i)

    result = await hammer(call, value, tasks=2, calls=3, timeout_ms=(1, 2), cancel_fraction=0.5, seed=1)
    kinds = {o.index: o.decision.interrupt for o in result.outcomes}
    assert set(kinds.values()) == {Interrupt.DEADLINE, Interrupt.CANCEL}  # seed 1 draws both
    report = parse(page(result))

    assert len(report.cuts) == result.calls == 6
    for outcome in result.outcomes:
        cut = report.cuts[outcome.index]
        deadline = outcome.decision.interrupt is Interrupt.DEADLINE
        assert cut.attrs["data-cut"] == ("deadline" if deadline else "cancel")
        words = "deadline" if deadline else "task.cancel()"
        at_ms = outcome.decision.at_ms
        assert cut.title == f"call {outcome.index}: {words} at {at_ms:.1f} ms after it started"
        assert outcome.verdict is (CallVerdict.TIMEOUT if deadline else CallVerdict.CANCELLED)
    assert report.arrows == []


def test_a_cut_sits_at_start_plus_at_ms_on_its_bar_and_is_faint_when_it_never_fired() -> None:
    ms = 1_000_000
    lanes = (
        (decision(0, 0, 0, Interrupt.DEADLINE, 2.0), decision(1, 0, 1),
         decision(2, 0, 2, Interrupt.CANCEL, 4.0), decision(3, 0, 3, Interrupt.DEADLINE)),
        (decision(4, 1, 0, Interrupt.CANCEL, 1.0),),
    )
    records = [
        CallRecord(0, End.DEADLINE, 0, 3 * ms),
        CallRecord(1, End.RETURNED, 3 * ms, 10 * ms, "v0"),  # call 0's reply
        CallRecord(2, End.RETURNED, 10 * ms, 12 * ms, "v2"),  # returned before its cancel at 14 ms
        CallRecord(3, End.UNFINISHED),  # never started: its moment was never resolved
        CallRecord(4, End.CANCELLED, 1 * ms, 2 * ms + ms // 2),
    ]
    result = built(lanes, records)
    report = parse(page(result))

    assert set(report.calls) == {0, 1, 2, 4}  # a call that never started has no bar
    assert set(report.cuts) == {0, 2, 4}
    for index, at_ms in ((0, 2.0), (2, 4.0), (4, 1.0)):
        record = records[index]
        assert record.started_ns is not None
        assert record.ended_ns is not None
        bar = report.calls[index].bar
        x0, width = float(bar["x"]), float(bar["width"])
        expected = x0 + width * at_ms * ms / (record.ended_ns - record.started_ns)
        cut_x = float(report.cuts[index].bar["x"]) + 4  # the hit area is 8 wide, centred on the mark
        assert cut_x == pytest.approx(expected, abs=0.2)
    assert "unreached" in report.cuts[2].classes
    assert report.cuts[2].title == ("call 2: task.cancel() at 4.0 ms after it started; it never fired: "
                                    "the call had ended after 2.0 ms")
    assert "unreached" not in report.cuts[0].classes + report.cuts[4].classes
    assert [(a.attrs["data-from"], a.attrs["data-to"]) for a in report.arrows] == [("1", "0")]
    assert "1 drawn call never started and has no bar." in report.all_text


# ------------------------------------------------------------------------------------------ stuck


async def test_a_stuck_call_runs_to_where_the_run_gave_up_on_it() -> None:
    never = asyncio.Event()
    decisions = draw(0, 1, 3, None, 0.0)
    hangs = decisions.lanes[0][1].index  # the task's first call returns, its second hangs, its third never
    # starts

    async def call(i: int) -> str:
        if i == hangs:
            await never.wait()
        return value(i)

    result = await hammer(call, value, replay=decisions, deadline_s=DEADLINE_S, wire=FakeWire())
    stuck = result.outcomes[hangs]
    assert stuck.verdict is CallVerdict.STUCK
    assert stuck.record.started_ns is not None
    assert stuck.record.ended_ns is not None
    report = parse(page(result))

    bar = report.calls[hangs].bar
    lane = report.lanes[0]
    # The run gave up last of all: the stuck bar ends at the right end of the lanes.
    right = float(lane["x"]) + float(lane["width"])
    assert float(bar["x"]) + float(bar["width"]) == pytest.approx(right, abs=0.2)
    waited = (stuck.record.ended_ns - stuck.record.started_ns) / 1e6
    assert f"still waiting {waited:.1f} ms after it started, when the run gave up on it: stuck" in \
        report.calls[hangs].title
    assert report.calls[hangs].attrs["data-verdict"] == "stuck"
    never_started = [o.index for o in result.outcomes if o.record.started_ns is None]
    assert never_started
    assert not set(never_started) & set(report.calls)
    assert f"{len(never_started)} drawn call" in report.all_text
    assert "failed: 1 stuck call" in report.all_text
    assert report.failing_rows == 1
    assert "still waiting when the run gave up on it" in report.all_text
    assert report.summary["stuck"] == "1"


# ------------------------------------------------------------------------------------------ what is shown


class Hostile:
    """A value whose repr() carries markup and a terminal escape."""

    def __repr__(self) -> str:
        return "<script>alert('repr')</script>\x1b[31m\x00"


async def test_everything_from_the_user_s_code_and_the_caller_is_escaped() -> None:
    async def call(i: int) -> object:
        if i == 0:
            return "<script>alert('wrong')</script>"
        if i == 1:
            return Hostile()
        if i == 2:
            raise ValueError('<img src=x onerror="alert(1)">')
        if i == 3:
            return "x" * 10_000
        return value(i)

    result = await hammer(call, value, tasks=1, calls=5, timeout_ms=None)
    assert (result.wrong, result.errors) == (3, 1)
    document = render_check(result, heading=f"<b>{HEADING}</b>", faults="<i>delay</i>",
                            story="<script>alert('story')</script>", replay="sockrace check '<b>&x' \x1b")
    report = parse(document)

    assert report.tags["script"] == report.tags["img"] == report.tags["b"] == report.tags["i"] == 0
    assert report.references == []
    assert "\x1b" not in document
    assert "\x00" not in document
    text = report.all_text
    assert repr("<script>alert('wrong')</script>") in text
    assert "<script>alert('repr')</script>\\x1b[31m\\x00" in text  # the repr, control characters escaped
    assert "ValueError: <img src=x onerror=\"alert(1)\">" in text
    assert "<script>alert('story')</script>" in text
    assert "sockrace check '<b>&x' \\x1b" in text
    assert report.title_tag == f"<b>{HEADING}</b>"
    # A long value is cut to the story's length, in the tooltips and the failing calls' table alike.
    assert "x" * MAX_QUOTED not in text
    assert "'" + "x" * (MAX_QUOTED - 4) + "..." in text
    assert report.failing_rows == 3  # the wrong values, shown without hovering


async def test_the_page_speaks_of_tasks_and_calls_and_draws_no_throughput() -> None:
    runs = [await leaked_run()]
    never = asyncio.Event()
    decisions = draw(0, 2, 4, None, 0.0)
    hangs = decisions.lanes[0][0].index
    fails, wrong = decisions.lanes[1][0].index, decisions.lanes[1][1].index

    async def call(i: int) -> object:
        if i == hangs:  # stuck, and the rest of its task's calls never start
            await never.wait()
        if i == fails:
            raise ConnectionError("peer went away")
        return "nobody's" if i == wrong else value(i)

    runs.append(await hammer(call, value, replay=decisions, deadline_s=DEADLINE_S, wire=FakeWire()))
    assert {o.verdict for run in runs for o in run.outcomes} == set(CallVerdict)  # every word on a page
    for run in runs:
        document = page(run)
        report = parse(document)
        lowered = document.lower()
        assert [word for word in COMPARE_WORDS if word in lowered] == []
        assert "throughput" not in lowered
        assert "req/s" not in lowered
        assert 'class="bars"' not in document
        assert report.title_tag == HEADING
        assert report.tags["h1"] == 1
        assert report.tags["section"] == 1  # one set of lanes, not compare's panels
        assert report.tags["svg"] == 1 + 3  # the lanes, and the legend's icons: a deadline, a cancel, a ring
        assert [report.tags[t] for t in ("script", "link", "img", "iframe")] == [0, 0, 0, 0]
        assert report.references == []
        assert not re.search(r"https?://|@import|url\((?!#)", document)
        counts = {v: int(report.summary[v.value]) for v in CallVerdict}
        assert counts == {v: run.count(v) for v in CallVerdict}
        assert report.tags["pre"] == 1
        assert len(report.lanes) == run.decisions.tasks


async def test_a_passing_run_says_so_and_lists_no_failing_call() -> None:
    result = await hammer(lambda i: asyncio.sleep(0, value(i)), value, tasks=2, calls=2, timeout_ms=None)
    report = parse(page(result))
    assert "passed: no call crossed, returned a wrong value or was stuck" in report.all_text
    assert report.failing_rows == 0
    assert "Failing calls" not in report.all_text
    assert sorted(report.calls) == [0, 1, 2, 3]
    assert {c.attrs["data-verdict"] for c in report.calls.values()} == {"correct"}


# ------------------------------------------------------------------------------------------ bounds


async def test_big_runs_draw_the_first_lanes_and_calls_and_say_what_was_left_out() -> None:
    tasks, calls = 5, 5
    total = tasks * calls

    async def call(i: int) -> str:  # every call returns the next call's value: all of them cross
        await asyncio.sleep(0)
        return value((i + 1) % total)

    result = await hammer(call, value, tasks=tasks, calls=calls, timeout_ms=None)
    assert result.crossed == total
    report = parse(page(result, max_lanes=2, max_calls_per_lane=3))

    drawn = {d.index for lane in result.decisions.lanes[:2] for d in lane[:3]}
    assert set(report.calls) == drawn
    assert len(report.lanes) == 2
    assert {int(a.attrs["data-from"]) for a in report.arrows} == drawn  # one arrow per drawn crossed call
    assert report.section["data-crossed-drawn"] == "6"
    assert report.section["data-crossed"] == str(total)
    note = (f"Drawn: tasks 0\u20131 of {tasks}, the first 3 calls of each (6 of {total}); 6 red arrows = the "
            f"crossed calls among them ({total} in the whole run)")
    assert note in report.all_text
    # An arrow whose target has no bar leaves the lanes downwards, labelled with the call it points at.
    outside = [a.attrs["data-to"] for a in report.arrows if int(a.attrs["data-to"]) not in drawn]
    assert outside
    labels = [t.strip() for t in report.text]
    assert all(f"call {target}" in labels for target in outside)
    # The failing calls' table stops at its bound and says so.
    assert report.failing_rows == MAX_FAILING_LISTED
    assert f"The first {MAX_FAILING_LISTED} of {total} failing calls." in report.all_text


async def test_a_fully_drawn_default_size_run_has_as_many_arrows_as_crossed_calls() -> None:
    decisions = draw(3, 10, 20, None, 0.0)  # the default check's size

    async def call(i: int) -> str:  # every third call returns its neighbour's value
        await asyncio.sleep(0)
        return value(i + 1 if i % 3 == 0 and i + 1 < decisions.total else i)

    result = await hammer(call, value, replay=decisions)
    report = parse(page(result))
    assert result.crossed > 50
    assert len(report.arrows) == result.crossed
    assert len(report.calls) == result.calls == 200
    note = f"All 200 calls drawn; {result.crossed} red arrows = {result.crossed} crossed calls"
    assert note in report.all_text


def test_limits_below_one_are_refused() -> None:
    result = built(((decision(0, 0, 0),),), [CallRecord(0, End.RETURNED, 0, 1000, "v0")])
    with pytest.raises(ValueError, match="at least 1"):
        page(result, max_lanes=0)
    with pytest.raises(ValueError, match="at least 1"):
        page(result, max_calls_per_lane=0)
