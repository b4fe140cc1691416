"""Load on one server: many connections at once, each raced by several coroutines through a strategy.

    python benchmarks/load.py [--connections 1000] [--coroutines 10] [--requests 10] [--mode locked]

The server runs as `python -m sockrace server` in a child process, so that it has a core of its own
and its peak memory can be read from /proc (Linux). Every connection gets its own seeded plan; the
script prints the verdict counts, the throughput, the server's peak RSS and exits 1 unless every
request was answered correctly. The whole run is bounded by --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from collections import Counter
from pathlib import Path

# Run as a script, this file's directory is on sys.path, not the repository: add the repository so
# that `benchmarks` is importable as a package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.arguments import positive_float, positive_int
from sockrace.client import STRATEGIES
from sockrace.connection import SharedConnection
from sockrace.race import race
from sockrace.workload import Plan, Verdict, WorkloadConfig

CONNECT_WAVE = 100  # the server's listen backlog (asyncio's default): connect in waves of this many


def raise_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            sys.exit(f"load.py: needs {needed} open files, but the hard limit is {hard} (see `ulimit -Hn`)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def peak_rss_mib(pid: int) -> float | None:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


async def run(args: argparse.Namespace) -> int:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sockrace", "server", "--port", "0",
        "--max-connections", str(args.connections),
        stdout=asyncio.subprocess.PIPE,
    )
    assert server.stdout is not None
    listening = (await server.stdout.readline()).decode().strip()
    host, _, port = listening.rpartition(" ")[2].rpartition(":")
    connections: list[SharedConnection] = []
    try:
        for start in range(0, args.connections, CONNECT_WAVE):
            wave = min(CONNECT_WAVE, args.connections - start)
            opening = [SharedConnection.open(host, int(port)) for _ in range(wave)]
            connections += await asyncio.gather(*opening)
        plans = [
            Plan.build(WorkloadConfig(concurrency=args.coroutines, requests=args.requests, seed=number))
            for number in range(args.connections)
        ]
        strategy = STRATEGIES[args.mode]
        started = time.perf_counter()
        results = await asyncio.gather(
            *(race(strategy(conn), plan, stall_timeout=args.stall_timeout)
              for conn, plan in zip(connections, plans, strict=True))
        )
        elapsed = time.perf_counter() - started
        peak = peak_rss_mib(server.pid)
    finally:
        await asyncio.gather(*(conn.close() for conn in connections))
        server.terminate()
        await server.communicate()
    totals: Counter[Verdict] = Counter()
    for result in results:
        totals.update(result.counts)
    total = sum(totals.values())
    print(f"load: {args.connections} connections x {args.coroutines} coroutines x {args.requests} requests "
          f"= {total:,} requests, mode {args.mode}, server in a child process")
    print("verdicts: " + ", ".join(f"{v.value} {totals[v]:,}" for v in Verdict))
    print(f"elapsed {elapsed:.2f} s, {total / elapsed:,.0f} requests/s (client and server on this machine)")
    if peak is not None:
        print(f"server peak RSS {peak:.1f} MiB")
    return 0 if totals[Verdict.CORRECT] == total else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=positive_int, default=1000)
    parser.add_argument("--coroutines", type=positive_int, default=10,
                        help="coroutines sharing each connection")
    parser.add_argument("--requests", type=positive_int, default=10, help="requests per coroutine")
    parser.add_argument("--mode", choices=[m for m in STRATEGIES if m != "unsafe"], default="locked")
    parser.add_argument("--stall-timeout", type=positive_float, default=30.0)
    parser.add_argument("--timeout", type=positive_float, default=300.0,
                        help="bound on the whole run, in seconds")
    args = parser.parse_args()
    raise_open_file_limit(args.connections + 100)
    try:
        return asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except TimeoutError:
        print(f"load.py: not finished after {args.timeout} s", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
