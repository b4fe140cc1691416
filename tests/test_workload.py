from __future__ import annotations

import pytest

from sockrace.protocol import Err, Ok, format_reply
from sockrace.workload import Plan, Verdict, WorkloadConfig


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
