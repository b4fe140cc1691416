"""Command line: parse arguments into config objects, call the library, return an exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TextIO

from sockrace import html_report, report, timeline
from sockrace.client import STRATEGIES
from sockrace.compare import CompareConfig, compare
from sockrace.events import Recorder
from sockrace.protocol import DEFAULT_MAX_LINE
from sockrace.race import DEFAULT_STALL_TIMEOUT_S, RunResult, run_mode
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

EXIT_CODES = f"""exit codes:
  {EXIT_OK}    success
  {EXIT_CHECK_FAILED}    --check: some request was not answered correctly
  {EXIT_USAGE}    bad command line (including an --html FILE that cannot be written)
  {EXIT_NETWORK}    could not listen or connect (address in use, server not running, ...)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C) before the run finished
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
    cmp.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    cmp.add_argument("--check", action="store_true",
                     help="exit 1 unless every mode other than 'unsafe' answered every request correctly")
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
    cli.add_argument("--trace", action="store_true",
                     help="print one line per request: coroutine, sent, received, verdict")
    cli.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    cli.add_argument("--check", action="store_true", help="exit 1 if any request was not answered correctly")
    _add_timeline_option(cli)
    return parser


def _add_timeline_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeline", action="store_true",
                        help="print every write, read and reply in the order they happened, one column "
                        "per coroutine (meant for small runs such as -c 4 -n 3; larger ones are summarised)")


def _workload(args: argparse.Namespace, *, split_writes: bool = False) -> WorkloadConfig:
    return WorkloadConfig(
        concurrency=args.concurrency, requests=args.requests, seed=args.seed,
        split_writes=split_writes, max_yields=args.max_yields,
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
        record=args.timeline or bool(args.html),
    )
    try:
        outcome = asyncio.run(compare(config))
    except ValueError as exc:
        return _fail(f"--modes: {exc}", EXIT_USAGE)
    except OSError as exc:
        return _fail(f"cannot start the embedded server: {exc}", EXIT_NETWORK)
    if args.html:
        try:
            Path(args.html).write_text(html_report.render(outcome.results), encoding="utf-8")
        except OSError as exc:
            return _fail(f"cannot write --html {args.html}: {exc.strerror or exc}", EXIT_USAGE)
        print(f"sockrace: wrote the HTML report to {args.html}", file=sys.stderr)
    if args.json:
        if args.timeline:  # to stderr, so that stdout stays one JSON document
            _print_timelines(outcome.results, sys.stderr)
        print(json.dumps(report.compare_document(outcome.results), indent=2))
    else:
        host, port = outcome.address
        print(f"sockrace compare: {args.concurrency} coroutines x {args.requests} requests, "
              f"seed {args.seed}, one connection per run to {host}:{port}\n")
        if args.timeline:
            _print_timelines(outcome.results, sys.stdout)
        _print_results(outcome.results)
    if args.check and not all(r.perfect for r in outcome.results if r.mode != "unsafe"):
        return EXIT_CHECK_FAILED
    return EXIT_OK


def run_client(args: argparse.Namespace) -> int:
    plan = Plan.build(_workload(args, split_writes=args.split_writes))
    try:
        result = asyncio.run(run_mode(args.host, args.port, STRATEGIES[args.mode], plan,
                                      stall_timeout=args.stall_timeout,
                                      recorder=Recorder() if args.timeline else None))
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
                          max_connections=args.max_connections, idle_timeout_s=args.idle_timeout)
    try:
        asyncio.run(serve_until_signalled(config, lambda line: print(line, flush=True)))
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", EXIT_NETWORK)
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "compare": run_compare,
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
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
