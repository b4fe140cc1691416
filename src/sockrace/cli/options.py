"""The command line's parser, option types and the options several commands share: each defined once.

argparse only: a command's parser refuses what contradicts itself (CommandParser); a type turns one
argument into a value or a one-line usage error; an `add_*` function adds the same option, with the
same help, to every command that takes it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from sockrace.cli.output import EXIT_CODES
from sockrace.errors import UsageError

if TYPE_CHECKING:
    from sockrace.workload import WorkloadConfig

DEFAULT_PORT: Final = 7777  # the server's, and where the client looks for it
# check.faults' bound on a delay, repeated so that building the parser imports nothing of
# sockrace.check; test_cli_check pins it to the library's.
MAX_DELAY_MS: Final = 60_000.0
# The library's defaults and bounds that help shows, repeated so that building a parser imports
# neither asyncio nor the modules that define them (sockrace.loop, race, server, workload): a
# command imports what it runs when it runs. tests/test_cli_startup.py pins each to the library's.
LOOPS: Final = ("asyncio", "uvloop")  # sockrace.loop.LOOPS
DEFAULT_LOOP: Final = "asyncio"  # sockrace.loop.DEFAULT_LOOP
DEFAULT_STALL_TIMEOUT_S: Final = 1.0  # sockrace.race.DEFAULT_STALL_TIMEOUT_S
MAX_IDLE_TIMEOUT_S: Final = 365 * 24 * 3600.0  # sockrace.server.MAX_IDLE_TIMEOUT_S
DEFAULT_MAX_YIELDS: Final = 3  # sockrace.workload.DEFAULT_MAX_YIELDS

# ------------------------------------------------------------------ a command's parser


class CommandParser(argparse.ArgumentParser):
    """A command's parser. What it refuses, it refuses as argparse refuses a bad value: its usage,
    then one line named after the command (`sockrace check: error: ...`), exit 2:

    - an argument the command does not know (argparse would hand it up to the top-level parser,
      whose usage and error name no command);
    - options that exclude each other (`exclusive`: argparse's mutually exclusive groups, where
      one option may sit in several);
    - an option given without the one it refines (`needs`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._needs: list[tuple[argparse.Action, argparse.Action]] = []

    def exclusive(self, *actions: argparse.Action) -> None:
        """At most one of `actions` (options already added). argparse's groups take an option
        once, when it is added; an option in two groups (--replay excludes --seed, and --shrink too,
        which goes with --seed) is appended to the second as argparse's add_argument appends it."""
        group = self.add_mutually_exclusive_group()
        group._group_actions.extend(actions)

    def needs(self, option: argparse.Action, needed: argparse.Action) -> None:
        """`option` means nothing without `needed` (e.g. --all without --seeds)."""
        self._needs.append((option, needed))

    def parse_known_args(self, args: Iterable[str] | None = None,
                         namespace: Any = None) -> tuple[Any, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        for option, needed in self._needs:
            if _given(parsed, option) and not _given(parsed, needed):
                self.error(f"argument {option.option_strings[-1]}: needs {needed.option_strings[-1]}")
        return parsed, extras


def _given(parsed: argparse.Namespace, action: argparse.Action) -> bool:
    # As argparse tells a mutually exclusive option given: its value is not its default.
    return getattr(parsed, action.dest) is not action.default


Commands: TypeAlias = "argparse._SubParsersAction[CommandParser]"


def add_command(commands: Commands, name: str, summary: str, description: str) -> CommandParser:
    """A command's parser, its --help closed by the exit codes."""
    return commands.add_parser(
        name, help=summary, description=description,
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )


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
    parser.add_argument("--loop", choices=LOOPS, default=DEFAULT_LOOP,
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


def read_workload(args: argparse.Namespace, *, split_writes: bool = False) -> WorkloadConfig:
    """The workload add_workload_options asks for (with the client's --slow-every, when it has it)."""
    from sockrace.workload import WorkloadConfig

    slow_every = getattr(args, "slow_every", 0)
    try:
        return WorkloadConfig(
            concurrency=args.concurrency, requests=args.requests, seed=args.seed,
            split_writes=split_writes, max_yields=args.max_yields,
            slow_every=slow_every, slow_ms=args.slow_ms if slow_every else 0,
        )
    except ValueError as exc:
        raise UsageError(f"-c/--concurrency and -n/--requests: {exc}") from None


def add_report_options(parser: argparse.ArgumentParser, check: str) -> None:
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--check", action="store_true", help=check)


def add_timeline_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeline", action="store_true",
                        help="print every write, read and reply in the order they happened, one column "
                        "per coroutine (meant for small runs such as -c 4 -n 3; larger ones are summarised)")
