"""What the seeded scheduling loop costs: `python benchmarks/schedule_cost.py [--rounds N]`.

The same workloads on asyncio's plain selector loop and on a SeededEventLoop under each
perturbation (a new schedule seed each round), rounds interleaved so that drift in the machine hits
all alike; for each, the median CPU time, and the median of the round-by-round ratios to plain with
their range over the rounds (the issue's goal: within 1.5x). CPU time of this process (the races'
server runs in it too), not wall time: nothing in the workloads waits, and on a shared machine the
wall time mostly measures the neighbours (a plain counter run took 0.3 s to 1.2 s within minutes).
"reverse" keeps a batch in order or reverses it, so its ratio is mostly the loop's own machinery;
"shuffle" also runs the tasks of a batch in random order, which costs more where a batch is
thousands of tasks (the counter): their objects are then visited in an order unrelated to the
order they were made in, and the CPU's caches help less (the plain loop alone, waking 10,000 tasks
in a shuffled order rather than in order, took 1.37x-1.40x the CPU for the same work). Workloads:

1. race over TCP: `sockrace.race` of the shared-connection scenario through the locked strategy,
   against a server in the same process on loopback (the demo);
2. race over a socket pair: the same over `socket.socketpair()`, no TCP stack and no listening
   socket: nearly every step is a ready callback, the loop's own dispatch;
3. seed counter: the seed tutorial's counter program, 10,000 tasks without, then with the lock;
4. the tests: `python -m pytest` over TEST_FILES (races in memory and over loopback, the counter
   demo, compare), in a process of its own per run, with benchmarks/schedule_tests.py as a plugin:
   it makes every event loop the tests create (asyncio.run, asyncio.Runner, pytest-asyncio, anyio)
   a SeededEventLoop, and sums the CPU seconds the tests themselves take (not the interpreter's
   start or the collection; CPU because many tests wait on purpose, and a wait costs the same on
   either loop). Tests that pin the results of asyncio's FIFO order (exact counts of a fixed seed)
   fail under some schedules, as they should; the line says how many failed. `--test-rounds`
   rounds, by default a fifth of `--rounds`; 0 leaves the tests out.

`main([...])` takes the same arguments, so that a test can run it small.

Figures vary between machines; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # run from a checkout, too
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # and `benchmarks` as a package

from benchmarks.arguments import positive_int
from benchmarks.reference import seed_counter
from benchmarks.schedule_tests import OUTPUT_VARIABLE, VARIABLE
from sockrace.check.schedule import PERTURBATIONS, Perturbation, seeded_loop_factory
from sockrace.client import STRATEGIES
from sockrace.connection import SharedConnection
from sockrace.race import race, run_mode
from sockrace.server import Server, ServerConfig
from sockrace.workload import Plan, WorkloadConfig

COUNTER_TASKS = 10_000  # as in the seed tutorial
CHECKOUT = Path(__file__).resolve().parent.parent
# Every one runs asyncio loops (in-memory links, loopback servers, the counter demo) and together
# they take about 10 s of CPU: enough tests to be representative, few enough for rounds.
TEST_FILES = ("tests/test_race.py", "tests/test_counter.py", "tests/test_compare.py")
MODE = "locked"  # a strategy every scenario runs; its lock queue is where the schedule has choices

# Each workload returns the CPU seconds its timed part took: setup (a listening server) is not timed.
# The races take their size from the config, the counter its number of tasks from `concurrency`.
Workload = Callable[[WorkloadConfig], Coroutine[Any, Any, float]]


async def race_over_tcp(config: WorkloadConfig) -> float:
    plan = Plan.build(config)
    async with Server(ServerConfig(port=0)) as server:
        host, port = server.address
        started = time.process_time()
        await run_mode(host, port, STRATEGIES[MODE], plan)
        return time.process_time() - started


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
        started = time.process_time()
        await race(strategy, plan)
        return time.process_time() - started
    finally:
        await strategy.aclose()
        await connection.close()
        await serving


async def counter(config: WorkloadConfig) -> float:
    started = time.process_time()
    await seed_counter(config.concurrency, None)
    counted = await seed_counter(config.concurrency, asyncio.Lock())
    if counted != config.concurrency:
        raise RuntimeError(f"the locked counter reached {counted}, not {config.concurrency}")
    return time.process_time() - started


WORKLOADS: dict[str, Workload] = {
    "race over TCP": race_over_tcp,
    "race over a socket pair": race_over_socketpair,
    "seed counter": counter,
}
COUNTER = "seed counter"


def timed(workload: Workload, config: WorkloadConfig, seed: int, perturbation: Perturbation | None) -> float:
    """CPU seconds of one run of `workload` on a fresh loop: plain when `perturbation` is None."""
    factory = None if perturbation is None else seeded_loop_factory(seed, perturbation)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(workload(config))


def timed_tests(seed: int, perturbation: Perturbation | None) -> tuple[float, int]:
    """CPU seconds the tests of TEST_FILES take in a pytest process of their own, and how many
    failed: on asyncio's loop when `perturbation` is None, else on seeded loops from `seed` on."""
    with tempfile.TemporaryDirectory() as directory:
        output = Path(directory) / "tests.json"
        environment = {**os.environ, OUTPUT_VARIABLE: str(output),
                       VARIABLE: "plain" if perturbation is None else f"{perturbation}:{seed}"}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "-p", "benchmarks.schedule_tests", *TEST_FILES]
        subprocess.run(command, cwd=CHECKOUT, env=environment, capture_output=True, check=False)
        if not output.exists():
            raise RuntimeError(f"the tests did not run: {' '.join(command)}")
        tally = json.loads(output.read_text(encoding="utf-8"))
    return float(tally["cpu_s"]), int(tally["failed"])


Seconds = dict[Perturbation | None, list[float]]


def summary(name: str, seconds: Seconds, worst: dict[Perturbation, float], unit: str = "ms") -> str:
    """One line: plain's median, each perturbation's median and its round-by-round ratios to plain
    (median, and lowest to highest); keeps the worst median ratio of each perturbation."""
    scale = 1000 if unit == "ms" else 1
    plain = seconds[None]
    figures = [f"plain {statistics.median(plain) * scale:7.1f}"]
    for perturbation in PERTURBATIONS:
        ratios = [mine / theirs for mine, theirs in zip(seconds[perturbation], plain, strict=True)]
        ratio = statistics.median(ratios)
        worst[perturbation] = max(worst[perturbation], ratio)
        figures.append(f"{perturbation} {statistics.median(seconds[perturbation]) * scale:7.1f} "
                       f"({ratio:.2f}x, rounds {min(ratios):.2f}-{max(ratios):.2f})")
    return f"{name:>23}: " + "   ".join(figures)


def rounds_or_none(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=positive_int, default=15,
                        help="interleaved plain/seeded runs per workload (default: 15)")
    parser.add_argument("--test-rounds", type=rounds_or_none, default=None,
                        help="interleaved plain/seeded runs of the tests, each a pytest process "
                        "(default: a fifth of --rounds; 0 leaves the tests out)")
    parser.add_argument("-c", "--concurrency", type=positive_int, default=100,
                        help="coroutines of the races (default: 100)")
    parser.add_argument("-n", "--requests", type=positive_int, default=10,
                        help="requests each (default: 10)")
    parser.add_argument("--tasks", type=positive_int, default=COUNTER_TASKS,
                        help=f"tasks of the counter (default: {COUNTER_TASKS:,})")
    args = parser.parse_args(argv)
    test_rounds = args.rounds // 5 if args.test_rounds is None else args.test_rounds
    race_config = WorkloadConfig(concurrency=args.concurrency, requests=args.requests)
    counter_config = WorkloadConfig(concurrency=args.tasks, requests=1)
    print(f"races: {MODE}, {race_config.concurrency} coroutines x {race_config.requests} requests; "
          f"counter: {args.tasks:,} tasks; {args.rounds} interleaved rounds each; median CPU ms "
          f"(ratio: median of the rounds' ratios to plain, lowest-highest)")
    variants: tuple[Perturbation | None, ...] = (None, *PERTURBATIONS)
    worst = dict.fromkeys(PERTURBATIONS, 0.0)
    for name, workload in WORKLOADS.items():
        config = counter_config if name == COUNTER else race_config
        timed(workload, config, 0, None)  # warm up: imports, caches, the first connect
        seconds: Seconds = {variant: [] for variant in variants}
        for seed in range(args.rounds):
            for variant in variants:
                seconds[variant].append(timed(workload, config, seed, variant))
        print(summary(name, seconds, worst))
    if test_rounds:
        seconds, failed = {variant: [] for variant in variants}, dict.fromkeys(variants, 0)
        for seed in range(test_rounds):
            for variant in variants:
                cpu_s, failures = timed_tests(seed * 1000, variant)
                seconds[variant].append(cpu_s)
                failed[variant] += failures
        print(summary("the tests (CPU s)", seconds, worst, unit="s") + "; failed: "
              + ", ".join(f"{variant or 'plain'} {failed[variant]}" for variant in variants)
              + f" over {test_rounds} rounds of {', '.join(TEST_FILES)}")
    print("worst ratio to plain: " + ", ".join(f"{p} {worst[p]:.2f}x" for p in PERTURBATIONS)
          + " (goal: at most 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
