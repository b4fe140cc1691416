"""The command line's option types and the options several commands share: each defined once.

argparse only: a type turns one argument into a value or a one-line usage error; an `add_*`
function adds the same option, with the same help, to every command that takes it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Final

from sockrace import loop as loops
from sockrace.race import DEFAULT_STALL_TIMEOUT_S
from sockrace.server import MAX_IDLE_TIMEOUT_S
from sockrace.workload import DEFAULT_MAX_YIELDS

# check.faults' bound on a delay, repeated so that building the parser imports nothing of
# sockrace.check; test_cli_check pins it to the library's.
MAX_DELAY_MS: Final = 60_000.0

# ------------------------------------------------------------------ argument types


def bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(unit: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = non_negative_float(text)
        if value == 0:
            raise argparse.ArgumentTypeError(f"must be more than 0 {unit}")
        return value

    return parse


def address(lowest_port: int) -> Callable[[str], tuple[str, int]]:
    """HOST:PORT, or [IPv6]:PORT, with a port from `lowest_port` to 65535."""
    def parse(text: str) -> tuple[str, int]:
        host, colon, port = text.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not colon or not host or not port.isdigit() or not lowest_port <= int(port) <= 65535:
            raise argparse.ArgumentTypeError(
                f"expected HOST:PORT with a port from {lowest_port} to 65535, got {text!r}")
        return host, int(port)

    return parse


def ms_range(text: str) -> tuple[float, float]:
    """LO-HI in ms (or one number N, meaning N-N)."""
    low, dash, high = text.partition("-")
    try:
        lo, hi = float(low), float(high if dash else low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO-HI in ms (e.g. 1-5), got {text!r}") from None
    if not (0 <= lo <= hi <= MAX_DELAY_MS):
        raise argparse.ArgumentTypeError(
            f"expected LO-HI with 0 <= LO <= HI <= {MAX_DELAY_MS:g} ms, got {text!r}")
    return lo, hi


def call_timeout(text: str) -> tuple[float, float] | str | None:
    """auto, none, or LO-HI in ms with LO above 0."""
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    lo, hi = ms_range(text)
    if lo <= 0:
        raise argparse.ArgumentTypeError(f"expected auto, none or LO-HI in ms with LO above 0, got {text!r}")
    return lo, hi


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1, got {text!r}")
    return value


def idle_timeout(text: str) -> float:
    value = non_negative_float(text)
    if value > MAX_IDLE_TIMEOUT_S:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_IDLE_TIMEOUT_S:g} s (a year; 0 means never), got {text}"
        )
    return value


# ------------------------------------------------------------------ options shared by several commands


def add_loop_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loop", choices=loops.LOOPS, default=loops.DEFAULT_LOOP,
                        help="event loop; uvloop needs the 'fast' extra: pip install 'sockrace[fast]' "
                        "(default: %(default)s)")


def add_timeout_option(parser: argparse.ArgumentParser, extra: str = "") -> None:
    parser.add_argument("--timeout", type=positive_float("ms"), metavar="MS",
                        help="give up on a request after this many ms (asyncio.timeout around each one); "
                        f"it counts as an error, never as a wrong answer{extra} (default: none)")


def add_latency_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--delay", type=non_negative_float, default=0.0, metavar="MS",
                        help="the server's latency before each reply, in ms (default: 0)")
    parser.add_argument("--jitter", type=non_negative_float, default=0.0, metavar="MS",
                        help="plus a seeded random extra of up to this many ms (default: 0)")


def add_workload_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--concurrency", type=bounded_int(1, 100_000), default=100,
                        help="coroutines sharing the one connection (default: %(default)s)")
    parser.add_argument("-n", "--requests", type=bounded_int(1, 1_000_000), default=10,
                        help="requests per coroutine (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seeds the requests and the yield schedule (default: %(default)s)")
    parser.add_argument("--max-yields", type=bounded_int(0, 1000), default=DEFAULT_MAX_YIELDS, metavar="N",
                        help="at most this many asyncio.sleep(0) between the steps of a request "
                        "(default: %(default)s)")
    parser.add_argument("--stall-timeout", type=positive_float("s"), default=DEFAULT_STALL_TIMEOUT_S,
                        metavar="S",
                        help="seconds without any reply after which waiting requests count as lost; "
                        "more than 0 (default: %(default)s)")


def add_report_options(parser: argparse.ArgumentParser, check: str) -> None:
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--check", action="store_true", help=check)


def add_timeline_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeline", action="store_true",
                        help="print every write, read and reply in the order they happened, one column "
                        "per coroutine (meant for small runs such as -c 4 -n 3; larger ones are summarised)")
