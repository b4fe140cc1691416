"""What the seeded scheduling loop costs: `python benchmarks/schedule_cost.py [--rounds N]`.

The same workloads on asyncio's plain selector loop and on a SeededEventLoop under each
perturbation (a new schedule seed each round), rounds interleaved so that drift in the machine hits
all alike; the median wall time of each and its ratio to plain (the issue's goal: within 1.5x).
"reverse" keeps a batch in order or reverses it, so its ratio is mostly the loop's own machinery;
"shuffle" also runs the tasks of a batch in random order, which costs more where a batch is
thousands of tasks (the counter). Workloads:

1. race over TCP: `sockrace.race` of the shared-connection scenario through the locked strategy,
   against a server in the same process on loopback (the demo);
2. race over a socket pair: the same over `socket.socketpair()`, no TCP stack and no listening
   socket: nearly every step is a ready callback, the loop's own dispatch;
3. seed counter: the seed tutorial's counter program, 10,000 tasks without, then with the lock.

`main([...])` takes the same arguments, so that a test can run it small.

Figures vary between machines; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # run from a checkout, too
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # and `benchmarks` as a package

from benchmarks.arguments import positive_int
from benchmarks.reference import seed_counter
from sockrace.check.schedule import PERTURBATIONS, Perturbation, seeded_loop_factory
from sockrace.client import STRATEGIES
from sockrace.connection import SharedConnection
from sockrace.race import race, run_mode
from sockrace.server import Server, ServerConfig
from sockrace.workload import Plan, WorkloadConfig

COUNTER_TASKS = 10_000  # as in the seed tutorial
MODE = "locked"  # a strategy every scenario runs; its lock queue is where the schedule has choices

# Each workload returns the seconds its timed part took: setup (a listening server) is not timed.
# The races take their size from the config, the counter its number of tasks from `concurrency`.
Workload = Callable[[WorkloadConfig], Coroutine[Any, Any, float]]


async def race_over_tcp(config: WorkloadConfig) -> float:
    plan = Plan.build(config)
    async with Server(ServerConfig(port=0)) as server:
        host, port = server.address
        started = time.perf_counter()
        await run_mode(host, port, STRATEGIES[MODE], plan)
        return time.perf_counter() - started


async def race_over_socketpair(config: WorkloadConfig) -> float:
    plan = Plan.build(config)
    server = Server(ServerConfig())
    client_end, server_end = socket.socketpair()
    served_reader, served_writer = await asyncio.open_connection(sock=server_end)
    serving = asyncio.create_task(server.handle_connection(served_reader, served_writer))
    reader, writer = await asyncio.open_connection(sock=client_end)
    connection = SharedConnection(reader, writer)
    strategy = STRATEGIES[MODE](connection)
    try:
        started = time.perf_counter()
        await race(strategy, plan)
        return time.perf_counter() - started
    finally:
        await strategy.aclose()
        await connection.close()
        await serving


async def counter(config: WorkloadConfig) -> float:
    started = time.perf_counter()
    await seed_counter(config.concurrency, None)
    counted = await seed_counter(config.concurrency, asyncio.Lock())
    if counted != config.concurrency:
        raise RuntimeError(f"the locked counter reached {counted}, not {config.concurrency}")
    return time.perf_counter() - started


WORKLOADS: dict[str, Workload] = {
    "race over TCP": race_over_tcp,
    "race over a socket pair": race_over_socketpair,
    "seed counter": counter,
}
COUNTER = "seed counter"


def timed(workload: Workload, config: WorkloadConfig, seed: int, perturbation: Perturbation | None) -> float:
    """Seconds of one run of `workload` on a fresh loop: plain when `perturbation` is None."""
    factory = None if perturbation is None else seeded_loop_factory(seed, perturbation)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(workload(config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=positive_int, default=15,
                        help="interleaved plain/seeded runs per workload (default: 15)")
    parser.add_argument("-c", "--concurrency", type=positive_int, default=100,
                        help="coroutines of the races (default: 100)")
    parser.add_argument("-n", "--requests", type=positive_int, default=10,
                        help="requests each (default: 10)")
    parser.add_argument("--tasks", type=positive_int, default=COUNTER_TASKS,
                        help=f"tasks of the counter (default: {COUNTER_TASKS:,})")
    args = parser.parse_args(argv)
    race_config = WorkloadConfig(concurrency=args.concurrency, requests=args.requests)
    counter_config = WorkloadConfig(concurrency=args.tasks, requests=1)
    print(f"races: {MODE}, {race_config.concurrency} coroutines x {race_config.requests} requests; "
          f"counter: {args.tasks:,} tasks; {args.rounds} interleaved rounds each; median ms")
    variants: tuple[Perturbation | None, ...] = (None, *PERTURBATIONS)
    worst = dict.fromkeys(PERTURBATIONS, 0.0)
    for name, workload in WORKLOADS.items():
        config = counter_config if name == COUNTER else race_config
        timed(workload, config, 0, None)  # warm up: imports, caches, the first connect
        seconds: dict[Perturbation | None, list[float]] = {variant: [] for variant in variants}
        for seed in range(args.rounds):
            for variant in variants:
                seconds[variant].append(timed(workload, config, seed, variant))
        plain = statistics.median(seconds[None])
        figures = [f"plain {plain * 1000:7.1f}"]
        for perturbation in PERTURBATIONS:
            median = statistics.median(seconds[perturbation])
            worst[perturbation] = max(worst[perturbation], median / plain)
            figures.append(f"{perturbation} {median * 1000:7.1f} ({median / plain:.2f}x)")
        print(f"{name:>23}: " + "   ".join(figures))
    print("worst ratio to plain: " + ", ".join(f"{p} {worst[p]:.2f}x" for p in PERTURBATIONS)
          + " (goal: at most 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
