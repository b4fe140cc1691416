"""What running a check's scenario in a driver costs: `python benchmarks/driver_cost.py [--rounds N]`.

The same check (examples/sockrace_clients.py's locked client, 10 tasks x 20 calls, auto deadlines,
seed by round) against one sockrace server process, run in sockrace's own process and through the
shipped Python driver (`--python`, this interpreter or `--python PATH`), rounds interleaved so that
drift in the machine hits both alike. Printed: the median wall time of the whole check (the proxy,
the scenario's set-up, the calls, the clean-up; for the driver also starting its process), the
median of the calls alone (result.elapsed_s), and the median of the round-by-round ratios with their
range. Goal (issue 22): a driver run at most 2x the in-process one (GOAL).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # run from a checkout, too
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # and `benchmarks` as a package

from benchmarks.arguments import positive_int
from sockrace.check.driver_commands import driver_command
from sockrace.check.runner import CheckConfig, run_check

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = f"{ROOT / 'examples' / 'sockrace_clients.py'}:reconnecting"
GOAL = 2.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int, seconds: float = 10.0) -> None:
    ends_at = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > ends_at:
                raise
            time.sleep(0.05)


async def _one(config: CheckConfig) -> tuple[float, float]:
    started = time.perf_counter()
    run = await run_check(config)
    if not run.result.ok:
        raise SystemExit(f"the locked client failed: {run.result.summary()}")
    return time.perf_counter() - started, run.result.elapsed_s


def _ratios(a: list[float], b: list[float]) -> str:
    ratios = [y / x for x, y in zip(a, b, strict=True)]
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=10)
    parser.add_argument("--python", default=sys.executable,
                        help="the driver's interpreter (default: this one)")
    parser.add_argument("--tasks", type=positive_int, default=10)
    parser.add_argument("--calls", type=positive_int, default=20)
    args = parser.parse_args(argv)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "sockrace", "server", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port)
        inside: list[tuple[float, float]] = []
        driven: list[tuple[float, float]] = []
        for round_ in range(args.rounds + 1):  # round 0 warms both up and is not counted
            sides = [(inside, None), (driven, driver_command(python=args.python))]
            for into, driver in sides if round_ % 2 else reversed(sides):
                config = CheckConfig(SCENARIO, ("127.0.0.1", port), seed=round_, tasks=args.tasks,
                                     calls=args.calls, deadline_s=30, driver=driver)
                figures = asyncio.run(_one(config))
                if round_:
                    into.append(figures)
    finally:
        server.terminate()
        server.wait(10)
    whole_in, calls_in = [w for w, _ in inside], [c for _, c in inside]
    whole_dr, calls_dr = [w for w, _ in driven], [c for _, c in driven]
    print(f"driver cost: {args.tasks} tasks x {args.calls} calls, {args.rounds} rounds, "
          f"driver under {args.python}")
    print(f"  whole check: in process {statistics.median(whole_in) * 1000:.0f} ms, "
          f"driver {statistics.median(whole_dr) * 1000:.0f} ms, ratio {_ratios(whole_in, whole_dr)}")
    print(f"  calls only:  in process {statistics.median(calls_in) * 1000:.0f} ms, "
          f"driver {statistics.median(calls_dr) * 1000:.0f} ms, ratio {_ratios(calls_in, calls_dr)} "
          f"(goal <= {GOAL:g}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
