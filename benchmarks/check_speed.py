"""How fast the check finds a bug: the naive client of examples/sockrace_clients.py through FaultProxy
against sockrace's server, and redis-py 4.5.3 against redis-server when both are installed.

Figures, one per round unless said otherwise:
- calls per second through `hammer` (a default `sockrace check` run: 10 tasks x 20 calls, "auto"
  deadlines) and the seconds from its start to the first crossed reply, one seed per round;
- hammer's own overhead per call: 10 tasks x 1,000 calls of a coroutine that returns at once;
- the proxy without faults against the direct connection, windowed load (benchmarks/proxy.py);
- seeds per second of a sweep and the time of a shrink of its first failing seed (once per run);
- redis-py 4.5.3 (examples/redis_check.py): the time to the first crossed reply, one seed per round.
"""

from __future__ import annotations

import asyncio
import importlib
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Final

from benchmarks import proxy, verbs
from benchmarks.goals import Goal, median_goal
from benchmarks.variants import REPO_ROOT, Settings
from sockrace.check import hammer, shrink, sweep
from sockrace.check.explore import check_attempt, setting_of
from sockrace.check.runner import CheckConfig, run_check

SECTION: Final = "check speed"
NAIVE_SCENARIO: Final = f"{REPO_ROOT / 'examples' / 'sockrace_clients.py'}:naive"
HAMMER_OVERHEAD_GOAL_US: Final = 20.0
FIRST_CROSSED_GOAL_MS: Final = 1000.0
# A trivial call's run: enough calls that the per-call figure is not the run's set-up.
TRIVIAL_TASKS: Final = 10
TRIVIAL_CALLS: Final = 1_000
SWEEP_SEEDS: Final = 10
# The proxy comparison: a fifth of proxy.py's default run per round keeps this section near 30 s.
PROXY_REQUESTS: Final = 40_000
PROXY_WINDOW: Final = 100
REDIS_PY: Final = "4.5.3"

Progress = Callable[[str], None]


def spread(values: list[float], unit: str, scale: float = 1.0) -> str:
    """'median (low to high)' of `values` times `scale`."""
    shown = [v * scale for v in values]
    digits = 0 if max(shown) >= 100 else 2
    return (f"{statistics.median(shown):,.{digits}f} {unit} "
            f"({min(shown):,.{digits}f} to {max(shown):,.{digits}f})")


async def trivial_overhead_us() -> float:
    """hammer's own microseconds per call, around a call that does nothing."""
    async def call(index: int) -> object:
        return index

    result = await hammer(call, lambda index: index, tasks=TRIVIAL_TASKS, calls=TRIVIAL_CALLS,
                          timeout_ms=None)
    return result.elapsed_s / result.calls * 1e6


async def naive_figures(port: int, rounds: int, progress: Progress) -> tuple[list[float], list[str]]:
    """hammer's overhead per call (per round) and the notes of the naive client's figures."""
    config = CheckConfig(NAIVE_SCENARIO, ("127.0.0.1", port))
    overhead, calls_per_s, first_crossed = [], [], []
    for seed in range(rounds):
        progress(f"check speed, round {seed + 1}/{rounds}")
        overhead.append(await trivial_overhead_us())
        result = (await run_check(CheckConfig(NAIVE_SCENARIO, ("127.0.0.1", port), seed=seed))).result
        calls_per_s.append(result.calls_per_s)
        crossed_at = result.seconds_to_first_crossed()
        if crossed_at is not None:
            first_crossed.append(crossed_at)
    notes = [f"check, naive client through the proxy to sockrace's server, {rounds} seeds: "
             f"{spread(calls_per_s, 'calls/s')} through hammer; first crossed reply after "
             + (f"{spread(first_crossed, 'ms', 1000)} in {len(first_crossed)} of {rounds} runs"
                if first_crossed else f"none in {rounds} runs")]
    progress(f"check speed, a sweep of {SWEEP_SEEDS} seeds and a shrink")
    attempt = check_attempt(config)
    swept = await sweep(attempt, setting_of(config), range(SWEEP_SEEDS), keep_going=True)
    notes.append(f"check, sweep of seeds 0-{SWEEP_SEEDS - 1}: {swept.seeds_per_s:.2f} seeds/s, "
                 f"{len(swept.failing_seeds)} failing")
    if swept.first is not None:
        started = time.perf_counter()
        shrunk = await shrink(attempt, swept.first.setting)
        notes.append(f"check, shrink of seed {swept.first.seed}: {time.perf_counter() - started:.2f} s, "
                     f"{shrunk.runs} runs, down to {shrunk.minimal.tasks} task(s) x "
                     f"{shrunk.minimal.calls} call(s)")
    return overhead, notes


def _example(name: str) -> ModuleType:
    """A module of examples/ (not a package): redis_versions, redis_check."""
    examples = str(REPO_ROOT / "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    return importlib.import_module(name)


def redis_first_crossed(rounds: int, progress: Progress) -> tuple[list[float], str]:
    """redis-py 4.5.3's seconds to its first crossed reply, one seed per round, or why none."""
    versions = _example("redis_versions")
    if shutil.which("redis-server") is None:
        return [], "redis-server is not installed"
    if not versions.installed(REDIS_PY):
        return [], f"redis-py {REDIS_PY} is not installed (python examples/redis_versions.py install)"
    progress(f"check speed, redis-py {REDIS_PY} against redis-server, {rounds} seeds")
    with verbs.redis_server() as redis:
        assert redis is not None
        try:
            seeds = _example("redis_check").check_version(versions.site_dir(REDIS_PY), redis.port,
                                                          list(range(rounds)))
        except (RuntimeError, OSError) as exc:
            return [], str(exc)
    times = [seed.first_crossed_s for seed in seeds if seed.first_crossed_s is not None]
    return times, "" if times else f"no crossed reply in {rounds} seeds"


def measure(settings: Settings, progress: Progress) -> tuple[list[Goal], list[str]]:
    """The section's goals and notes."""
    rounds = settings.runs
    with verbs.sockrace_server(settings.trees[0], "sockrace") as server:
        overhead, notes = asyncio.run(naive_figures(server.port, rounds, progress))
    progress(f"check speed, the proxy without faults against direct, {rounds} rounds")
    requests = max(PROXY_WINDOW, round(PROXY_REQUESTS * settings.scale))
    throughput = proxy.paired_throughput(requests, PROXY_WINDOW, rounds)
    direct, proxied = throughput.direct, throughput.proxied
    first_crossed, missing = redis_first_crossed(rounds, progress)
    goals = [
        median_goal(f"hammer's overhead per call (a trivial call, {TRIVIAL_TASKS} tasks x "
                    f"{TRIVIAL_CALLS:,}): under {HAMMER_OVERHEAD_GOAL_US:.0f} us",
                    overhead, HAMMER_OVERHEAD_GOAL_US, "us"),
        median_goal(f"FaultProxy without faults: >= {proxy.RATIO_GOAL}x the direct pipelined throughput",
                    [p / d for p, d in zip(proxied, direct, strict=True)], proxy.RATIO_GOAL, "x"),
        median_goal(f"redis-py {REDIS_PY}: first crossed reply in under 1 s (median over seeds)",
                    [seconds * 1000 for seconds in first_crossed], FIRST_CROSSED_GOAL_MS, "ms", note=missing),
    ]
    notes.append(f"proxy without faults, {PROXY_WINDOW} in flight: direct {spread(direct, 'req/s')}, "
                 f"through the proxy {spread(proxied, 'req/s')}; {proxy.cpu_line(throughput)}")
    return goals, notes
