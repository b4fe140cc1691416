"""hammer and its oracle: seeded decisions, verdicts per call, the explanation, the standard reports,
guest code that raises or hangs, and the four clients of tests/clients.py through FaultProxy."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from clients import CLIENTS, Client, DisconnectOnCancelClient

from helpers import HeldReplies, value
from sockrace import html_report, report, timeline
from sockrace.check import FaultProxy, HammerError, HammerResult, hammer
from sockrace.check.decisions import CallDecision, Decisions, Interrupt, Moments, draw
from sockrace.check.guest import OWN_TIMERS, watching_ctrl_c
from sockrace.check.hammer import (
    MIN_STALL_S,
    MIN_WIRE_QUIET_S,
    STALL_LATENCY_FACTOR,
    TURN_CONFIRM_S,
    WIRE_LATENCY_FACTOR,
    nothing_can_wake,
    stall_bound,
)
from sockrace.check.oracle import CallRecord, CallVerdict, End, Expectations, judge
from sockrace.server import Server, ServerConfig
from sockrace.workload import Verdict

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SEEDS = range(20)
TASKS, CALLS = 4, 5
# The proxy holds every reply this long. A call that holds the connection gives up with its reply on
# the way when its deadline falls within this much of the moment it wrote, and a deadline drawn in
# LEAK_TIMEOUT_MS does so often: at 40 ms a seed leaves no reply behind with odds of about 0.6 ** 20,
# while every seed also draws deadlines long enough to receive a leaked reply (pinned below).
REPLY_DELAY_MS = 40.0
LEAK_TIMEOUT_MS = (1.0, 100.0)
DEADLINE_S = 10.0  # a run's bound in tests where something else should end it much sooner


def _decision(index: int, task: int, position: int, interrupt: Interrupt = Interrupt.NONE,
              at_ms: float | None = None) -> CallDecision:
    return CallDecision(index, task, position, 0, interrupt, 0.0, at_ms)


def one_lane(*decisions: CallDecision) -> Decisions:
    return Decisions(seed=0, lanes=(decisions,), calibrate=False)


async def crossed_run() -> HammerResult:
    """Call 0 gives up after 1 ms while its reply is held; call 1 then gets that reply."""
    held = HeldReplies(release_on=1)
    decisions = one_lane(_decision(0, 0, 0, Interrupt.DEADLINE, 1.0), _decision(1, 0, 1))
    return await hammer(held.call, value, replay=decisions, label="held")


# ------------------------------------------------------------------------------------------ decisions


def test_the_same_seed_draws_the_same_decisions_and_another_seed_others() -> None:
    first = draw(7, 4, 5, (1.0, 9.0), 0.25)
    assert first == draw(7, 4, 5, (1.0, 9.0), 0.25)
    assert first.lanes != draw(8, 4, 5, (1.0, 9.0), 0.25).lanes
    assert sorted(d.index for d in first.by_index()) == list(range(20))
    kinds = {d.interrupt for d in first.by_index()}
    assert kinds == {Interrupt.DEADLINE, Interrupt.CANCEL}
    assert all(d.at_ms is not None and 1.0 <= d.at_ms <= 9.0 for d in first.by_index())


def test_auto_leaves_the_first_round_free_and_half_the_rest_without_a_deadline() -> None:
    decisions = draw(3, 10, 40, "auto", 0.0)
    assert decisions.calibrate
    assert all(lane[0].interrupt is Interrupt.NONE for lane in decisions.lanes)
    rest = [d for lane in decisions.lanes for d in lane[1:]]
    with_deadline = sum(d.interrupt is Interrupt.DEADLINE for d in rest)
    assert 0.4 < with_deadline / len(rest) < 0.6
    assert all(d.at_ms is None for d in rest)  # resolved while running, from the latencies seen


def test_moments_span_the_latencies_seen_lately() -> None:
    moments = Moments(window=3)
    assert moments.at(0.5) == 1.0
    for latency in (100.0, 2.0, 4.0, 6.0):  # 100 falls out of the window
        moments.observe(latency)
    assert moments.at(0.0) == 2.0
    assert moments.at(0.5) == 4.0


# ------------------------------------------------------------------------------------------ the oracle


def _records(*values: object, ends: dict[int, End] | None = None) -> list[CallRecord]:
    ends = ends or {}
    return [CallRecord(i, ends.get(i, End.RETURNED), i * 1000, i * 1000 + 500, v)
            for i, v in enumerate(values)]


def _lane(n: int) -> Decisions:
    return one_lane(*(_decision(i, 0, i) for i in range(n)))


def test_judge_names_whose_value_a_crossed_call_got_and_whether_it_leaked() -> None:
    records = _records(None, "v0", "nobody's", "v3", ends={0: End.DEADLINE})
    outcomes = judge(_lane(4), records, [value(i) for i in range(4)])
    assert [o.verdict for o in outcomes] == [
        CallVerdict.TIMEOUT, CallVerdict.CROSSED, CallVerdict.WRONG, CallVerdict.CORRECT]
    assert (outcomes[1].owner, outcomes[1].owner_leaked) == (0, True)
    assert outcomes[2].owner is None


def test_unhashable_repeated_and_hostile_values_do_not_break_the_oracle() -> None:
    class Hostile:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no comparing me")

        __hash__ = None  # type: ignore[assignment]

    expected: list[object] = [[0], [1], "same", "same", Hostile()]
    records = _records([1], [1], "same", [0], "x")
    outcomes = judge(_lane(5), records, expected)
    assert [o.verdict for o in outcomes] == [
        CallVerdict.CROSSED, CallVerdict.CORRECT, CallVerdict.CORRECT, CallVerdict.CROSSED, CallVerdict.WRONG]
    assert outcomes[0].owner == 1
    assert outcomes[3].owner == 0
    assert Expectations(expected).matches(Hostile()) == []


def test_a_repeated_value_is_credited_to_the_call_that_was_cut_short() -> None:
    records = _records("v", None, "v", "w", ends={1: End.CANCELLED})
    outcomes = judge(_lane(4), records, ["v", "v", "v", "v"])
    assert outcomes[3].verdict is CallVerdict.WRONG
    records = _records("v", None, "w", "v", ends={1: End.CANCELLED})
    outcomes = judge(_lane(4), records, ["v", "v", "v", "w"])
    crossed = outcomes[3]
    assert (crossed.verdict, crossed.owner, crossed.owner_leaked) == (CallVerdict.CROSSED, 1, True)


# ------------------------------------------------------------------------------------------ hammer, in memory


async def test_a_client_that_answers_right_is_all_correct() -> None:
    async def call(i: int) -> str:
        await asyncio.sleep(0)
        return value(i)

    result = await hammer(call, value, tasks=3, calls=4, timeout_ms=None, seed=1)
    assert (result.correct, result.crossed, result.wrong, result.errors, result.timeouts) == (12, 0, 0, 0, 0)
    assert result.ok
    assert result.explain() == "no call returned another call's value: 12 of 12 correct."


async def test_a_reply_left_by_a_call_that_timed_out_is_named_in_the_explanation() -> None:
    result = await crossed_run()
    assert (result.timeouts, result.crossed, result.correct) == (1, 1, 0)
    assert not result.ok
    crossed = result.outcomes[1]
    assert (crossed.owner, crossed.owner_leaked, crossed.value) == (0, True, "v0")
    assert re.fullmatch(
        r"call 0 \(expects 'v0'\) was cancelled by its 1\.0 ms deadline and ended \d+\.\d ms after it "
        r"started; "
        r"its reply 'v0' was returned to call 1 \(expects 'v1', task 0\), which started \d+\.\d ms later\.",
        result.explain())


async def test_task_cancel_at_a_seeded_moment_leaves_the_worker_running() -> None:
    held = HeldReplies(release_on=1)
    decisions = one_lane(_decision(0, 0, 0, Interrupt.CANCEL, 1.0), _decision(1, 0, 1))
    result = await hammer(held.call, value, replay=decisions)
    assert (result.cancelled, result.crossed) == (1, 1)
    assert "was cancelled by task.cancel() at 1.0 ms and ended " in result.explain()


async def test_errors_are_outcomes_by_type_with_their_traceback() -> None:
    async def call(i: int) -> str:
        if i % 2:
            raise ConnectionResetError(f"peer went away during call {i}")
        if i == 2:
            raise TimeoutError("the client's own timeout, not ours")
        return value(i)

    result = await hammer(call, value, tasks=2, calls=3, timeout_ms=None)
    assert result.error_types == {"ConnectionResetError": 3, "TimeoutError": 1}
    assert (result.errors, result.timeouts, result.correct) == (4, 0, 2)
    assert result.ok
    traceback = result.outcomes[1].record.traceback
    assert traceback is not None
    assert "peer went away during call 1" in traceback


async def test_an_exception_whose_message_cannot_be_formatted_is_still_an_error() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    async def call(i: int) -> str:
        raise Unprintable

    result = await hammer(call, value, tasks=1, calls=1, timeout_ms=None)
    assert result.outcomes[0].record.error == "Unprintable: (its message could not be formatted)"


async def test_a_call_that_is_not_awaitable_is_an_error_not_a_crash() -> None:
    def call(i: int) -> Awaitable[object]:
        return i  # type: ignore[return-value]

    result = await hammer(call, value, tasks=1, calls=2, timeout_ms=None)
    assert result.error_types == {"TypeError": 2}


async def test_deadlines_fire_on_calls_that_never_answer() -> None:
    never = asyncio.Event()

    async def call(i: int) -> str:
        await never.wait()
        return value(i)

    result = await hammer(call, value, tasks=2, calls=2, timeout_ms=(1, 2))
    assert result.timeouts == 4
    assert all(o.decision.at_ms is not None for o in result.outcomes)
    standard = result.run_result()
    assert standard.timeouts == 4
    assert all(o.timed_out for o in standard.outcomes)


async def test_a_hanging_call_is_bounded_by_the_run_deadline_and_nothing_is_left_running() -> None:
    never = asyncio.Event()
    before = asyncio.all_tasks()

    async def call(i: int) -> str:
        if i == 3:
            await never.wait()
        return value(i)

    result = await hammer(call, value, tasks=2, calls=3, timeout_ms=None, deadline_s=0.2)
    assert result.deadline_hit
    assert result.unfinished >= 1
    assert result.outcomes[3].verdict is CallVerdict.UNFINISHED
    assert result.ignored_cancel == ()
    assert result.ok  # a run its deadline ended is not the client's failure (no stuck bound was reached)
    assert asyncio.all_tasks() - before == set()
    assert "deadline ended it" in result.explain()


async def test_a_call_that_never_returns_is_stuck_at_the_stall_bound_and_fails_the_run() -> None:
    never = asyncio.Event()
    before = asyncio.all_tasks()

    async def call(i: int) -> str:
        if i == 3:
            await never.wait()
        return value(i)

    decisions = draw(0, 2, 3, None, 0.0)
    [hung_lane] = [lane for lane in decisions.lanes if any(d.index == 3 for d in lane)]
    hung_at = next(d.position for d in hung_lane if d.index == 3)
    not_made = [d.index for d in hung_lane if d.position > hung_at]
    result = await hammer(call, value, replay=decisions, stall_s=0.05, deadline_s=DEADLINE_S)
    assert result.elapsed_s < DEADLINE_S / 2
    assert (result.stalled_s, result.deadline_hit, result.ignored_cancel) == (0.05, False, ())
    assert [o.index for o in result.outcomes if o.verdict is CallVerdict.STUCK] == [3]
    unfinished = sorted(o.index for o in result.outcomes if o.verdict is CallVerdict.UNFINISHED)
    assert unfinished == sorted(not_made)
    assert not result.ok  # a stuck call fails the run as a crossed reply does
    assert result.correct == 6 - 1 - len(unfinished)
    assert result.run_result().count(Verdict.LOST) == 1 + len(unfinished)
    assert asyncio.all_tasks() - before == set()
    task = hung_lane[0].task
    assert result.explain().startswith(f"call 3 (expects 'v3', task {task}) was stuck: it started ")
    assert "when no call had finished for 50 ms; " in result.explain()


async def test_a_run_that_keeps_finishing_calls_is_not_a_stall() -> None:
    # 40 calls one after another take about 0.4 s, longer than the stall bound, but never 0.25 s
    # without one finishing.
    result = await hammer(lambda i: asyncio.sleep(0.01, value(i)), value, tasks=1, calls=40,
                          timeout_ms=None, stall_s=0.25)
    assert result.elapsed_s > 0.25
    assert (result.correct, result.stalled_s) == (40, None)


async def test_time_the_event_loop_spends_blocked_is_not_a_stall() -> None:
    async def call(i: int) -> str:
        if i == 0:
            time.sleep(0.15)  # noqa: ASYNC251 - synchronous code of the client, three stall bounds long
            for _ in range(3):
                await asyncio.sleep(0)  # then it takes a few turns of the loop to finish
        return value(i)

    result = await hammer(call, value, tasks=1, calls=2, timeout_ms=None, stall_s=0.05)
    assert (result.correct, result.stalled_s) == (2, None)


async def test_auto_stall_without_a_wire_waits_at_least_a_second_then_gives_up() -> None:
    never = asyncio.Event()

    async def call(i: int) -> str:
        if i == 0:
            await never.wait()
        return value(i)

    result = await hammer(call, value, tasks=2, calls=2, timeout_ms=None, deadline_s=DEADLINE_S)
    assert result.stalled_s == MIN_STALL_S
    assert MIN_STALL_S <= result.elapsed_s < DEADLINE_S / 2
    assert "no call had finished for 1.0 s" in result.explain()
    assert result.stuck == 1


def test_the_auto_stall_bound_follows_the_slowest_call_seen() -> None:
    assert stall_bound("auto", 0.0) == MIN_STALL_S
    assert stall_bound("auto", 0.2) == pytest.approx(STALL_LATENCY_FACTOR * 0.2)
    assert stall_bound("auto", 0.0, wire=True) == MIN_WIRE_QUIET_S
    assert stall_bound("auto", 0.2, wire=True) == pytest.approx(WIRE_LATENCY_FACTOR * 0.2)
    assert stall_bound(0.05, 0.2) == 0.05
    assert stall_bound(None, 0.2) is None


async def test_a_call_that_ignores_cancellation_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # The package exports the function under the module's name, so the module is fetched by path.
    monkeypatch.setattr(importlib.import_module("sockrace.check.hammer"), "CANCEL_GRACE_S", 0.05)
    let_go = asyncio.Event()

    async def stubborn(i: int) -> str:
        while not let_go.is_set():
            try:
                await let_go.wait()
            except asyncio.CancelledError:
                continue
        return value(i)

    before = asyncio.all_tasks()
    result = await hammer(stubborn, value, tasks=1, calls=1, timeout_ms=None, deadline_s=0.05)
    assert result.ignored_cancel == (0,)
    assert "ignored cancellation" in result.explain()
    let_go.set()
    leftover = asyncio.all_tasks() - before
    await asyncio.wait(leftover, timeout=5)
    assert all(task.done() for task in leftover)


async def test_cancelling_the_hammer_cancels_its_calls() -> None:
    never = asyncio.Event()
    started = asyncio.Event()

    async def call(i: int) -> str:
        started.set()
        await never.wait()
        return value(i)

    before = asyncio.all_tasks()
    run = asyncio.ensure_future(hammer(call, value, tasks=3, calls=1, timeout_ms=None))
    await started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert asyncio.all_tasks() - before == set()


async def test_auto_calibrates_with_one_call_per_task_before_any_deadline() -> None:
    async def call(i: int) -> str:
        for _ in range(i % 4):
            await asyncio.sleep(0)
        return value(i)

    result = await hammer(call, value, tasks=4, calls=6, timeout_ms="auto", seed=5)
    first_round = [o for o in result.outcomes if o.decision.position == 0]
    later = [o for o in result.outcomes if o.decision.position > 0]
    assert all(o.decision.interrupt is Interrupt.NONE for o in first_round)
    assert max(o.record.ended_ns or 0 for o in first_round) <= min(o.record.started_ns or 0 for o in later)
    deadlines = [o.decision for o in later if o.decision.interrupt is Interrupt.DEADLINE]
    assert deadlines
    assert all(d.at_ms is not None for d in deadlines)


async def test_replaying_the_decisions_makes_the_same_choices() -> None:
    async def call(i: int) -> str:
        await asyncio.sleep(0)
        return value(i)

    first = await hammer(call, value, tasks=3, calls=4, timeout_ms="auto", cancel_fraction=0.3, seed=9)
    again = await hammer(call, value, replay=first.decisions)
    assert again.decisions == first.decisions
    assert [o.decision for o in again.outcomes] == [o.decision for o in first.outcomes]


@pytest.mark.parametrize(("arguments", "message"), [
    ({"tasks": 0}, r"^tasks must be an integer >= 1, got 0$"),
    ({"calls": 2.5}, r"^calls must be an integer >= 1, got 2\.5$"),
    ({"tasks": 1001, "calls": 1000}, r"^tasks x calls must be at most 1,000,000"),
    ({"timeout_ms": (5, 1)}, r"^timeout_ms must be \(lo, hi\) in ms with 0 < lo <= hi"),
    ({"timeout_ms": "fast"}, r"^timeout_ms must be"),
    ({"cancel_fraction": 1.5}, r"^cancel_fraction must be a number from 0 to 1, got 1\.5$"),
    ({"deadline_s": 0}, r"^deadline_s must be a number of seconds above 0 or None, got 0$"),
    ({"stall_s": -1}, r'^stall_s must be a number of seconds above 0, "auto" or None, got -1$'),
    ({"stall_s": "never"}, r'^stall_s must be a number of seconds above 0, "auto" or None, got \'never\'$'),
    ({"seed": "1"}, r"^seed must be an integer, got '1'$"),
    ({"label": ""}, r"^label must be a non-empty string, got ''$"),
])
async def test_bad_arguments_are_one_clear_line(arguments: dict[str, Any], message: str) -> None:
    async def call(i: int) -> str:
        return value(i)

    with pytest.raises(ValueError, match=message):
        await hammer(call, value, **arguments)


async def test_an_expect_that_raises_is_reported_as_the_users() -> None:
    async def call(i: int) -> str:
        return value(i)

    def expect(i: int) -> str:
        return {0: "v0"}[i]

    with pytest.raises(HammerError, match=r"^expect\(1\) raised KeyError: 1$"):
        await hammer(call, expect, tasks=1, calls=2)


# ------------------------------------------------------------------------------------------ the reports


async def test_the_standard_reports_show_a_hammer_run() -> None:
    result = await crossed_run()
    standard = result.run_result()
    assert (standard.count(Verdict.CROSSED), standard.timeouts, standard.requests) == (1, 1, 2)
    crossed = standard.outcomes[1]
    assert crossed.owner is standard.outcomes[0].step
    table = report.format_table([standard])
    assert table.splitlines()[2].split()[:6] == ["hammer", "held", "2", "0", "1", "0"]
    document = json.loads(json.dumps(report.client_document(standard)))
    assert document["workload"] == {"seed": 0, "concurrency": 1, "requests_per_coroutine": 2, "max_yields": 3}
    mode = document["modes"][0]
    assert (mode["crossed"], mode["errors"], mode["error_types"]) == (1, 1, {"TimeoutError": 1})
    assert list(report.format_trace(standard))[1] == \
        "c0.1\tsent \"call 1 expects 'v1'\"\tgot \"'v0'\"\tcrossed (answers c0.0)"
    lines = timeline.format_timeline(standard)
    assert any("c0.1 got c0.0" in line for line in lines)
    page = html_report.render([standard])
    assert page.count('class="crossed-arrow"') == 1
    assert 'data-request="c0.1" data-verdict="crossed"' in page
    assert report.sentence(standard) == (
        "held (hammer): only 0 of 2 correct; 1 call returned the value of another call; "
        "1 call failed with TimeoutError: the call's deadline of 1.0 ms ran out."
    )


# ------------------------------------------------------------------------------------------ real clients


async def _load_keys(server: Server, count: int) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        writer.write(b"".join(f"SET k{i} {value(i)}\n".encode() for i in range(count)))
        await writer.drain()
        for _ in range(count):
            assert (await reader.readline()).startswith(b"OK")
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def delayed_proxy(anyio_backend: str) -> AsyncIterator[FaultProxy]:
    """sockrace's server holding k<i> = v<i>, behind a proxy that holds every reply REPLY_DELAY_MS."""
    async with Server(ServerConfig(port=0)) as server:
        await _load_keys(server, TASKS * CALLS)
        delay = (REPLY_DELAY_MS, REPLY_DELAY_MS)
        async with FaultProxy(server.address, delay_ms=delay, direction="to_client") as proxy:
            yield proxy


async def _hammer_client(proxy: FaultProxy, name: str, seed: int, **options: Any) -> HammerResult:
    client: Client = CLIENTS[name](proxy.host, proxy.port)
    await client.open()
    call: Callable[[int], Awaitable[str]] = lambda i: client.get(f"k{i}")  # noqa: E731
    try:
        run = hammer(call, value, tasks=TASKS, calls=CALLS, seed=seed, label=name, deadline_s=30, **options)
        return await asyncio.wait_for(run, 40)
    finally:
        await client.aclose()


async def _every_seed(proxy: FaultProxy, name: str, **options: Any) -> list[HammerResult]:
    # The seeds run at once, one connection each: the proxy's delay, not the machine, sets the pace.
    return list(await asyncio.gather(*(_hammer_client(proxy, name, seed, **options) for seed in SEEDS)))


def test_every_seed_gives_up_on_calls_inside_the_reply_delay_and_waits_out_others() -> None:
    for seed in SEEDS:
        deadlines = [d.at_ms or 0 for d in draw(seed, TASKS, CALLS, LEAK_TIMEOUT_MS, 0.0).by_index()]
        assert sum(ms < REPLY_DELAY_MS for ms in deadlines) >= 5, seed
        assert sum(ms > 1.5 * REPLY_DELAY_MS for ms in deadlines) >= 4, seed


# The naive client needs no deadline to cross: the first call to read waits out the proxy's delay
# while the other tasks' calls write their requests and fail at once (asyncio refuses a second
# reader), so every later read of that task gets one of their replies. The locked client crosses
# only when a call gives up with its reply on the way: it runs with the deadlines pinned above.
@pytest.mark.parametrize(("name", "timeout_ms"), [("naive", None), ("locked", LEAK_TIMEOUT_MS)])
async def test_clients_that_are_not_cancel_safe_cross_in_every_seed(
    delayed_proxy: FaultProxy, name: str, timeout_ms: tuple[float, float] | None
) -> None:
    results = await _every_seed(delayed_proxy, name, timeout_ms=timeout_ms)
    assert [r.crossed > 0 for r in results] == [True] * len(SEEDS)
    assert all(r.wrong == 0 and r.unfinished == 0 for r in results)
    first = results[0].first_crossed
    assert first is not None
    assert first.owner is not None
    assert first.owner_leaked


@pytest.mark.parametrize("name", ["disconnect-on-cancel", "multiplexed"])
async def test_cancel_safe_clients_never_cross(delayed_proxy: FaultProxy, name: str) -> None:
    results = await _every_seed(delayed_proxy, name, timeout_ms=LEAK_TIMEOUT_MS, cancel_fraction=0.2)
    assert [r.ok for r in results] == [True] * len(SEEDS)
    assert sum(r.timeouts + r.cancelled for r in results) > 0  # they were put to the test


async def test_auto_deadlines_catch_the_locked_client(delayed_proxy: FaultProxy) -> None:
    results = await _every_seed(delayed_proxy, "locked", timeout_ms="auto")
    assert any(r.crossed for r in results)
    assert sum(r.timeouts for r in results) > 0


async def test_the_disconnect_on_cancel_client_pays_with_reconnects(delayed_proxy: FaultProxy) -> None:
    client = DisconnectOnCancelClient(delayed_proxy.host, delayed_proxy.port)
    await client.open()
    try:
        # Two tasks: a call waits for at most one other to hold the lock, so the long deadlines of
        # seed 0 (149, 166 and 192 ms) outlast the queue and the reply delay and end correct.
        result = await hammer(lambda i: client.get(f"k{i}"), value, tasks=2, calls=CALLS,
                              timeout_ms=(1, 200), seed=0)
    finally:
        await client.aclose()
    assert result.ok
    assert result.correct > 0
    assert 0 < client.reconnects <= result.timeouts  # a call that timed out waiting for the lock costs none


class Aborted(BaseException):
    """A BaseException of the guest's own, as a framework's "abort the program" might be."""


@pytest.mark.parametrize("raised", [SystemExit(0), SystemExit(3), KeyboardInterrupt(), GeneratorExit(),
                                    Aborted("stop")], ids=repr)
@pytest.mark.parametrize("cut", ["none", "deadline", "cancel"])
async def test_a_call_raising_what_ends_a_program_ends_the_run_with_hammer_error(
    raised: BaseException, cut: str
) -> None:
    # Whatever the guest raises, the run must not come back as a result (a clean one least of all):
    # in the worker task, under a deadline, or in the sub-task task.cancel() cuts.
    before = asyncio.all_tasks()

    async def call(i: int) -> str:
        await asyncio.sleep(0)
        if i == 2:
            raise raised
        return value(i)

    timeout_ms = None if cut == "none" else (5_000, 5_000)
    with watching_ctrl_c(), pytest.raises(HammerError) as caught:
        await hammer(call, value, tasks=2, calls=2, timeout_ms=timeout_ms,
                     cancel_fraction=1.0 if cut == "cancel" else 0.0)
    name = type(raised).__name__
    assert re.fullmatch(rf"call 2 raised {name}(: .*)?, which would end the program: a call must return a "
                        r"value or raise an Exception", str(caught.value))
    assert caught.value.__cause__ is raised
    assert asyncio.all_tasks() - before == set()


async def test_an_expect_raising_system_exit_is_a_hammer_error() -> None:
    def expect(i: int) -> str:
        if i == 1:
            raise SystemExit(0)
        return value(i)

    with pytest.raises(HammerError, match=r"^expect\(1\) raised SystemExit: 0$"):
        await hammer(lambda i: asyncio.sleep(0, value(i)), expect, tasks=1, calls=2)


class FakeWire:
    """A wire whose turn a test sets: does the server owe something, and have bytes moved."""

    def __init__(self, owes: bool) -> None:
        self.owes = owes
        self.moved = 0

    def server_owes(self) -> bool:
        return self.owes

    def arrivals(self) -> int:
        return self.moved


async def test_watching_the_wire_a_call_nothing_can_wake_in_a_failed_run_is_stuck_by_whose_turn_it_is(
) -> None:
    # Call 0 returned a value not its own (the run has failed); then the server owes nothing, no byte
    # moves, and nothing in the loop could wake call 1 (no timer, no ready callback, no executor
    # thread): stuck as soon as that has held for TURN_CONFIRM_S, not after the bound.
    never = asyncio.Event()

    async def call(i: int) -> str:
        if i == 0:
            return "not v0"
        if i == 1:
            await never.wait()
        return value(i)

    result = await hammer(call, value, tasks=1, calls=3, timeout_ms=None, deadline_s=DEADLINE_S,
                          wire=FakeWire(owes=False))
    assert result.stalled_s is not None
    assert TURN_CONFIRM_S <= result.stalled_s < MIN_WIRE_QUIET_S / 2
    assert result.elapsed_s < MIN_WIRE_QUIET_S  # not the bound's quarter of a second
    assert (result.outcomes[0].verdict, result.outcomes[1].verdict) == (CallVerdict.WRONG, CallVerdict.STUCK)
    assert not result.ok


async def test_in_a_run_with_nothing_else_wrong_a_call_nothing_can_wake_is_stuck_at_the_bound() -> None:
    # The same hung call after correct ones: "the server owes nothing" cannot tell a finished reply
    # from one the server paused in the middle of, so only the wire's quiet bound makes it stuck.
    never = asyncio.Event()

    async def call(i: int) -> str:
        if i == 1:
            await never.wait()
        return value(i)

    result = await hammer(call, value, tasks=1, calls=3, timeout_ms=None, deadline_s=DEADLINE_S,
                          wire=FakeWire(owes=False))
    assert result.stalled_s == MIN_WIRE_QUIET_S
    assert result.outcomes[1].verdict is CallVerdict.STUCK
    assert {o.verdict for o in result.outcomes} <= {CallVerdict.CORRECT, CallVerdict.STUCK,
                                                    CallVerdict.UNFINISHED}
    assert not result.ok


async def test_a_call_waiting_on_a_timer_of_its_own_however_late_is_left_to_the_bound() -> None:
    # The client plans to wake (an hour on): whose turn it is says "the client's", so only the
    # wire's quiet bound makes it stuck, as before whose turn was asked.
    async def call(i: int) -> str:
        if i == 1:
            await asyncio.sleep(3600)
        return value(i)

    result = await hammer(call, value, tasks=1, calls=3, timeout_ms=None, deadline_s=DEADLINE_S,
                          wire=FakeWire(owes=False))
    assert result.outcomes[1].verdict is CallVerdict.STUCK
    assert result.stalled_s == MIN_WIRE_QUIET_S


async def test_a_hung_call_that_something_keeps_waking_is_still_stuck_at_the_bound() -> None:
    # A timer of the client's fires every 10 ms (a keep-alive, say) but never wakes the call: the
    # loop is never idle, so whose turn it is cannot tell; the wire's quiet bound still ends it.
    never = asyncio.Event()

    async def tick() -> None:
        while True:  # noqa: ASYNC110 - a timer that fires and wakes nothing, on purpose
            await asyncio.sleep(0.01)

    ticking = asyncio.get_running_loop().create_task(tick())

    async def call(i: int) -> str:
        if i == 1:
            await never.wait()
        return value(i)

    try:
        result = await hammer(call, value, tasks=1, calls=3, timeout_ms=None, deadline_s=DEADLINE_S,
                              wire=FakeWire(owes=False))
    finally:
        ticking.cancel()
    assert result.stalled_s == MIN_WIRE_QUIET_S
    assert result.outcomes[1].verdict is CallVerdict.STUCK
    assert "when no byte had moved and the server owed no reply for 250 ms" in result.explain()


@pytest.mark.parametrize("waits", ["timer", "executor", "own thread", "deadline"])
async def test_a_slow_call_that_something_will_wake_is_not_stuck_by_whose_turn_it_is(waits: str) -> None:
    # The server owes nothing and no byte moves for 150 ms, 7 looks' worth of TURN_CONFIRM_S, but the
    # call waits on something of this process that will wake it: its own timer, a thread of the
    # loop's executor or one of its own, or the deadline the run gave it (which cuts it: a timeout,
    # not stuck).
    loop = asyncio.get_running_loop()

    async def call(i: int) -> str:
        if i == 1:
            if waits == "timer":
                await asyncio.sleep(0.15)
            elif waits == "executor":
                await loop.run_in_executor(None, time.sleep, 0.15)
            elif waits == "own thread":  # a thread of the client's, which wakes the call when done
                woken = loop.create_future()

                def work() -> None:
                    time.sleep(0.15)
                    loop.call_soon_threadsafe(woken.set_result, None)

                threading.Thread(target=work).start()
                await woken
            else:
                await asyncio.Event().wait()
        return value(i)

    decisions = draw(0, 1, 3, None, 0.0)
    if waits == "deadline":  # call 1 alone gets a 150 ms deadline
        decisions = dataclasses.replace(decisions, lanes=tuple(tuple(
            dataclasses.replace(d, yields=0, interrupt=Interrupt.DEADLINE, at_ms=150.0) if d.index == 1
            else d for d in lane) for lane in decisions.lanes))
    result = await hammer(call, value, replay=decisions, deadline_s=DEADLINE_S, wire=FakeWire(owes=False))
    assert result.stuck == 0
    assert result.stalled_s is None
    expected = CallVerdict.TIMEOUT if waits == "deadline" else CallVerdict.CORRECT
    assert result.outcomes[1].verdict is expected


async def test_a_stuck_bound_given_is_kept_to_and_whose_turn_it_is_is_not_asked() -> None:
    never = asyncio.Event()

    async def call(i: int) -> str:
        if i == 1:
            await never.wait()
        return value(i)

    result = await hammer(call, value, tasks=1, calls=3, timeout_ms=None, deadline_s=DEADLINE_S, stall_s=0.1,
                          wire=FakeWire(owes=False))
    assert result.stalled_s == 0.1


def test_nothing_can_wake_asks_only_a_loop_it_can_look_into() -> None:
    class Opaque:
        """A loop whose ready queue and timers cannot be seen (uvloop's, say)."""

    assert nothing_can_wake(Opaque()) is None  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        assert nothing_can_wake(loop) is True
        handle = loop.call_later(3600, lambda: None)
        assert nothing_can_wake(loop) is False
        OWN_TIMERS.add(handle)  # sockrace's own: nothing a call waits on
        assert nothing_can_wake(loop) is True
        OWN_TIMERS.discard(handle)
        handle.cancel()
        assert nothing_can_wake(loop) is True
        loop.call_soon(lambda: None)
        assert nothing_can_wake(loop) is False
    finally:
        loop.close()


async def test_watching_the_wire_a_slow_server_is_waited_for_up_to_the_deadline() -> None:
    # Calls that take longer than any stall bound, while the server owes their replies: not stuck.
    result = await hammer(lambda i: asyncio.sleep(0.4, value(i)), value, tasks=2, calls=2, timeout_ms=None,
                          deadline_s=DEADLINE_S, wire=FakeWire(owes=True))
    assert (result.correct, result.stuck, result.stalled_s) == (4, 0, None)
    assert result.ok


async def test_watching_the_wire_bytes_moving_keep_a_call_from_being_stuck() -> None:
    wire = FakeWire(owes=False)

    async def call(i: int) -> str:
        for _ in range(8):  # 0.8 s of traffic without a call finishing, the server owing nothing
            await asyncio.sleep(0.1)
            wire.moved += 1
        return value(i)

    result = await hammer(call, value, tasks=1, calls=1, timeout_ms=None, deadline_s=DEADLINE_S, wire=wire)
    assert (result.correct, result.stuck) == (1, 0)


async def test_the_story_of_a_stuck_call_names_the_calls_cut_short_before_it() -> None:
    # The lane's first call fails (as a call cut short that leaks its connection), every later one
    # hangs: the story names the hung call, and the failed one as where the leak began.
    decisions = draw(0, 1, 3, None, 0.0)
    first, second = decisions.lanes[0][0].index, decisions.lanes[0][1].index

    async def call(i: int) -> str:
        if i == first:
            raise ConnectionError("pool slot leaked")
        await asyncio.Event().wait()
        return value(i)

    result = await hammer(call, value, replay=decisions, deadline_s=DEADLINE_S, wire=FakeWire(owes=False))
    assert result.outcomes[second].verdict is CallVerdict.STUCK
    text = result.explain()
    assert text.startswith(f"call {second} (expects 'v{second}', task 0) was stuck: it started ")
    assert text.endswith(f"; one call had been cut short before it started: call {first} failing with "
                         "ConnectionError at " + text.rpartition(" at ")[2])
    assert "\n" not in text
