"""`sockrace counter` as a whole process against the seed tutorial's program, timed alternately, and where
the command's time goes.

    python benchmarks/startup.py [--runs 15] [--against REF]

Each round runs, one after the other and in the other order every other round: the tutorial's program
(its two programs, without then with the lock, in one process: the in-memory half of what `sockrace
counter` shows), `python -m sockrace counter`, `python -c "import sockrace.cli"` and `python -c "import
asyncio"`; with --against, `python -m sockrace counter` on REF's src/ too. Wall time of each process from
start to exit; a ratio is the median of the round-by-round ratios (goal: the counter at most 1.1x the
tutorial's program). Then, in one more process per round, the counter's phases timed inside it: what it
imports, the in-memory race, the server's INCR race; and the counter's process less that round's server
race against the tutorial's program (which has no server half).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

# Run as a script, this file's directory is on sys.path, not the repository (as in run.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ab import ExportError, export_tree
from benchmarks.arguments import positive_int
from benchmarks.processes import environment
from benchmarks.variants import REPO_ROOT, THIS_TREE, Tree

RATIO_GOAL: Final = 1.1

# The seed tutorial's two programs as written there (the shared value without, then with asyncio.Lock),
# in one process: what `sockrace counter`'s in-memory half retells.
SEED_PROGRAM: Final = """
import asyncio

async def task():
    global value
    tmp = value
    await asyncio.sleep(0)
    tmp = tmp + 1
    await asyncio.sleep(0)
    value = tmp

async def locked_task(lock):
    async with lock:
        global value
        tmp = value
        await asyncio.sleep(0)
        tmp = tmp + 1
        await asyncio.sleep(0)
        value = tmp

async def main():
    global value
    value = 0
    coros = [task() for _ in range(10000)]
    await asyncio.gather(*coros)
    print(value)

async def main_locked():
    global value
    value = 0
    lock = asyncio.Lock()
    coros = [locked_task(lock) for _ in range(10000)]
    await asyncio.gather(*coros)
    print(value)

asyncio.run(main())
asyncio.run(main_locked())
"""

# `sockrace counter` as main() runs it, its phases timed: print them as JSON.
PHASES_PROGRAM: Final = """
import json, sys, time
started = time.perf_counter()
import sockrace.cli
from sockrace.cli import counter as cli_counter
import sockrace.counter
from sockrace import loop, report
imported = time.perf_counter()
import asyncio
from sockrace.counter import server_incr_race, shared_counter

async def phases():
    times = []
    for step in (lambda: shared_counter(10_000), lambda: shared_counter(10_000, asyncio.Lock()),
                 lambda: server_incr_race(unsafe_incr=True), lambda: server_incr_race(unsafe_incr=False)):
        begun = time.perf_counter()
        await step()
        times.append(time.perf_counter() - begun)
    return times

memory, memory_locked, unsafe, atomic = asyncio.run(phases())
print(json.dumps({"imports": imported - started, "in-memory race": memory + memory_locked,
                  "server INCR race": unsafe + atomic}))
"""


def timed(command: Sequence[str], tree: Tree) -> float:
    """Wall seconds of one process, start to exit. Raises SystemExit when it fails."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO_ROOT,
                          env=environment(tree), timeout=120)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        words = " ".join(command[:4])
        raise SystemExit(f"startup.py: {words} exited {done.returncode}: {done.stderr[-300:]}")
    return elapsed


def spread(values: Sequence[float], unit: str = "s", scale: float = 1.0) -> str:
    return (f"{statistics.median(values) * scale:.3f} {unit} (min {min(values) * scale:.3f}, "
            f"max {max(values) * scale:.3f})")


def ratio_line(name: str, numerators: Sequence[float], denominators: Sequence[float]) -> tuple[str, float]:
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True)]
    median = statistics.median(ratios)
    return (f"{name}: {median:.2f}x, median of the rounds' ratios (rounds: {min(ratios):.2f} to "
            f"{max(ratios):.2f})"), median


def measure(runs: int, against: Tree | None) -> int:
    this = Tree(THIS_TREE, REPO_ROOT / "src")
    python = sys.executable
    commands: dict[str, tuple[list[str], Tree]] = {
        "seed tutorial's program": ([python, "-c", SEED_PROGRAM], this),
        "python -m sockrace counter": ([python, "-m", "sockrace", "counter"], this),
        'python -c "import sockrace.cli"': ([python, "-c", "import sockrace.cli"], this),
        'python -c "import asyncio"': ([python, "-c", "import asyncio"], this),
        'python -c "pass"': ([python, "-c", "pass"], this),
    }
    if against is not None:
        commands[f"python -m sockrace counter ({against.name})"] = ([python, "-m", "sockrace", "counter"],
                                                                    against)
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    phases: dict[str, list[float]] = {}
    for command, tree in commands.values():  # warm-up: compiled files written, caches filled
        timed(command, tree)
    for round_number in range(runs):
        order = list(commands.items())
        for name, (command, tree) in reversed(order) if round_number % 2 else order:
            seconds[name].append(timed(command, tree))
        done = subprocess.run([python, "-c", PHASES_PROGRAM], capture_output=True, text=True, check=True,
                              cwd=REPO_ROOT, env=environment(this), timeout=120)
        for phase, value in json.loads(done.stdout).items():
            phases.setdefault(phase, []).append(value)
    print(f"whole processes, wall time, {runs} rounds (median, min, max):")
    for name, values in seconds.items():
        print(f"  {name:<42} {spread(values)}")
    seed = seconds["seed tutorial's program"]
    line, ratio = ratio_line("python -m sockrace counter / the seed tutorial's program",
                             seconds["python -m sockrace counter"], seed)
    print(f"{line} (goal <= {RATIO_GOAL}x: {'met' if ratio <= RATIO_GOAL else 'not met'})")
    if against is not None:
        print(ratio_line(f"the counter on {against.name} / the seed tutorial's program",
                         seconds[f"python -m sockrace counter ({against.name})"], seed)[0])
        print(ratio_line(f"the counter on this tree / on {against.name}",
                         seconds["python -m sockrace counter"],
                         seconds[f"python -m sockrace counter ({against.name})"])[0])
    print("the counter's phases inside one process (median, min, max):")
    for phase, values in phases.items():
        print(f"  {phase:<42} {spread(values, 'ms', 1000)}")
    # The tutorial's program has no server half: the counter's process less its server race (timed in
    # the round's phases process) is the part of the command that does what the program does.
    without_server = [counter - race for counter, race in
                      zip(seconds["python -m sockrace counter"], phases["server INCR race"], strict=True)]
    print(ratio_line("the counter less its server INCR race / the seed tutorial's program", without_server,
                     seed)[0])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=positive_int, default=15, help="rounds (default: %(default)s)")
    parser.add_argument("--against", metavar="REF", help="also time the counter on REF's src/")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        against = None
        if args.against:
            try:
                against = export_tree(args.against, Path(scratch))
            except ExportError as exc:
                parser.error(str(exc))
        return measure(args.runs, against)


if __name__ == "__main__":
    sys.exit(main())
