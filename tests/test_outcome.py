"""outcome.py: the records every report formats, and the promise that formatting runs nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sockrace.outcome import CounterResult, IncrRace, Outcome, RunResult
from sockrace.workload import Plan, Verdict, WorkloadConfig

PURE_MODULES = (
    "sockrace.outcome", "sockrace.events", "sockrace.report", "sockrace.timeline", "sockrace.html_report",
)


@pytest.mark.parametrize("module", PURE_MODULES)
def test_formatting_modules_load_no_asyncio(module: str) -> None:
    # A fresh interpreter: this one has long imported asyncio through the client and the server.
    probe = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'asyncio'))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert loaded.stdout.strip() == "[]"


def _result(*outcomes: Outcome, elapsed_s: float = 0.5) -> RunResult:
    plan = Plan.build(WorkloadConfig(concurrency=1, requests=len(outcomes)))
    return RunResult("locked", "shared connection", plan, list(outcomes), elapsed_s)


def test_a_run_counts_its_verdicts_and_error_types() -> None:
    first, second, third = Plan.build(WorkloadConfig(concurrency=1, requests=3)).steps[0]
    result = _result(
        Outcome(first, Verdict.CORRECT, first.line, first),
        Outcome(second, Verdict.ERROR, error="TimeoutError: no reply within 10 ms"),
        Outcome(third, Verdict.ERROR, error="ConnectionBrokenError: the server closed the connection"),
    )
    assert result.requests == 3
    assert result.count(Verdict.CORRECT) == 1
    assert result.count(Verdict.ERROR) == 2
    assert result.error_types == {"TimeoutError": 1, "ConnectionBrokenError": 1}
    # A timeout is one of the errors (compare counts it so), told apart by its type.
    assert result.timeouts == 1
    assert [o.timed_out for o in result.outcomes] == [False, True, False]
    assert not result.perfect
    assert result.req_per_s == 6.0


def test_a_run_without_time_reports_no_throughput() -> None:
    (step,) = Plan.build(WorkloadConfig(concurrency=1, requests=1)).steps[0]
    result = _result(Outcome(step, Verdict.CORRECT), elapsed_s=0.0)
    assert result.req_per_s == 0.0
    assert result.perfect


def test_counter_results_say_what_was_lost() -> None:
    unsafe = IncrRace(unsafe_incr=True, clients=5, increments=4, final=13)
    atomic = IncrRace(unsafe_incr=False, clients=5, increments=4, final=20)
    assert (unsafe.expected, unsafe.lost) == (20, 7)
    assert CounterResult(100, 1, 100, unsafe, atomic).fixes_hold
    assert not CounterResult(100, 1, 99, unsafe, atomic).fixes_hold
    assert not CounterResult(100, 1, 100, unsafe, unsafe).fixes_hold
