from __future__ import annotations

from collections import Counter

import pytest

from helpers import MemoryLink, race_in_memory
from sockrace.client import STRATEGIES, Unsafe
from sockrace.events import EventKind, Recorder
from sockrace.race import race
from sockrace.server import Server
from sockrace.workload import Plan, Verdict, WorkloadConfig

SMALL = WorkloadConfig(concurrency=4, requests=3, seed=1)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
@pytest.mark.parametrize("mode", tuple(STRATEGIES))
@pytest.mark.parametrize("split_writes", [False, True])
async def test_every_request_is_recorded_in_order(mode: str, split_writes: bool) -> None:
    config = WorkloadConfig(concurrency=4, requests=3, seed=1, split_writes=split_writes)
    result = await race_in_memory(mode, config, recorder=Recorder())

    times = [e.t_ns for e in result.events]
    assert times == sorted(times)
    by_request: dict[tuple[int, int], list[EventKind]] = {}
    for event in result.events:
        by_request.setdefault((event.step.coroutine, event.step.index), []).append(event.kind)
    assert set(by_request) <= {(s.coroutine, s.index) for row in result.plan.steps for s in row}
    steps = [EventKind.START, EventKind.WROTE, EventKind.READING]
    for outcome in result.outcomes:
        kinds = by_request.get((outcome.step.coroutine, outcome.step.index), [])
        if outcome.verdict is Verdict.ERROR:  # it may fail at any step: before writing, while reading...
            assert kinds[-1] is EventKind.ERROR
            assert kinds[:-1] == steps[: len(kinds) - 1]
        elif outcome.verdict is Verdict.LOST:  # still waiting (or never started) when the run stalled
            assert kinds == steps[: len(kinds)]
        else:  # a reply only ever comes after the request was written and its reader began to wait
            assert kinds == [*steps, EventKind.REPLY]
    assert sum(len(kinds) for kinds in by_request.values()) == len(result.events)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_requests_never_started_have_no_events() -> None:
    # This seed leaves c3 stuck on its first request: c3.1 and c3.2 are lost without ever starting.
    config = WorkloadConfig(concurrency=4, requests=3, seed=5, max_yields=1)
    result = await race_in_memory("unsafe", config, recorder=Recorder())

    lost = {(o.step.coroutine, o.step.index) for o in result.outcomes if o.verdict is Verdict.LOST}
    assert lost == {(3, 0), (3, 1), (3, 2)}
    started = {(e.step.coroutine, e.step.index) for e in result.events if e.kind is EventKind.START}
    assert (3, 0) in started
    assert not started & {(3, 1), (3, 2)}
    # A coroutine runs its requests one after another: its events never interleave with each other.
    for row in result.plan.steps:
        mine = [(e.step.index, e.kind) for e in result.events if e.coroutine == row[0].coroutine]
        assert [index for index, _ in mine] == sorted(index for index, _ in mine)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_reply_events_carry_the_verdict_and_the_owner() -> None:
    result = await race_in_memory("unsafe", SMALL, recorder=Recorder())

    assert result.count(Verdict.CROSSED) > 0  # the seed is chosen so that this run crosses replies
    replies = {(e.step.coroutine, e.step.index): e for e in result.events if e.kind is EventKind.REPLY}
    for outcome in result.outcomes:
        if outcome.received is None:
            continue
        event = replies[outcome.step.coroutine, outcome.step.index]
        assert event.verdict is outcome.verdict
        assert event.owner is outcome.owner
        assert event.detail == outcome.received.decode()
        assert event.crossed == (outcome.verdict is Verdict.CROSSED)
    crossed = [e for e in replies.values() if e.crossed]
    assert len(crossed) == result.count(Verdict.CROSSED)
    assert all(e.owner is not None and e.owner != e.step for e in crossed)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_errors_are_recorded_with_the_exception() -> None:
    # Every coroutine reads at once without a pause: asyncio's own guard makes some of them raise.
    config = WorkloadConfig(concurrency=4, requests=2, seed=3, max_yields=0)
    result = await race_in_memory("unsafe", config, recorder=Recorder())

    errors = [e for e in result.events if e.kind is EventKind.ERROR]
    assert len(errors) == result.count(Verdict.ERROR) > 0
    guard = "RuntimeError: readuntil() called while another coroutine is already waiting"
    assert all(e.detail.startswith(guard) for e in errors)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
@pytest.mark.parametrize("mode", tuple(STRATEGIES))
async def test_recording_changes_nothing_but_the_events(mode: str) -> None:
    recorded = await race_in_memory(mode, SMALL, recorder=Recorder())
    plain = await race_in_memory(mode, SMALL)

    assert plain.events == ()
    answered = sum(o.verdict is not Verdict.LOST for o in recorded.outcomes)
    assert len(recorded.events) >= 2 * answered > 0  # at least a start and an end for each
    assert Counter(plain.counts) == Counter(recorded.counts)
    assert [o.received for o in plain.outcomes] == [o.received for o in recorded.outcomes]


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_run_records_into_its_strategys_recorder_and_only_there() -> None:
    link = MemoryLink(Server())
    recorder = Recorder()
    recorded, unrecorded = Unsafe(link.connection, recorder), Unsafe(link.connection)
    try:
        await race(recorded, Plan.build(WorkloadConfig(concurrency=1, requests=1)))
        assert len(recorder) == 4  # start, wrote, reading, reply
        result = await race(unrecorded, Plan.build(WorkloadConfig(concurrency=1, requests=1)))
        assert result.events == ()
        assert len(recorder) == 4  # the unrecorded run added nothing to the other strategy's recorder
    finally:
        await link.close()
