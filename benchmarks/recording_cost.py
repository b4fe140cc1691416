"""What recording a run's events costs: `python benchmarks/recording_cost.py [--rounds N]`.

Recording is off unless a timeline or a report is asked for. When it is off, the only work left on
each request's path is a `recorder is not None` check at each of its five hooks (start, wrote,
reading, reply/error; three in race.py, two in the strategy). This script measures, in one run
against one embedded server:

1. end to end: the same seeded workload raced with recording off and on, rounds interleaved so that
   drift in the machine hits both alike; the median requests per second of each and their ratio;
2. the hooks alone: what five None checks cost per request (timeit), as a share of the time one
   request takes end to end with recording off.

Figures vary between machines; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # run from a checkout, too
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # and `benchmarks` as a package

from benchmarks.arguments import positive_int
from sockrace.client import STRATEGIES
from sockrace.events import Recorder
from sockrace.race import run_mode
from sockrace.server import Server, ServerConfig
from sockrace.workload import Plan, WorkloadConfig

HOOKS_PER_REQUEST = 5


async def measure(mode: str, rounds: int, config: WorkloadConfig) -> tuple[list[float], list[float]]:
    plan = Plan.build(config)
    off: list[float] = []
    on: list[float] = []
    async with Server(ServerConfig(port=0)) as server:
        host, port = server.address
        await run_mode(host, port, STRATEGIES[mode], plan)  # warm up: imports, caches, the first connect
        for _ in range(rounds):
            off.append((await run_mode(host, port, STRATEGIES[mode], plan)).req_per_s)
            on.append((await run_mode(host, port, STRATEGIES[mode], plan, recorder=Recorder())).req_per_s)
    return off, on


def none_check_ns() -> float:
    """Nanoseconds one `x is not None` test on an attribute costs, as the hooks do it."""

    class Holder:
        recorder: Recorder | None = None

    holder = Holder()
    loops = 2_000_000
    checks = timeit.timeit("if h.recorder is not None: pass", globals={"h": holder}, number=loops)
    empty = timeit.timeit("pass", number=loops)
    return max(checks - empty, 0.0) / loops * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=positive_int, default=15,
                        help="interleaved off/on runs (default: 15)")
    parser.add_argument("-c", "--concurrency", type=positive_int, default=100,
                        help="coroutines (default: 100)")
    parser.add_argument("-n", "--requests", type=positive_int, default=20, help="requests each (default: 20)")
    args = parser.parse_args()
    config = WorkloadConfig(concurrency=args.concurrency, requests=args.requests)
    check_ns = none_check_ns()
    print(f"workload: {config.concurrency} coroutines x {config.requests} requests, "
          f"{args.rounds} interleaved rounds per mode")
    for mode in STRATEGIES:
        off, on = asyncio.run(measure(mode, args.rounds, config))
        off_median, on_median = statistics.median(off), statistics.median(on)
        per_request_ns = 1e9 / off_median
        hooks_share = HOOKS_PER_REQUEST * check_ns / per_request_ns
        print(f"{mode:>8}: off {off_median:>9,.0f} req/s   on {on_median:>9,.0f} req/s   "
              f"on/off {on_median / off_median:.3f}   "
              f"None checks when off: {HOOKS_PER_REQUEST} x {check_ns:.1f} ns = "
              f"{hooks_share:.4%} of a request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
