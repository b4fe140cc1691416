"""Throughput of the strategies on one connection, against `locked` measured in the same run.

    python benchmarks/multiplexed_vs_locked.py [--rounds 7] [-c 100] [-n 10]

One embedded server; every round runs each mode once on the same seeded workload, the modes
interleaved so that a slow moment of the machine hits them all alike. Prints the median and best
req/s of each mode and its ratio to `locked` (medians). A single `sockrace compare` run times each
mode once, over a few tens of milliseconds for the fast modes, so its printed ratio is noisier.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from sockrace.client import STRATEGIES
from sockrace.race import run_mode
from sockrace.server import Server, ServerConfig
from sockrace.workload import Plan, WorkloadConfig

MODES = ("locked", "locked-cancel-safe", "pipelined", "multiplexed")


async def measure(rounds: int, config: WorkloadConfig) -> dict[str, list[float]]:
    plan = Plan.build(config)
    figures: dict[str, list[float]] = {mode: [] for mode in MODES}
    async with Server(ServerConfig(port=0)) as server:
        host, port = server.address
        for _ in range(rounds):
            for mode in MODES:
                result = await run_mode(host, port, STRATEGIES[mode], plan)
                if not result.perfect:
                    raise SystemExit(f"{mode} answered wrong: {dict(result.counts)}")
                figures[mode].append(result.req_per_s)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("-c", "--concurrency", type=int, default=100)
    parser.add_argument("-n", "--requests", type=int, default=10)
    args = parser.parse_args()
    config = WorkloadConfig(concurrency=args.concurrency, requests=args.requests)
    figures = asyncio.run(measure(args.rounds, config))
    baseline = statistics.median(figures["locked"])
    print(f"{args.concurrency} coroutines x {args.requests} requests on one connection, {args.rounds} rounds")
    print(f"{'mode':<20}{'median req/s':>14}{'best req/s':>12}{'x locked':>10}")
    for mode, values in figures.items():
        median = statistics.median(values)
        print(f"{mode:<20}{median:>14,.0f}{max(values):>12,.0f}{median / baseline:>10.1f}")


if __name__ == "__main__":
    main()
