"""`compare`: every scenario shows what it is there to show, in one run with the defaults."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from sockrace.client import STRATEGIES
from sockrace.compare import SCENARIOS, TIMEOUTS, CompareConfig, CompareResult, Scenario, compare
from sockrace.outcome import Outcome, RunResult
from sockrace.server import ServerConfig
from sockrace.workload import MAX_TOTAL_REQUESTS, Plan, Verdict, WorkloadConfig


def wrong(result: RunResult) -> int:
    return result.count(Verdict.CROSSED) + result.count(Verdict.CORRUPTED)


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_compare_with_defaults_shows_every_failure_and_every_fix() -> None:
    outcome = await compare(CompareConfig())
    for result in outcome.results:
        assert sum(result.counts.values()) == result.requests == result.plan.config.total

    shared = {r.mode: r for r in outcome.scenario("shared connection")}
    assert set(shared) == set(STRATEGIES)
    assert shared["unsafe"].count(Verdict.CROSSED) > 0
    for mode in ("locked", "locked-cancel-safe", "pipelined", "multiplexed"):
        assert shared[mode].perfect, mode
    assert wrong(shared["guarded"]) == 0
    assert set(shared["guarded"].error_types) == {"ConnectionBusyError"}

    split = {r.mode: r for r in outcome.scenario("split writes")}
    assert split["unsafe"].count(Verdict.CORRUPTED) > 0
    assert all(split[m].perfect for m in ("locked", "pipelined", "multiplexed"))

    timeouts = {r.mode: r for r in outcome.scenario("timeouts")}
    assert timeouts["locked"].count(Verdict.CROSSED) > 0  # stale replies after cancellation
    for mode in ("locked-cancel-safe", "multiplexed", "guarded"):
        assert wrong(timeouts[mode]) == 0, mode
        assert timeouts[mode].count(Verdict.LOST) == 0, mode
    assert timeouts["locked-cancel-safe"].reopened > 0
    assert timeouts["multiplexed"].dropped > 0
    assert all(r.request_timeout_s == 0.01 for r in timeouts.values())

    out_of_order = {r.mode: r for r in outcome.scenario("out-of-order server")}
    assert out_of_order["pipelined"].count(Verdict.CROSSED) > 0
    assert out_of_order["multiplexed"].perfect

    assert outcome.problems() == []
    assert outcome.throughput_ratio() is not None  # its size is a benchmark's business, not a test's


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_modes_filter_scenarios_and_a_scenario_without_any_is_skipped() -> None:
    config = CompareConfig(workload=WorkloadConfig(concurrency=5, requests=2), modes=("locked",))
    outcome = await compare(config)
    assert [(r.scenario, r.mode) for r in outcome.results] == [
        ("shared connection", "locked"), ("split writes", "locked"), ("timeouts", "locked"),
    ]
    assert outcome.throughput_ratio() is None


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("modes", "message"), [((), "name at least one mode"), (("nope",), "unknown mode 'nope'")]
)
async def test_compare_refuses_bad_modes(modes: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await compare(CompareConfig(modes=modes))


def test_scenario_settings_override_the_base_config() -> None:
    base_workload = WorkloadConfig(concurrency=100, requests=3, seed=9)
    workload = TIMEOUTS.workload(base_workload)
    assert (workload.concurrency, workload.requests, workload.seed) == (10, 3, 9)
    assert (workload.slow_every, workload.slow_ms) == (10, 20)
    assert TIMEOUTS.workload(dataclasses.replace(base_workload, concurrency=4)).concurrency == 4
    server = TIMEOUTS.server(ServerConfig(delay_ms=1.5, jitter_ms=2))
    assert server.out_of_order
    assert (server.delay_ms, server.jitter_ms) == (1.5, 2)
    assert TIMEOUTS.timeout_ms(None) == TIMEOUTS.timeout_ms(99) == 10
    plain = SCENARIOS[0]
    assert plain.timeout_ms(None) is None
    assert plain.timeout_ms(25) == 25
    names = {s.name for s in SCENARIOS}
    assert names == {"shared connection", "split writes", "timeouts", "out-of-order server"}


def _result(mode: str, scenario: str, verdicts: list[Verdict], timeout: float | None = None) -> RunResult:
    plan = Plan.build(WorkloadConfig(concurrency=len(verdicts), requests=1))
    outcomes = [Outcome(row[0], v, error="X: y" if v is Verdict.ERROR else None)
                for row, v in zip(plan.steps, verdicts, strict=True)]
    return RunResult(mode, scenario, plan, outcomes, 1.0, request_timeout_s=timeout)


@pytest.mark.parametrize(
    ("mode", "verdicts", "timeout", "flagged"),
    [
        ("unsafe", [Verdict.CROSSED, Verdict.CORRUPTED], None, False),  # shown failing: expected
        ("locked", [Verdict.CORRECT, Verdict.CORRECT], None, False),
        ("locked", [Verdict.CORRECT, Verdict.CROSSED], None, True),
        ("locked", [Verdict.CORRECT, Verdict.ERROR], None, True),  # an error with no timeout to blame
        ("locked", [Verdict.CORRECT, Verdict.ERROR], 0.01, False),
        ("locked", [Verdict.CORRECT, Verdict.LOST], 0.01, True),
        ("guarded", [Verdict.CORRECT, Verdict.ERROR], None, False),  # fail-fast reports, by design
        ("guarded", [Verdict.CORRECT, Verdict.CROSSED], None, True),
    ],
)
def test_problems_flag_only_what_a_fix_must_not_do(
    mode: str, verdicts: list[Verdict], timeout: float | None, flagged: bool
) -> None:
    scenario = Scenario("s", "test scenario")
    config = CompareConfig(scenarios=(scenario,))
    outcome = CompareResult(config, ("127.0.0.1", 1), (_result(mode, "s", verdicts, timeout),))
    assert bool(outcome.problems()) is flagged


def _no_plan(config: WorkloadConfig) -> Plan:
    raise AssertionError(f"a plan of {config.total} requests was built before the server listened")


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_server_that_cannot_bind_fails_before_a_huge_plan_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Plan, "build", staticmethod(_no_plan))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = CompareConfig(
            workload=WorkloadConfig(concurrency=1_000, requests=MAX_TOTAL_REQUESTS // 1_000),
            server=ServerConfig(host="127.0.0.1", port=port),
        )
        with pytest.raises(OSError, match=r"(?i)address already in use"):
            await compare(config)
