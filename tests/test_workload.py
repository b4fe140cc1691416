from __future__ import annotations

import pytest

from sockrace.protocol import Err, Ok, format_reply
from sockrace.workload import MAX_TOTAL_REQUESTS, Plan, Step, Verdict, WorkloadConfig


def test_same_seed_same_plan_other_seed_other_plan() -> None:
    config = WorkloadConfig(concurrency=5, requests=4, seed=9, split_writes=True)
    assert Plan.build(config).steps == Plan.build(config).steps
    other = WorkloadConfig(concurrency=5, requests=4, seed=10, split_writes=True)
    assert Plan.build(config).steps != Plan.build(other).steps


def test_plan_shape_and_unique_payloads() -> None:
    plan = Plan.build(WorkloadConfig(concurrency=7, requests=3, max_yields=2))
    assert len(plan.steps) == 7
    assert all(len(row) == 3 for row in plan.steps)
    assert len(plan.owners) == 21
    for row in plan.steps:
        for step in row:
            assert step.line == f"ECHO {step.payload}\n".encode()
            assert 0 <= step.pause <= 2
            assert step.split_at == 0


def test_split_writes_split_inside_the_line() -> None:
    plan = Plan.build(WorkloadConfig(concurrency=3, requests=3, split_writes=True))
    for row in plan.steps:
        for step in row:
            assert 0 < step.split_at < len(step.line)
            assert step.split_pause >= 1


@pytest.mark.parametrize("field", ["concurrency", "requests"])
def test_config_rejects_nonsense(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be at least 1"):
        WorkloadConfig(**{field: 0})  # type: ignore[arg-type]


def test_judge_each_verdict() -> None:
    plan = Plan.build(WorkloadConfig(concurrency=2, requests=1))
    mine, theirs = plan.steps[0][0], plan.steps[1][0]
    reply = format_reply(Ok(payload=mine.payload))
    assert plan.judge(mine, reply) == (Verdict.CORRECT, mine)
    assert plan.judge(theirs, reply) == (Verdict.CROSSED, mine)
    assert plan.judge(mine, b"OK c0.0.ECHO c1.0\n") == (Verdict.CORRUPTED, None)
    assert plan.judge(mine, format_reply(Err(code="UNKNOWN", message="x"))) == (Verdict.CORRUPTED, None)
    assert plan.judge(mine, b"\xff garbage\n") == (Verdict.CORRUPTED, None)
    tagged = format_reply(Ok(tag="5", payload=mine.payload))
    assert plan.judge(mine, tagged) == (Verdict.CORRECT, mine)


def _all_steps(plan: Plan) -> list[Step]:
    return [step for row in plan.steps for step in row]


def _slow_positions(plan: Plan) -> list[tuple[int, int]]:
    return [(s.coroutine, s.index) for s in _all_steps(plan) if s.line.startswith(b"SLEEP")]


def test_slow_requests_are_sleeps_and_change_nothing_else() -> None:
    plain = Plan.build(WorkloadConfig(concurrency=10, requests=10, seed=5))
    slowed = Plan.build(WorkloadConfig(concurrency=10, requests=10, seed=5, slow_every=10, slow_ms=20))
    sleeps = [s for s in _all_steps(slowed) if s.line.startswith(b"SLEEP")]
    assert len(sleeps) == 10  # exactly one in ten, whatever the seed
    assert all(s.line == f"SLEEP 20 {s.payload}\n".encode() for s in sleeps)
    for before, after in zip(_all_steps(plain), _all_steps(slowed), strict=True):
        assert (before.payload, before.pause) == (after.payload, after.pause)
    again = Plan.build(WorkloadConfig(concurrency=10, requests=10, seed=5, slow_every=10, slow_ms=20))
    other = Plan.build(WorkloadConfig(concurrency=10, requests=10, seed=6, slow_every=10, slow_ms=20))
    assert _slow_positions(again) == _slow_positions(slowed)
    assert _slow_positions(other) != _slow_positions(slowed)


def test_slow_requests_are_answered_as_their_payload() -> None:
    plan = Plan.build(WorkloadConfig(concurrency=2, requests=1, slow_every=1, slow_ms=5))
    step = plan.steps[0][0]
    assert step.line.startswith(b"SLEEP 5 ")
    assert plan.judge(step, format_reply(Ok(payload=step.payload))) == (Verdict.CORRECT, step)


@pytest.mark.parametrize(("slow_every", "slow_ms"), [(-1, 0), (1, -1), (1, 60_001)])
def test_slow_settings_are_checked(slow_every: int, slow_ms: int) -> None:
    with pytest.raises(ValueError, match="slow_every must not be negative and slow_ms must be 0 to 60000"):
        WorkloadConfig(slow_every=slow_every, slow_ms=slow_ms)


def test_config_bounds_the_size_of_a_run() -> None:
    assert WorkloadConfig(concurrency=1_000, requests=MAX_TOTAL_REQUESTS // 1_000).total == MAX_TOTAL_REQUESTS
    too_big = r"^concurrency x requests must be at most 1,000,000 in one run, got 100,000 x 1,000,000$"
    with pytest.raises(ValueError, match=too_big):
        WorkloadConfig(concurrency=100_000, requests=1_000_000)
