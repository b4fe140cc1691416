"""Where a sweep's seed spends its time, and how many seeds a second a sweep makes.

    python benchmarks/sweep_speed.py phases [--seeds 40]          # one seed's phases, this tree
    python benchmarks/sweep_speed.py ab --against REF [--rounds 3] # seeds/s against REF, alternating
    python benchmarks/sweep_speed.py jobs [--rounds 3]             # --jobs 2 against --jobs 1, redis-py

phases: the examples' reconnecting and naive clients (examples/sockrace_clients.py) against sockrace's
server, each seed's run taken apart as run_check does it: the upstream's probe, the proxy's start, the
scenario's set-up, the first round of calls that calibrates the "auto" deadlines, the other calls, the
scenario's clean-up and the proxy's close. Mean milliseconds per seed of each phase, and of the
whole run as sweep() takes it.

ab: `sockrace check EXAMPLE --seeds 1-N --all --json`, the whole command in a process of its own, on
this tree and on REF's src/ (git archive) in turn, the order swapped each round, against one sockrace
server; seeds per second from each document's `elapsed_s` (the sweep, not the interpreter's start),
the ratio this/REF per round, and whether both found the same failing seeds. In the same rounds, for
the reconnecting client, the scenario alone: per seed its set-up, its calls (10 tasks x 20, all at
once, no deadlines) and its clean-up straight against the server, with no proxy and no checker: the
most seeds a second any checker could make that runs the scenario once per seed on this machine,
beside twice REF's rate.

jobs: newest redis-py (PYTHONPATH=DIR, examples/redis_single_connection.py) against a redis-server
this starts on a free port, `--seeds 1-N --all` with `--jobs 1` and `--jobs 2` in turn; seeds per
second, the ratio, and whether the verdicts are the same. Needs redis-server on PATH (or --redis-server).

The machine's other load moves every figure: each round runs the two sides back to back, and the
ratios are round by round.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
EXAMPLES: Final = REPO_ROOT / "examples"
CLIENTS: Final = EXAMPLES / "sockrace_clients.py"
REDIS_SCENARIO: Final = f"{EXAMPLES / 'redis_single_connection.py'}:scenario"
REDIS_PY: Final = Path.home() / ".cache" / "sockrace" / "redis-py" / "newest"
PHASES: Final = ("probe", "proxy start", "set-up", "calibration", "calls", "clean-up", "proxy close")


def spread(values: list[float], digits: int = 2) -> str:
    """'median (low-high)'."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_sockrace_server(src: Path) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen([sys.executable, "-m", "sockrace", "server", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert process.stdout is not None
    process.stdout.readline()  # "sockrace server listening on ..."
    return process, port


def start_redis_server(binary: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


def stop(process: subprocess.Popen[Any]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


# ------------------------------------------------------------------ phases


async def one_seed_phases(scenario_name: str, upstream: tuple[str, int], seed: int) -> dict[str, float]:
    """The seconds of each phase of one seed's run, put together as run_check puts them."""
    from sockrace.check.hammer import hammer
    from sockrace.check.proxy import FaultProxy
    from sockrace.check.runner import probe
    from sockrace.check.scenario import load, opened

    scenario = load(scenario_name)
    clock = time.perf_counter
    seconds: dict[str, float] = {}
    began = clock()
    await probe(upstream)
    seconds["probe"] = clock() - began
    began = clock()
    proxy = FaultProxy(upstream, seed, log_limit=0)
    await proxy.__aenter__()
    seconds["proxy start"] = clock() - began
    try:
        began = clock()
        async with opened(scenario, proxy.address, setup_s=30, cleanup_s=30) as (call, expect):
            seconds["set-up"] = clock() - began
            began = clock()
            ended = 0
            calibrated_at = began

            async def timed(index: int) -> object:
                nonlocal ended, calibrated_at
                try:
                    return await call(index)
                finally:
                    ended += 1
                    if ended == 10:  # the first round: one call per task, the "auto" deadlines' latencies
                        calibrated_at = clock()

            proxy.start_faults()
            await hammer(timed, expect, seed=seed, deadline_s=30, wire=proxy)
            seconds["calibration"] = calibrated_at - began
            seconds["calls"] = clock() - calibrated_at
            began = clock()
        seconds["clean-up"] = clock() - began
    finally:
        began = clock()
        await proxy.__aexit__(None, None, None)
        seconds["proxy close"] = clock() - began
    return seconds


async def whole_seeds(scenario_name: str, upstream: tuple[str, int], seeds: range) -> list[float]:
    """Each seed's run as a sweep makes it (check_attempt), in seconds."""
    from sockrace.check.explore import check_attempt
    from sockrace.check.runner import CheckConfig, Setting

    attempt = check_attempt(CheckConfig(scenario_name, upstream))
    took = []
    for seed in seeds:
        began = time.perf_counter()
        await attempt(Setting(seed=seed))
        took.append(time.perf_counter() - began)
    return took


def run_phases(seeds: int) -> None:
    sys.path.insert(0, str(REPO_ROOT / "src"))
    server, port = start_sockrace_server(REPO_ROOT / "src")
    try:
        for client in ("reconnecting", "naive"):
            name = f"{CLIENTS}:{client}"
            rows = [asyncio.run(one_seed_phases(name, ("127.0.0.1", port), seed))
                    for seed in range(1, seeds + 1)]
            whole = asyncio.run(whole_seeds(name, ("127.0.0.1", port), range(1, seeds + 1)))
            print(f"{client}, {seeds} seeds, mean ms per seed:")
            for phase in PHASES:
                print(f"  {phase:<12} {1000 * statistics.fmean(row[phase] for row in rows):8.2f}")
            print(f"  {'sum':<12} {1000 * statistics.fmean(sum(row.values()) for row in rows):8.2f}")
            print(f"  whole run as a sweep makes it: {1000 * statistics.fmean(whole):.2f} "
                  f"(median {1000 * statistics.median(whole):.2f}, max {1000 * max(whole):.2f})")
    finally:
        stop(server)


# ------------------------------------------------------------------ sweeps as whole commands


def sweep_command(src: Path, scenario: str, upstream: int, seeds: int, *extra: str,
                  pythonpath: tuple[str, ...] = ()) -> dict[str, Any]:
    """`sockrace check SCENARIO --seeds 1-N --all --json` on `src`'s sockrace; its JSON document."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), *pythonpath]))
    done = subprocess.run(
        [sys.executable, "-m", "sockrace", "check", scenario, "--upstream", f"127.0.0.1:{upstream}",
         "--seeds", f"1-{seeds}", "--all", "--json", *extra],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=False)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"sockrace check exited {done.returncode}: {done.stderr.strip()[-300:]}")
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def alternate(rounds: int, sides: dict[str, Callable[[], dict[str, Any]]],
              progress: Callable[[str], None]) -> dict[str, list[dict[str, Any]]]:
    """Each side's document per round, the order of the sides swapped each round."""
    names = list(sides)
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for number in range(rounds):
        for name in names if number % 2 == 0 else reversed(names):
            progress(f"round {number + 1}/{rounds}: {name}")
            found[name].append(sides[name]())
    return found


def report(title: str, found: dict[str, list[dict[str, Any]]]) -> None:
    this, other = list(found)
    rates = {name: [d["tried"] / d["elapsed_s"] for d in documents] for name, documents in found.items()}
    ratios = [a / b for a, b in zip(rates[this], rates[other], strict=True)]
    same = all(a["failing_seeds"] == b["failing_seeds"]
               for a, b in zip(found[this], found[other], strict=True))
    print(f"{title}:")
    for name in (this, other):
        print(f"  {name:<10} {spread(rates[name], 1)} seeds/s")
    print(f"  ratio {this}/{other} by round: {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(median {statistics.median(ratios):.2f}); same failing seeds: {same}")


async def scenario_alone(scenario_name: str, upstream: tuple[str, int], seeds: int) -> dict[str, Any]:
    """The scenario's own work per seed, straight against `upstream`: a document shaped like a sweep's
    (tried, elapsed_s, failing_seeds) so that report() takes it beside theirs."""
    from sockrace.check.scenario import load, opened

    scenario = load(scenario_name)
    tasks, calls = 10, 20
    began = time.perf_counter()
    for _ in range(seeds):
        async with opened(scenario, upstream, setup_s=30, cleanup_s=30) as (call, expect):

            async def lane(task: int, call: Any = call, expect: Any = expect) -> None:
                for index in range(task * calls, (task + 1) * calls):
                    if await call(index) != expect(index):
                        raise RuntimeError(f"the scenario alone got a wrong value for call {index}")

            await asyncio.gather(*(lane(task) for task in range(tasks)))
    return {"tried": seeds, "elapsed_s": time.perf_counter() - began, "failing_seeds": None}


def report_floor(title: str, alone: list[dict[str, Any]], other: list[dict[str, Any]],
                 other_name: str) -> None:
    """The scenario alone's seeds/s against twice `other`'s, round by round."""
    floor = [d["tried"] / d["elapsed_s"] for d in alone]
    twice = [2 * d["tried"] / d["elapsed_s"] for d in other]
    print(f"{title}:")
    print(f"  the scenario alone (no proxy, no checker) {spread(floor, 1)} seeds/s; "
          f"2x {other_name} {spread(twice, 1)} seeds/s")
    print(f"  the scenario alone / 2x {other_name} by round: "
          f"{', '.join(f'{a / b:.2f}' for a, b in zip(floor, twice, strict=True))}")


def run_ab(against: str, rounds: int, seeds: int, this_ref: str | None) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.ab import export_tree

    def progress(text: str) -> None:
        print(f"  {text}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "other").mkdir()
        (Path(directory) / "this").mkdir()
        other = export_tree(against, Path(directory) / "other")
        this_src, this_name = REPO_ROOT / "src", "this"
        if this_ref is not None:  # a commit rather than the working tree (which may hold others' edits)
            this_tree = export_tree(this_ref, Path(directory) / "this")
            this_src, this_name = this_tree.src, this_tree.name
        server, port = start_sockrace_server(REPO_ROOT / "src")
        try:
            for client in ("reconnecting", "naive"):
                name = f"{CLIENTS}:{client}"
                sides: dict[str, Callable[[], dict[str, Any]]] = {
                    this_name: functools.partial(sweep_command, this_src, name, port, seeds),
                    other.name: functools.partial(sweep_command, other.src, name, port, seeds),
                }
                if client == "reconnecting":  # the naive client crosses (or raises) without a checker too
                    alone = functools.partial(scenario_alone, name, ("127.0.0.1", port), seeds)
                    sides["alone"] = lambda alone=alone: asyncio.run(alone())  # type: ignore[misc]
                found = alternate(rounds, sides, progress)
                floor = found.pop("alone", None)
                report(f"{client}, seeds 1-{seeds} --all, against sockrace's server", found)
                if floor is not None:
                    report_floor(f"{client}, the same rounds", floor, found[other.name], other.name)
        finally:
            stop(server)


def run_jobs(rounds: int, seeds: int, redis_server: str | None, redis_py: Path) -> int:
    binary = redis_server or shutil.which("redis-server")
    if binary is None or not (redis_py / "redis").is_dir():
        print(f"jobs: needs redis-server and redis-py in {redis_py}", file=sys.stderr)
        return 2

    def progress(text: str) -> None:
        print(f"  {text}", file=sys.stderr, flush=True)

    server, port = start_redis_server(binary)
    try:
        found = alternate(rounds, {
            f"--jobs {jobs}": lambda jobs=jobs: sweep_command(  # type: ignore[misc]
                REPO_ROOT / "src", REDIS_SCENARIO, port, seeds, "--jobs", str(jobs),
                pythonpath=(str(redis_py),))
            for jobs in (2, 1)
        }, progress)
    finally:
        stop(server)
    report(f"newest redis-py against redis-server, seeds 1-{seeds} --all, {os.cpu_count()} CPUs", found)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("phases", "ab", "jobs"))
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per sweep (phases: 40, ab: 100, jobs: 200)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", default="HEAD", help="ab: the git ref to compare with")
    parser.add_argument("--this", dest="this_ref",
                        help="ab: a git ref for this side (default: the working tree)")
    parser.add_argument("--redis-server", help="jobs: the redis-server binary (default: on PATH)")
    parser.add_argument("--redis-py", type=Path, default=REDIS_PY, help="jobs: a directory holding redis-py")
    args = parser.parse_args(argv)
    if args.what == "phases":
        run_phases(args.seeds or 40)
        return 0
    if args.what == "ab":
        run_ab(args.against, args.rounds, args.seeds or 100, args.this_ref)
        return 0
    return run_jobs(args.rounds, args.seeds or 200, args.redis_server, args.redis_py)


if __name__ == "__main__":
    sys.exit(main())
