"""The redis-py acceptance figures: which versions hand one caller another caller's reply.

    python examples/redis_versions.py install     # once: redis-py 4.5.3, 4.5.4 and the newest
    python examples/measure_redis.py [--seeds 5]

Starts a redis-server on a free loopback port, runs the single-connection scenario through
FaultProxy and hammer with `sockrace check`'s defaults under every pinned redis-py version (seeds
0..N-1; redis_check.py), prints per seed and per version what the calls got, and says whether
4.5.3 crossed under every seed, the others under none (with correct calls), and whether the median
time to 4.5.3's first crossed reply is under a second. Exit 0 when all of that holds, 1 when not,
2 when redis-server or a redis-py version is missing.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
from typing import Final

from redis_check import SeedResult, check_version
from redis_server import RedisServer, RedisServerError, find_redis_server
from redis_versions import installed, labels, site_dir

VULNERABLE: Final = "4.5.3"
FIRST_CROSSED_LIMIT_S: Final = 1.0


def _seed_line(label: str, result: SeedResult) -> str:
    first = "-" if result.first_crossed_s is None else f"{result.first_crossed_s * 1000:.1f} ms"
    errors = ", ".join(f"{name} {count}" for name, count in sorted(result.error_types.items()))
    return (f"{label:<8} {result.redis_py:<8} {result.seed:>4} {result.correct:>7} {result.crossed:>7} "
            f"{result.wrong:>5} {result.errors:>6} {result.timeouts:>8} {result.reconnects:>10} "
            f"{first:>13}  {errors}")


def _verdict(label: str, results: list[SeedResult]) -> tuple[bool, str]:
    crossing = sum(1 for r in results if r.crossed)
    seeds = len(results)
    if label == VULNERABLE:
        times = [r.first_crossed_s for r in results if r.first_crossed_s is not None]
        median = statistics.median(times) if times else float("inf")
        holds = crossing == seeds and median < FIRST_CROSSED_LIMIT_S
        return holds, (f"redis-py {results[0].redis_py}: crossed replies under {crossing} of {seeds} seeds; "
                       f"median time to the first crossed reply {median * 1000:.1f} ms")
    clean = sum(1 for r in results if not r.crossed and not r.wrong and r.correct)
    correct = sum(r.correct for r in results)
    calls = sum(r.calls for r in results)
    paid = (f"{sum(r.timeouts for r in results)} deadlines, {sum(r.errors for r in results)} errors, "
            f"{sum(r.reconnects for r in results)} reconnects")
    sentence = (f"redis-py {results[0].redis_py}: no crossed or wrong reply and some correct under {clean} "
                f"of {seeds} seeds; {correct} of {calls} calls correct; paid: {paid}")
    return clean == seeds, sentence


def _missing() -> list[str]:
    """What the measurement needs and this machine lacks, each with the command that provides it."""
    missing = [f"redis-py {label} (python examples/redis_versions.py install)"
               for label in labels() if not installed(label)]
    if find_redis_server() is None:
        missing.append("redis-server (apt-get install redis-server)")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per version (default 5)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    missing = _missing()
    if missing:
        print(f"measure_redis: missing {'; '.join(missing)}", file=sys.stderr)
        return 2
    try:
        server = RedisServer.start()
    except RedisServerError as exc:
        print(f"measure_redis: {exc}", file=sys.stderr)
        return 2
    verdicts = []
    with server:
        print(f"redis-server {server.version} on 127.0.0.1:{server.port}; "
              f"Python {platform.python_version()}; "
              "defaults: no proxy faults, 10 tasks x 20 calls, auto deadlines")
        print("version  redis-py seed correct crossed wrong errors timeouts reconnects first crossed")
        for label in labels():
            try:
                results = check_version(site_dir(label), server.port, list(range(args.seeds)))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"measure_redis: redis-py {label}: {exc}", file=sys.stderr)
                return 1
            for result in results:
                print(_seed_line(label, result))
            verdicts.append(_verdict(label, results))
    print()
    for holds, sentence in verdicts:
        print(f"{'PASS' if holds else 'FAIL'}  {sentence}")
    return 0 if all(holds for holds, _ in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
