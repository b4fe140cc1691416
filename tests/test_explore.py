"""Sweep and replay (check/explore.py): in-process and exact on the clients of clients.py
(tests/inprocess.py), on a client whose failure is a rule of the setting, and one sweep through a real
FaultProxy in front of sockrace's server. Shrinking is test_shrink.py's."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from inprocess import VirtualClockLoop, in_process_attempt

from helpers import value
from sockrace.check import hammer
from sockrace.check.decisions import Interrupt
from sockrace.check.explore import (
    Attempt,
    Failure,
    Progress,
    Setting,
    check_attempt,
    parse_seeds,
    replay,
    sweep,
)
from sockrace.check.faults import Faults
from sockrace.check.oracle import CallVerdict
from sockrace.check.result import HammerResult
from sockrace.check.runner import CheckConfig, run_check
from sockrace.check.tape import Cut, Tape
from sockrace.server import Server, ServerConfig

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
SEEDS = range(20)
# Replies held 5-20 ms on their way back and deadlines of 1-40 ms: a good share of the deadlines
# fire while a reply is out, and others outlast it and pick up what was left behind.
SETTING = Setting(tasks=4, calls=5, timeout_ms=(1.0, 40.0),
                  faults=Faults(delay_ms=(5.0, 20.0), direction="to_client"))
UNSAFE = ["naive", "locked"]
SAFE = ["disconnect-on-cancel", "multiplexed"]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def in_process(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on a fresh virtual-clock loop: every run of the same coroutine does the same things."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(coroutine)


# ------------------------------------------------------------------ the buggy clients, in-process


@pytest.mark.parametrize("name", UNSAFE)
def test_a_client_that_is_not_cancel_safe_fails_the_first_seed_and_replays_exactly(name: str) -> None:
    attempt = in_process_attempt(name)
    found = in_process(sweep(attempt, SETTING, SEEDS))
    assert found.tried == (0,)
    assert found.first is not None
    assert found.first.failure is not None
    again = in_process(replay(attempt, found.first.setting, repeat=20))
    assert again.reference == found.first.failure
    assert (again.same, again.failed, again.exact) == (20, 20, True)
    assert again.summary().startswith(f"seed 0: {found.first.failure.describe()} in 20 of 20 runs")


@pytest.mark.parametrize("name", UNSAFE)
def test_every_seed_of_a_client_that_is_not_cancel_safe_fails(name: str) -> None:
    found = in_process(sweep(in_process_attempt(name), SETTING, SEEDS, keep_going=True))
    assert found.failing_seeds == tuple(SEEDS)
    assert found.failure_rate == 1.0


@pytest.mark.parametrize("name", SAFE)
def test_a_cancel_safe_client_never_fails_a_sweep(name: str) -> None:
    found = in_process(sweep(in_process_attempt(name), SETTING, SEEDS, keep_going=True))
    assert (len(found.tried), found.failures, found.first) == (20, (), None)
    assert found.summary() == "20 seeds tried, 0 failing"


def test_the_safe_clients_were_put_to_the_test() -> None:
    results: list[HammerResult] = []

    async def keep(setting: Setting) -> HammerResult:
        result = await in_process_attempt("disconnect-on-cancel")(setting)
        results.append(result)
        return result

    in_process(sweep(keep, SETTING, range(3), keep_going=True))
    assert all(r.timeouts > 0 and r.correct > 0 for r in results)


# ------------------------------------------------------------------ the search, on a rule


def _rule_attempt(fails: Callable[[Setting], bool]) -> Attempt:
    """An attempt whose run crosses (call 0 gets call 1's value) exactly when fails(setting)."""
    async def attempt(setting: Setting) -> HammerResult:
        async def call(i: int) -> str:
            await asyncio.sleep(0)
            return value(1 if i == 0 and fails(setting) else i)
        return await hammer(call, value, tasks=setting.tasks, calls=setting.calls, timeout_ms=None,
                            seed=setting.seed)
    return attempt


@pytest.mark.anyio
async def test_replay_makes_the_first_runs_decisions_again() -> None:
    given: list[Setting] = []

    async def attempt(setting: Setting) -> HammerResult:
        given.append(setting)

        async def call(i: int) -> str:
            await asyncio.sleep(0)
            return value(i)

        return await hammer(call, value, tasks=setting.tasks, calls=setting.calls,
                            timeout_ms=setting.timeout_ms, seed=setting.seed, replay=setting.decisions)

    again = await replay(attempt, Setting(seed=5, tasks=2, calls=3), repeat=3)
    assert given[0].decisions is None
    first = again.runs[0].result.decisions
    assert [s.decisions for s in given[1:]] == [first, first]
    assert [run.setting for run in again.runs] == [Setting(seed=5, tasks=2, calls=3)] * 3


# ------------------------------------------------------------------ sweep and replay, the pieces


@pytest.mark.anyio
async def test_sweep_reports_progress_after_every_seed_and_stops_at_the_first_failure() -> None:
    seen: list[Progress] = []
    attempt = _rule_attempt(lambda s: s.seed in (3, 5))
    found = await sweep(attempt, Setting(tasks=2, calls=2, timeout_ms=None), range(10),
                        on_progress=seen.append)
    assert (found.tried, found.failing_seeds) == ((0, 1, 2, 3), (3,))
    assert [(p.done, p.total, p.failures) for p in seen] == [(1, 10, 0), (2, 10, 0), (3, 10, 0), (4, 10, 1)]
    assert found.first is not None
    assert found.first.setting == Setting(seed=3, tasks=2, calls=2, timeout_ms=None)
    everything = await sweep(attempt, Setting(tasks=2, calls=2, timeout_ms=None), iter(range(10)),
                             keep_going=True, on_progress=seen.append)
    assert everything.summary() == "10 seeds tried, 2 failing (20%): seeds 3 (crossed), 5 (crossed)"
    assert seen[-1].total is None
    assert seen[-1].eta_s is None


def test_the_progress_line_says_seeds_failures_rate_and_eta() -> None:
    assert Progress(40, 500, 2, 4.0).line() == "seeds 40/500, 2 failing, 10.0 seeds/s, ETA 46 s"
    assert Progress(3, None, 0, 1.0).line() == "seeds 3, 0 failing, 3.0 seeds/s"


@pytest.mark.anyio
async def test_replay_counts_the_same_failure_apart_from_any_failure() -> None:
    runs = 0

    async def drifting(setting: Setting) -> HammerResult:
        nonlocal runs
        runs += 1

        async def call(i: int) -> str:
            # Runs 1 and 2: call 0 gets call 1's value; run 3: call 0 gets call 2's; run 4: fine.
            owner = {1: 1, 2: 1, 3: 2}.get(runs)
            return value(owner if i == 0 and owner is not None else i)

        return await hammer(call, value, tasks=1, calls=3, timeout_ms=None)

    again = await replay(drifting, Setting(tasks=1, calls=3, timeout_ms=None), repeat=4)
    assert again.reference == Failure(CallVerdict.CROSSED, 0, 1)
    assert (again.same, again.failed, again.exact) == (2, 3, False)
    assert again.summary() == "seed 0: call 0 got call 1's reply in 2 of 4 runs (3 of 4 failed at all)"
    with pytest.raises(ValueError, match=r"^repeat must be an integer >= 1, got 0$"):
        await replay(drifting, Setting(), repeat=0)


@pytest.mark.anyio
async def test_a_replay_that_never_fails_has_no_reference() -> None:
    again = await replay(_rule_attempt(lambda s: False), Setting(tasks=1, calls=2, timeout_ms=None), repeat=2)
    assert (again.reference, again.same, again.failed) == (None, 0, 0)
    assert again.summary() == "seed 0: no failure in 2 runs"


def test_a_setting_is_described_in_words() -> None:
    setting = Setting(seed=7, tasks=2, calls=3, timeout_ms="auto",
                      faults=Faults(delay_ms=(1.0, 2.5), split=1.0, coalesce=0.25, direction="to_server"))
    assert setting.describe() == ("seed 7, 2 tasks x 3 calls, auto deadlines, faults: delay 1-2.5 ms, "
                                  "split, coalesce 0.25, to_server only")


@pytest.mark.parametrize(("text", "seeds"), [
    ("1-500", range(1, 501)), ("7", range(7, 8)), (" 0-0 ", range(1))])
def test_seed_ranges_parse(text: str, seeds: range) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(("text", "message"), [
    ("a-b", r"^seeds must be N or LO-HI \(e\.g\. 1-500\), got 'a-b'$"),
    ("5-1", r"^seeds must be N or LO-HI with 0 <= LO <= HI, got '5-1'$"),
    ("", r"^seeds must be N or LO-HI"),
])
def test_bad_seed_ranges_are_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_seeds(text)


# ------------------------------------------------------------------ through a real FaultProxy


@pytest.mark.anyio
async def test_a_sweep_through_the_proxy_finds_the_naive_example_client() -> None:
    async with Server(ServerConfig(port=0)) as server:
        config = CheckConfig(f"{EXAMPLES / 'sockrace_clients.py'}:naive", server.address, tasks=4, calls=5,
                             deadline_s=20)
        attempt = check_attempt(config)
        setting = Setting(tasks=4, calls=5, timeout_ms=None, faults=Faults(delay_ms=(5.0, 5.0)))
        found = await asyncio.wait_for(sweep(attempt, setting, range(3)), 40)
        assert found.tried == (0,)
        assert found.first is not None
        assert found.first.result.crossed > 0
        safe = CheckConfig(f"{EXAMPLES / 'sockrace_clients.py'}:reconnecting", server.address, deadline_s=20)
        clean = await asyncio.wait_for(sweep(check_attempt(safe), setting, range(3)), 40)
        assert (len(clean.tried), clean.failures) == (3, ())


@pytest.mark.anyio
async def test_replay_follows_the_first_recorded_run_that_failed_not_one_that_passed() -> None:
    # Run 1 passes (its tape is not worth following), run 2 fails: runs 3 and 4 follow run 2's tape.
    given: list[Setting] = []
    tapes = [Tape((Cut(0, 0.001),)), Tape((Cut(1, 0.002),))]

    async def attempt(setting: Setting) -> HammerResult:
        given.append(setting)
        fails = len(given) >= 2

        async def call(i: int) -> str:
            return value(1 if fails and i == 0 else i)

        result = await hammer(call, value, tasks=1, calls=2, timeout_ms=None, replay=setting.decisions)
        return dataclasses.replace(result, tape=tapes[min(len(given), 2) - 1] if setting.record else None)

    again = await replay(attempt, Setting(tasks=1, calls=2, timeout_ms=None), repeat=4)
    assert [s.record for s in given] == [True, True, False, False]
    assert [s.tape for s in given] == [None, None, tapes[1], tapes[1]]
    assert again.reference == Failure(CallVerdict.CROSSED, 0, 1)
    assert (again.same, again.failed) == (3, 3)


@pytest.mark.anyio
async def test_a_check_config_runs_its_setting_and_its_cancellations_reach_the_calls() -> None:
    async with Server(ServerConfig(port=0)) as server:
        config = CheckConfig(f"{EXAMPLES / 'sockrace_clients.py'}:reconnecting", server.address, tasks=2,
                             calls=3, timeout_ms=None, cancel_fraction=1.0, stall_s=5.0, deadline_s=20)
        assert config.setting == Setting(tasks=2, calls=3, timeout_ms=None, cancel_fraction=1.0, stall_s=5.0)
        assert (config.tasks, config.cancel_fraction, config.stall_s) == (2, 1.0, 5.0)
        run = await asyncio.wait_for(run_check(config), 40)
        # Every call but the first of each task (the calibration round) is cancelled by task.cancel().
        interrupts = [(d.position, d.interrupt) for d in run.result.decisions.by_index()]
        assert sorted(interrupts) == [(0, Interrupt.NONE)] * 2 + [(p, Interrupt.CANCEL) for p in (1, 1, 2, 2)]
        smaller = config.with_setting(Setting(seed=4, tasks=1, calls=1, timeout_ms=None))
        assert (smaller.scenario, smaller.deadline_s, smaller.seed, smaller.cancel_fraction) == (
            config.scenario, 20, 4, 0.0)
