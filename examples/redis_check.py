"""Run `sockrace check` on the redis-py scenario, one seed at a time, in a child process.

    PYTHONPATH=DIR python examples/redis_check.py --port 6379 --seeds 0,1,2,3,4

Each redis-py version needs a process of its own (a process imports one `redis`), so the parent
side, `check_version()`, starts this file with PYTHONPATH set to one version's directory
(redis_versions.py) and reads one JSON line per seed. Each seed is what
`sockrace check examples/redis_single_connection.py:scenario --upstream 127.0.0.1:PORT --seed S`
runs (run_check, with the command's defaults: no proxy faults, 10 tasks x 20 calls, "auto"
deadlines): a fresh proxy, a fresh client, the keys loaded again. The JSON adds what the command
does not print: the redis-py version and how many connections the client opened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

from sockrace.check.runner import CheckConfig, run_check

HERE: Final = Path(__file__).resolve().parent
SCENARIO: Final = HERE / "redis_single_connection.py"
# Five seeds of the defaults take about a second per version; a minute means something hangs.
CHILD_TIMEOUT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class SeedResult:
    """One seed's run, as the child reports it."""

    seed: int
    redis_py: str
    calls: int
    correct: int
    crossed: int
    wrong: int
    errors: int
    timeouts: int
    cancelled: int
    unfinished: int
    connections: int  # the proxy accepted: 1 + the client's reconnects
    elapsed_s: float
    first_crossed_s: float | None
    explanation: str
    error_types: dict[str, int] = field(default_factory=dict)

    @property
    def reconnects(self) -> int:
        return self.connections - 1


async def _run_seed(upstream: tuple[str, int], seed: int, scenario: str) -> SeedResult:
    import redis  # type: ignore[import-not-found, unused-ignore]  # the version PYTHONPATH chose

    run = await run_check(CheckConfig(f"{SCENARIO}:{scenario}", upstream, seed=seed))
    result = run.result
    return SeedResult(
        seed, redis.__version__, result.calls, result.correct, result.crossed, result.wrong, result.errors,
        result.timeouts, result.cancelled, result.unfinished, run.connections, result.elapsed_s,
        result.seconds_to_first_crossed(), result.explain(), dict(result.error_types))


async def _child(port: int, seeds: list[int], scenario: str) -> None:
    for seed in seeds:
        outcome = await _run_seed(("127.0.0.1", port), seed, scenario)
        print(json.dumps(asdict(outcome)), flush=True)


def check_version(site_dir: Path, port: int, seeds: list[int], timeout_s: float = CHILD_TIMEOUT_S,
                  scenario: str = "scenario") -> list[SeedResult]:
    """Run the scenario with the redis-py installed in `site_dir` against 127.0.0.1:`port`.

    Raises RuntimeError with the child's last words when it fails, subprocess.TimeoutExpired
    (after killing it) when it takes longer than `timeout_s`.
    """
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site_dir), *filter(None, [os.environ.get("PYTHONPATH")])]))
    completed = subprocess.run(
        [sys.executable, "-W", "error", str(Path(__file__).resolve()), "--port", str(port),
         "--seeds", ",".join(map(str, seeds)), "--scenario", scenario],
        capture_output=True, text=True, timeout=timeout_s, env=environment, check=False)
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the redis-py check in {site_dir} exited {completed.returncode}: {last}")
    return [SeedResult(**json.loads(line)) for line in completed.stdout.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One JSON line per seed: the redis-py scenario's check.")
    parser.add_argument("--port", type=int, required=True, help="redis-server's port on 127.0.0.1")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default: 0,1,2,3,4)")
    parser.add_argument("--scenario", default="scenario", help="function in redis_single_connection.py")
    args = parser.parse_args(argv)
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be integers separated by commas, got {args.seeds!r}")
    asyncio.run(_child(args.port, seeds, args.scenario))
    return 0


if __name__ == "__main__":
    sys.exit(main())
