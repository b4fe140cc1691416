"""A pytest plugin for benchmarks/schedule_cost.py: the tests' own time on a seeded loop or asyncio's.

    SOCKRACE_SCHEDULE_COST=shuffle:7 python -m pytest -p benchmarks.schedule_tests tests/test_race.py

With the variable set to PERTURBATION:SEED, every event loop the tests make through the event loop
policy (asyncio.run, asyncio.Runner, pytest-asyncio and anyio's asyncio backend all do) is a
SeededEventLoop, seeds counting up from SEED; unset or "plain", asyncio's own. The CPU seconds
spent in the tests themselves (setup, call and teardown of each, not the interpreter's start or
the collection) are written, with the numbers passed and failed, as one JSON line to the file
named by SOCKRACE_SCHEDULE_COST_OUT. CPU rather than wall time: many tests wait on purpose
(grace periods, timeouts), and a wait costs the same on either loop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Generator
from typing import Any

import pytest

from sockrace.check.schedule import PERTURBATIONS, Perturbation, SeededEventLoop

VARIABLE = "SOCKRACE_SCHEDULE_COST"
OUTPUT_VARIABLE = "SOCKRACE_SCHEDULE_COST_OUT"


class SeededPolicy(asyncio.DefaultEventLoopPolicy):
    """Every new event loop is a SeededEventLoop, the next schedule seed each."""

    def __init__(self, perturbation: Perturbation, first_seed: int) -> None:
        super().__init__()
        self.perturbation: Perturbation = perturbation
        self.seeds = itertools.count(first_seed)

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return SeededEventLoop(next(self.seeds), self.perturbation)


def parse(setting: str) -> tuple[Perturbation, int] | None:
    """PERTURBATION:SEED as a pair; None for "plain" or nothing. Raises ValueError otherwise."""
    if setting in ("", "plain"):
        return None
    perturbation, _, seed = setting.partition(":")
    for known in PERTURBATIONS:
        if perturbation == known and seed.isdigit():
            return known, int(seed)
    raise ValueError(f"{VARIABLE} must be plain or PERTURBATION:SEED ({', '.join(PERTURBATIONS)}), "
                     f"got {setting!r}")


class _Tally:
    cpu_s = 0.0
    passed = 0
    failed = 0


def pytest_configure(config: pytest.Config) -> None:
    try:
        seeded = parse(os.environ.get(VARIABLE, ""))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    if seeded is not None:
        asyncio.set_event_loop_policy(SeededPolicy(*seeded))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    started = time.process_time()
    try:
        return (yield)
    finally:
        _Tally.cpu_s += time.process_time() - started


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        _Tally.failed += 1
    elif report.when == "call" and report.passed:
        _Tally.passed += 1


def pytest_unconfigure(config: pytest.Config) -> None:
    output = os.environ.get(OUTPUT_VARIABLE)
    if output:
        with open(output, "w", encoding="utf-8") as file:
            json.dump({"cpu_s": _Tally.cpu_s, "passed": _Tally.passed, "failed": _Tally.failed}, file)
