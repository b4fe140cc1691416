"""`sockrace compare`: one embedded server, every mode on the same seeded workload, side by side."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sockrace.client import STRATEGIES
from sockrace.events import Recorder
from sockrace.race import DEFAULT_STALL_TIMEOUT_S, RunResult, run_mode
from sockrace.server import Server, ServerConfig
from sockrace.workload import Plan, WorkloadConfig


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    split_writes: bool = False


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("shared connection", "every request written in one call"),
    Scenario("split writes", "every request written in two parts with a yield between", split_writes=True),
)


@dataclass(frozen=True, slots=True)
class CompareConfig:
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    server: ServerConfig = field(default_factory=lambda: ServerConfig(port=0))
    modes: tuple[str, ...] = tuple(STRATEGIES)
    stall_timeout: float = DEFAULT_STALL_TIMEOUT_S
    record: bool = False  # record every run's events, for a timeline or an HTML report


@dataclass(frozen=True, slots=True)
class CompareResult:
    config: CompareConfig
    address: tuple[str, int]
    results: tuple[RunResult, ...]  # in scenario order, then mode order

    def scenario(self, name: str) -> tuple[RunResult, ...]:
        return tuple(r for r in self.results if r.scenario == name)


async def compare(config: CompareConfig) -> CompareResult:
    """Start a server on a free port and run every scenario in every mode against it.

    Raises ValueError for an unknown mode and OSError when the server cannot bind.
    """
    if not config.modes:
        raise ValueError("name at least one mode")
    unknown = [m for m in config.modes if m not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown mode {unknown[0]!r}; choose from {', '.join(STRATEGIES)}")
    results = []
    async with Server(config.server) as server:
        host, port = server.address
        for scenario in SCENARIOS:
            workload = dataclasses.replace(config.workload, split_writes=scenario.split_writes)
            plan = Plan.build(workload)
            for mode in config.modes:
                result = await run_mode(
                    host, port, STRATEGIES[mode], plan,
                    scenario=scenario.name, stall_timeout=config.stall_timeout,
                    recorder=Recorder() if config.record else None,
                )
                results.append(result)
    return CompareResult(config, (host, port), tuple(results))
