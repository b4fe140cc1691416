"""Command line: parse arguments into config objects, call the library, return an exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TextIO

from sockrace import html_report, report, timeline
from sockrace import loop as loops
from sockrace.client import STRATEGIES
from sockrace.compare import CompareConfig, compare
from sockrace.counter import DEFAULT_CLIENTS, DEFAULT_COROUTINES, DEFAULT_INCREMENTS, counter
from sockrace.events import Recorder
from sockrace.outcome import RunResult
from sockrace.protocol import DEFAULT_MAX_LINE, MAX_SLEEP_MS
from sockrace.race import DEFAULT_STALL_TIMEOUT_S, run_mode
from sockrace.server import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    ServerConfig,
    serve_until_signalled,
)
from sockrace.store import DEFAULT_MAX_KEY_BYTES, DEFAULT_MAX_KEYS, DEFAULT_MAX_VALUE_BYTES
from sockrace.workload import DEFAULT_MAX_YIELDS, Plan, WorkloadConfig

DEFAULT_PORT: Final = 7777

EXIT_OK: Final = 0
EXIT_CHECK_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NETWORK: Final = 3
EXIT_INTERRUPTED: Final = 130
EXIT_BROKEN_PIPE: Final = 141  # 128 + SIGPIPE, what a shell reports for a C program cut off by `| head`

EXIT_CODES = f"""exit codes:
  {EXIT_OK}    success
  {EXIT_CHECK_FAILED}    --check: some request was not answered correctly
  {EXIT_USAGE}    bad command line (including an --html FILE that cannot be written)
  {EXIT_NETWORK}    could not listen or connect (address in use, server not running, ...)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C) before the run finished
  {EXIT_BROKEN_PIPE}  the reader of the output went away (e.g. `| head`)
"""


def _bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
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


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _add_loop_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loop", choices=loops.LOOPS, default=loops.DEFAULT_LOOP,
                        help="event loop; uvloop needs the 'fast' extra: pip install 'sockrace[fast]' "
                        "(default: %(default)s)")


def _positive_ms(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 ms")
    return value


def _add_timeout_option(parser: argparse.ArgumentParser, extra: str = "") -> None:
    parser.add_argument("--timeout", type=_positive_ms, metavar="MS",
                        help="give up on a request after this many ms (asyncio.timeout around each one); "
                        f"it counts as an error, never as a wrong answer{extra} (default: none)")


def _add_workload_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--concurrency", type=_bounded_int(1, 100_000), default=100,
                        help="coroutines sharing the one connection (default: %(default)s)")
    parser.add_argument("-n", "--requests", type=_bounded_int(1, 1_000_000), default=10,
                        help="requests per coroutine (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seeds the requests and the yield schedule (default: %(default)s)")
    parser.add_argument("--max-yields", type=_bounded_int(0, 1000), default=DEFAULT_MAX_YIELDS,
                        help="at most this many asyncio.sleep(0) between the steps of a request "
                        "(default: %(default)s)")
    parser.add_argument("--stall-timeout", type=_non_negative_float, default=DEFAULT_STALL_TIMEOUT_S,
                        help="seconds without any reply after which waiting requests count as lost "
                        "(default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockrace",
        description="See what goes wrong when many asyncio coroutines share one socket, "
        "and prove that a fix really works.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cmp = commands.add_parser(
        "compare", help="start an embedded server and run every mode side by side (the main job)",
        description="Start a server on a free port, run every mode on the same seeded workload over "
        "one real TCP connection each, and print a side-by-side table.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_workload_options(cmp)
    cmp.add_argument("--modes", default=",".join(STRATEGIES),
                     help=f"comma-separated modes to run (default: {','.join(STRATEGIES)})")
    cmp.add_argument("--delay", type=_non_negative_float, default=0.0,
                     help="server latency before each reply, in ms (default: 0)")
    cmp.add_argument("--jitter", type=_non_negative_float, default=0.0,
                     help="plus a seeded random extra of up to this many ms (default: 0)")
    _add_loop_option(cmp)
    _add_timeout_option(cmp, "; for the scenarios without a timeout of their own")
    cmp.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    cmp.add_argument("--check", action="store_true",
                     help="exit 1 if a mode that a scenario does not show failing gave a wrong answer, "
                     "lost a request, or failed one for another reason than a timeout or (guarded) a "
                     "collision it reports")
    _add_timeline_option(cmp)
    cmp.add_argument("--html", metavar="FILE",
                     help="also write a self-contained HTML report (swimlanes, crossed replies, "
                     "throughput) to FILE")

    srv = commands.add_parser(
        "server", help="run the line-protocol server until Ctrl-C or SIGTERM",
        description="Serve the sockrace line protocol (see the README) until Ctrl-C or SIGTERM.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    srv.add_argument("--port", type=_bounded_int(0, 65535), default=DEFAULT_PORT,
                     help="port to bind; 0 picks a free one and prints it (default: %(default)s)")
    srv.add_argument("--delay", type=_non_negative_float, default=0.0,
                     help="latency before each reply, in ms (default: 0)")
    srv.add_argument("--jitter", type=_non_negative_float, default=0.0,
                     help="plus a seeded random extra of up to this many ms (default: 0)")
    srv.add_argument("--seed", type=int, default=0, help="seeds the jitter (default: %(default)s)")
    srv.add_argument("--max-line", type=_bounded_int(16), default=DEFAULT_MAX_LINE,
                     help="longest request line accepted, in bytes (default: %(default)s)")
    _add_loop_option(srv)
    srv.add_argument("--max-keys", type=_bounded_int(1), default=DEFAULT_MAX_KEYS,
                     help="keys the store may hold; more is ERR FULL (default: %(default)s)")
    srv.add_argument("--max-key-size", type=_bounded_int(1), default=DEFAULT_MAX_KEY_BYTES,
                     help="longest key SET/INCR may create, in bytes (default: %(default)s)")
    srv.add_argument("--max-value-size", type=_bounded_int(1), default=DEFAULT_MAX_VALUE_BYTES,
                     help="longest value SET may store, in bytes (default: %(default)s)")
    srv.add_argument("--max-connections", type=_bounded_int(1), default=DEFAULT_MAX_CONNECTIONS,
                     help="open connections served at once; more get 'ERR BUSY ...' and are closed "
                     "(default: %(default)s; keep it below `ulimit -n`)")
    srv.add_argument("--idle-timeout", type=_non_negative_float, default=DEFAULT_IDLE_TIMEOUT_S,
                     help="seconds a connection may go without a complete request or without reading "
                     "its replies before it is closed; 0 = never (default: %(default)g)")
    srv.add_argument("--out-of-order", action="store_true",
                     help="work on all the requests of a connection at once and answer each when it is "
                     "done (only tagged requests can then be matched to their replies)")
    srv.add_argument("--unsafe-incr", action="store_true",
                     help="INCR yields between its read and its write, so concurrent INCRs lose updates "
                     "(a demonstration; the default INCR is atomic)")

    cli = commands.add_parser(
        "client", help="race many coroutines over one connection to a running server",
        description="Open ONE connection to a sockrace server and race many coroutines over it.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_argument("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    cli.add_argument("--port", type=_bounded_int(1, 65535), default=DEFAULT_PORT,
                     help="server port (default: %(default)s)")
    cli.add_argument("--mode", choices=tuple(STRATEGIES), default="unsafe",
                     help="how the coroutines share the connection (default: %(default)s)")
    _add_workload_options(cli)
    cli.add_argument("--split-writes", action="store_true",
                     help="write every request in two parts with a yield between")
    _add_timeout_option(cli)
    cli.add_argument("--slow-every", type=_bounded_int(0), default=0, metavar="N",
                     help="make one request in N a SLEEP (see --slow-ms) instead of an ECHO (default: none)")
    cli.add_argument("--slow-ms", type=_bounded_int(0, MAX_SLEEP_MS), default=30,
                     help="how long the server sleeps on those requests, in ms (default: %(default)s)")

    cnt = commands.add_parser(
        "counter", help="the lost-update race: shared memory without/with a lock, server INCR unsafe/atomic",
        description="The seed tutorial's race: N coroutines read a shared value, yield, add one, yield\n"
        "and write it back, without and with asyncio.Lock. Then the same race on a server: many\n"
        "clients, each on its own connection, INCR one key against an embedded server with\n"
        "--unsafe-incr, and with the default atomic INCR.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cnt.add_argument("-n", "--coroutines", type=_bounded_int(1, 1_000_000), default=DEFAULT_COROUTINES,
                     help="coroutines updating the shared value (default: %(default)s)")
    cnt.add_argument("--clients", type=_bounded_int(1, 500), default=DEFAULT_CLIENTS,
                     help="connections INCRing the server's key (default: %(default)s)")
    cnt.add_argument("--increments", type=_bounded_int(1, 100_000), default=DEFAULT_INCREMENTS,
                     help="INCRs per connection (default: %(default)s)")
    _add_loop_option(cnt)
    cnt.add_argument("--json", action="store_true", help="print the results as JSON")
    cnt.add_argument("--check", action="store_true",
                     help="exit 1 unless the lock and the atomic INCR both count every update")
    cli.add_argument("--trace", action="store_true",
                     help="print one line per request: coroutine, sent, received, verdict")
    _add_loop_option(cli)
    cli.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    cli.add_argument("--check", action="store_true", help="exit 1 if any request was not answered correctly")
    _add_timeline_option(cli)
    return parser


def _add_timeline_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeline", action="store_true",
                        help="print every write, read and reply in the order they happened, one column "
                        "per coroutine (meant for small runs such as -c 4 -n 3; larger ones are summarised)")


def _workload(args: argparse.Namespace, *, split_writes: bool = False) -> WorkloadConfig:
    slow_every = getattr(args, "slow_every", 0)
    return WorkloadConfig(
        concurrency=args.concurrency, requests=args.requests, seed=args.seed,
        split_writes=split_writes, max_yields=args.max_yields,
        slow_every=slow_every, slow_ms=args.slow_ms if slow_every else 0,
    )


def _fail(message: str, code: int) -> int:
    print(f"sockrace: {message}", file=sys.stderr)
    return code


def _print_results(results: Sequence[RunResult]) -> None:
    print(report.format_table(results))
    print()
    for result in results:
        print(report.sentence(result))


def _print_timelines(results: Sequence[RunResult], out: TextIO) -> None:
    colour = timeline.colour_wanted(out)
    for line in timeline.legend():
        print(line, file=out)
    for result in results:
        print(file=out)
        for line in timeline.format_timeline(result, colour=colour):
            print(line, file=out)
    print(file=out)


def run_compare(args: argparse.Namespace) -> int:
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if args.html and not Path(args.html).parent.is_dir():
        # Checked before the run, so that a typo does not cost a whole run first.
        return _fail(f"cannot write --html {args.html}: no such directory", EXIT_USAGE)
    config = CompareConfig(
        workload=_workload(args),
        server=ServerConfig(port=0, delay_ms=args.delay, jitter_ms=args.jitter, seed=args.seed),
        modes=modes,
        stall_timeout=args.stall_timeout,
        request_timeout_ms=args.timeout,
        record=args.timeline or bool(args.html),
    )
    try:
        outcome = loops.run(compare(config), args.loop)
    except ValueError as exc:
        return _fail(f"--modes: {exc}", EXIT_USAGE)
    except OSError as exc:
        return _fail(f"cannot start the embedded server: {exc}", EXIT_NETWORK)
    ratio = outcome.throughput_ratio("multiplexed", "locked")
    if args.html:
        try:
            Path(args.html).write_text(html_report.render(outcome.results), encoding="utf-8")
        except OSError as exc:
            return _fail(f"cannot write --html {args.html}: {exc.strerror or exc}", EXIT_USAGE)
        print(f"sockrace: wrote the HTML report to {args.html}", file=sys.stderr)
    if args.json:
        if args.timeline:  # to stderr, so that stdout stays one JSON document
            _print_timelines(outcome.results, sys.stderr)
        descriptions = {s.name: s.description for s in config.scenarios}
        print(json.dumps(report.compare_document(outcome.results, descriptions=descriptions,
                                                 throughput_ratio=ratio), indent=2))
    else:
        host, port = outcome.address
        print(f"sockrace compare: {args.concurrency} coroutines x {args.requests} requests, "
              f"seed {args.seed}, one connection per run to {host}:{port}\n")
        if args.timeline:
            _print_timelines(outcome.results, sys.stdout)
        _print_results(outcome.results)
        ran = {r.scenario for r in outcome.results}
        print()
        for scenario in config.scenarios:
            if scenario.name in ran:
                print(f"scenario {scenario.name}: {scenario.description}")
        if ratio is not None:
            first = outcome.results[0]
            print(f"\nthroughput, multiplexed / locked ({first.scenario}, {first.plan.config.concurrency} "
                  f"coroutines on one connection): {ratio:.1f}x")
    problems = outcome.problems()
    if args.check and problems:
        for problem in problems:
            print(f"sockrace: check failed: {problem}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return EXIT_OK


def run_client(args: argparse.Namespace) -> int:
    plan = Plan.build(_workload(args, split_writes=args.split_writes))
    try:
        result = loops.run(run_mode(
            args.host, args.port, STRATEGIES[args.mode], plan, stall_timeout=args.stall_timeout,
            request_timeout=None if args.timeout is None else args.timeout / 1000,
            recorder=Recorder() if args.timeline else None,
        ), args.loop)
    except OSError as exc:
        return _fail(f"cannot connect to {args.host}:{args.port}: {exc.strerror or exc} "
                     "(is `sockrace server` running there?)", EXIT_NETWORK)
    if args.trace:
        # With --json the trace goes to stderr, so that stdout stays one JSON document.
        out = sys.stderr if args.json else sys.stdout
        for line in report.format_trace(result):
            print(line, file=out)
    if args.timeline:
        _print_timelines([result], sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report.client_document(result), indent=2))
    else:
        if args.trace and not args.timeline:
            print()
        _print_results([result])
    if args.check and not result.perfect:
        return EXIT_CHECK_FAILED
    return EXIT_OK


def run_server(args: argparse.Namespace) -> int:
    if args.host in ("", "0.0.0.0", "::"):
        print(f"sockrace: warning: binding {args.host or 'all interfaces'} exposes the server to the network",
              file=sys.stderr)
    config = ServerConfig(host=args.host, port=args.port, delay_ms=args.delay, jitter_ms=args.jitter,
                          seed=args.seed, max_line=args.max_line, max_keys=args.max_keys,
                          max_key_bytes=args.max_key_size, max_value_bytes=args.max_value_size,
                          max_connections=args.max_connections, idle_timeout_s=args.idle_timeout,
                          out_of_order=args.out_of_order, unsafe_incr=args.unsafe_incr)
    try:
        loops.run(serve_until_signalled(config, lambda line: print(line, flush=True)), args.loop)
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", EXIT_NETWORK)
    return EXIT_OK


def run_counter(args: argparse.Namespace) -> int:
    try:
        result = loops.run(counter(args.coroutines, args.clients, args.increments), args.loop)
    except OSError as exc:
        return _fail(f"cannot run the embedded server: {exc.strerror or exc}", EXIT_NETWORK)
    if args.json:
        print(json.dumps(report.counter_document(result), indent=2))
    else:
        print("\n".join(report.format_counter(result)))
    if args.check and not result.fixes_hold:
        return EXIT_CHECK_FAILED
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "compare": run_compare,
    "counter": run_counter,
    "client": run_client,
    "server": run_server,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except loops.LoopUnavailable as exc:
        return _fail(f"--loop {args.loop}: {exc}", EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader (`| head`) has gone: say nothing more, and keep the interpreter's final flush of
        # stdout from raising the same error again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
