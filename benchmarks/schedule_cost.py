"""What the seeded scheduling loop costs: `python benchmarks/schedule_cost.py [--rounds N]`.

The same workloads on asyncio's plain selector loop and on a SeededEventLoop (a new schedule seed
each round), rounds interleaved so that drift in the machine hits both alike; the median wall time
of each and their ratio (the issue's goal: within 1.5x). Workloads:

1. race over TCP: `sockrace.race` of the shared-connection scenario through the locked strategy,
   against a server in the same process on loopback (the demo);
2. race in memory: the same through an in-memory link, no socket: every step is a ready callback,
   so this is the worst case, the loop's own dispatch and nothing else;
3. seed counter: the seed tutorial's counter program, 10,000 tasks without, then with the lock.

Figures vary between machines; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # run from a checkout, too
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # and `benchmarks`, `tests` as packages

from benchmarks.arguments import positive_int
from benchmarks.reference import seed_counter
from sockrace.check.schedule import seeded_loop_factory
from sockrace.client import STRATEGIES
from sockrace.race import race, run_mode
from sockrace.server import Server, ServerConfig
from sockrace.workload import Plan, WorkloadConfig
from tests.helpers import MemoryLink

COUNTER_COROUTINES = 10_000  # as in the seed tutorial
MODE = "locked"  # a strategy every scenario runs; its lock queue is where the schedule has choices

# Each workload returns the seconds its timed part took: setup (a listening server) is not timed.
Workload = Callable[[WorkloadConfig], Coroutine[Any, Any, float]]


async def race_over_tcp(config: WorkloadConfig) -> float:
    plan = Plan.build(config)
    async with Server(ServerConfig(port=0)) as server:
        host, port = server.address
        started = time.perf_counter()
        await run_mode(host, port, STRATEGIES[MODE], plan)
        return time.perf_counter() - started


async def race_in_memory(config: WorkloadConfig) -> float:
    plan = Plan.build(config)
    link = MemoryLink(Server(ServerConfig()))
    strategy = STRATEGIES[MODE](link.connection)
    try:
        started = time.perf_counter()
        await race(strategy, plan)
        return time.perf_counter() - started
    finally:
        await strategy.aclose()
        await link.close()


async def counter(_config: WorkloadConfig) -> float:
    started = time.perf_counter()
    await seed_counter(COUNTER_COROUTINES, None)
    counted = await seed_counter(COUNTER_COROUTINES, asyncio.Lock())
    if counted != COUNTER_COROUTINES:
        raise RuntimeError(f"the locked counter reached {counted}, not {COUNTER_COROUTINES}")
    return time.perf_counter() - started


WORKLOADS: dict[str, Workload] = {
    "race over TCP": race_over_tcp,
    "race in memory": race_in_memory,
    "seed counter": counter,
}


def timed(workload: Workload, config: WorkloadConfig, seed: int | None) -> tuple[float, int]:
    """Seconds of one run of `workload` on a fresh loop (plain when `seed` is None) and the
    decisions the seeded loop drew."""
    factory = None if seed is None else seeded_loop_factory(seed)
    with asyncio.Runner(loop_factory=factory) as runner:
        seconds = runner.run(workload(config))
        return seconds, getattr(runner.get_loop(), "decisions", 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=positive_int, default=15,
                        help="interleaved plain/seeded runs per workload (default: 15)")
    parser.add_argument("-c", "--concurrency", type=positive_int, default=100,
                        help="coroutines of the races (default: 100)")
    parser.add_argument("-n", "--requests", type=positive_int, default=10,
                        help="requests each (default: 10)")
    args = parser.parse_args()
    config = WorkloadConfig(concurrency=args.concurrency, requests=args.requests)
    print(f"races: {MODE}, {config.concurrency} coroutines x {config.requests} requests; "
          f"counter: {COUNTER_COROUTINES:,} tasks; {args.rounds} interleaved rounds each")
    worst = 0.0
    for name, workload in WORKLOADS.items():
        timed(workload, config, None)  # warm up: imports, caches, the first connect
        plain: list[float] = []
        seeded: list[float] = []
        decisions: list[int] = []
        for seed in range(args.rounds):
            plain.append(timed(workload, config, None)[0])
            seconds, drawn = timed(workload, config, seed)
            seeded.append(seconds)
            decisions.append(drawn)
        ratio = statistics.median(seeded) / statistics.median(plain)
        worst = max(worst, ratio)
        print(f"{name:>15}: plain {statistics.median(plain) * 1000:8.1f} ms   "
              f"seeded {statistics.median(seeded) * 1000:8.1f} ms   seeded/plain {ratio:.2f}   "
              f"decisions per run {statistics.median(decisions):,.0f}")
    print(f"worst ratio {worst:.2f} (goal: at most 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
