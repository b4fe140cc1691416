"""`sockrace compare`: embedded servers, every mode on the same seeded workload, side by side.

Each scenario is one situation a shared connection meets (plain, split writes, timeouts, a server
that answers out of order); it names the modes worth running there, the modes it shows failing,
and what it changes in the server, the workload and the client's timeout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sockrace.client import STRATEGIES
from sockrace.events import Recorder
from sockrace.outcome import RunResult
from sockrace.race import DEFAULT_STALL_TIMEOUT_S, run_mode
from sockrace.server import Server, ServerConfig
from sockrace.workload import Plan, Verdict, WorkloadConfig

# Modes that report a collision as an error by design: errors from them are the fix working.
FAIL_FAST_MODES: tuple[str, ...] = ("guarded",)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    split_writes: bool = False
    modes: tuple[str, ...] | None = None  # None: every mode asked for
    broken: tuple[str, ...] = ("unsafe",)  # modes this scenario shows giving wrong answers
    request_timeout_ms: float | None = None  # None: the --timeout given, if any
    out_of_order: bool = False
    jitter_ms: float | None = None  # None: the server jitter given
    max_concurrency: int | None = None  # caps -c, to keep a slow scenario short
    slow_every: int = 0  # one request in this many is a SLEEP of slow_ms
    slow_ms: int = 0

    def workload(self, base: WorkloadConfig) -> WorkloadConfig:
        concurrency = base.concurrency
        if self.max_concurrency is not None:
            concurrency = min(concurrency, self.max_concurrency)
        return dataclasses.replace(
            base, concurrency=concurrency, split_writes=self.split_writes,
            slow_every=self.slow_every or base.slow_every, slow_ms=self.slow_ms or base.slow_ms,
        )

    def server(self, base: ServerConfig) -> ServerConfig:
        return dataclasses.replace(
            base, out_of_order=self.out_of_order or base.out_of_order,
            jitter_ms=base.jitter_ms if self.jitter_ms is None else self.jitter_ms,
        )

    def timeout_ms(self, base: float | None) -> float | None:
        return base if self.request_timeout_ms is None else self.request_timeout_ms


# Timeouts: 10 coroutines (a lock queue of 100 would time out everybody waiting in it), one request
# in 10 answered after 20 ms, every request given 10 ms. The slow ones are cancelled after their
# write and before their read, which is exactly the window of CVE-2023-28858/28859. The server works
# on the requests of a connection concurrently: an in-order server would hold every request behind a
# slow one, and the fixes would drown in timeouts that no client can avoid (head-of-line blocking).
TIMEOUTS = Scenario(
    "timeouts",
    "10 ms timeout per request; one request in 10 is a SLEEP 20; the server answers each when done",
    modes=("locked", "locked-cancel-safe", "guarded", "multiplexed"),
    broken=("unsafe", "locked"), request_timeout_ms=10, max_concurrency=10, slow_every=10, slow_ms=20,
    out_of_order=True,
)

# Out of order: the server works on every request of the connection at once and a seeded jitter of
# up to 2 ms decides which finishes first. Only a tag can then tell whose reply is whose.
OUT_OF_ORDER = Scenario(
    "out-of-order server", "the server answers each request when it is done (jitter up to 2 ms)",
    modes=("pipelined", "multiplexed"), broken=("unsafe", "pipelined"), out_of_order=True, jitter_ms=2,
)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("shared connection", "every request written in one call"),
    Scenario("split writes", "every request written in two parts with a yield between", split_writes=True,
             modes=("unsafe", "locked", "pipelined", "multiplexed")),
    TIMEOUTS,
    OUT_OF_ORDER,
)


@dataclass(frozen=True, slots=True)
class CompareConfig:
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    server: ServerConfig = field(default_factory=lambda: ServerConfig(port=0))
    modes: tuple[str, ...] = tuple(STRATEGIES)
    stall_timeout: float = DEFAULT_STALL_TIMEOUT_S
    request_timeout_ms: float | None = None  # for the scenarios that set none of their own
    scenarios: tuple[Scenario, ...] = SCENARIOS
    record: bool = False  # record every run's events, for a timeline or an HTML report


@dataclass(frozen=True, slots=True)
class CompareResult:
    config: CompareConfig
    address: tuple[str, int]  # the first scenario's server
    results: tuple[RunResult, ...]  # in scenario order, then mode order

    def scenario(self, name: str) -> tuple[RunResult, ...]:
        return tuple(r for r in self.results if r.scenario == name)

    def result(self, scenario: str, mode: str) -> RunResult | None:
        return next((r for r in self.scenario(scenario) if r.mode == mode), None)

    def throughput_ratio(self, mode: str = "multiplexed", baseline: str = "locked") -> float | None:
        """req/s of `mode` over req/s of `baseline` in the first scenario, when both ran there."""
        first = self.results[0].scenario if self.results else ""
        fast, slow = self.result(first, mode), self.result(first, baseline)
        if fast is None or slow is None or slow.req_per_s == 0:
            return None
        return fast.req_per_s / slow.req_per_s

    def problems(self) -> list[str]:
        """Every run of a mode the scenario does not show failing that gave a wrong answer, lost a
        request, or (without a timeout and outside the fail-fast modes) failed a request."""
        scenarios = {s.name: s for s in self.config.scenarios}
        found = []
        for result in self.results:
            scenario = scenarios[result.scenario]
            if result.mode in scenario.broken:
                continue
            wrong = result.count(Verdict.CROSSED) + result.count(Verdict.CORRUPTED)
            errors_allowed = result.request_timeout_s is not None or result.mode in FAIL_FAST_MODES
            if wrong or result.count(Verdict.LOST) or (result.count(Verdict.ERROR) and not errors_allowed):
                found.append(f"{result.mode} ({result.scenario}) did not answer every request correctly")
        return found


async def _run_scenario(config: CompareConfig, scenario: Scenario, modes: tuple[str, ...]) -> tuple[
    tuple[str, int], list[RunResult]
]:
    timeout_ms = scenario.timeout_ms(config.request_timeout_ms)
    results = []
    async with Server(scenario.server(config.server)) as server:
        # Built once the server listens: a server that cannot bind fails before a big plan is made.
        plan = Plan.build(scenario.workload(config.workload))
        host, port = server.address
        for mode in modes:
            results.append(await run_mode(
                host, port, STRATEGIES[mode], plan, scenario=scenario.name,
                stall_timeout=config.stall_timeout,
                request_timeout=None if timeout_ms is None else timeout_ms / 1000,
                recorder=Recorder() if config.record else None,
            ))
    return (host, port), results


async def compare(config: CompareConfig) -> CompareResult:
    """Run every scenario in every mode asked for (that the scenario lists), each scenario against a
    server of its own on a free port.

    Raises ValueError for an unknown mode and OSError when a server cannot bind.
    """
    if not config.modes:
        raise ValueError("name at least one mode")
    unknown = [m for m in config.modes if m not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown mode {unknown[0]!r}; choose from {', '.join(STRATEGIES)}")
    results: list[RunResult] = []
    address: tuple[str, int] | None = None
    for scenario in config.scenarios:
        modes = tuple(m for m in config.modes if scenario.modes is None or m in scenario.modes)
        if not modes:
            continue
        bound, scenario_results = await _run_scenario(config, scenario, modes)
        address = address or bound
        results.extend(scenario_results)
    return CompareResult(config, address or (config.server.host, config.server.port), tuple(results))
