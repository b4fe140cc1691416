"""Command line: parse arguments into config objects, call the library, return an exit code."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn, cast

from sockrace import __version__, html_report, report
from sockrace import loop as loops
from sockrace.cli.check import add_check_command, run_check_command
from sockrace.cli.options import (
    CommandParser,
    Commands,
    add_command,
    add_latency_options,
    add_loop_option,
    add_report_options,
    add_timeline_option,
    add_timeout_option,
    add_workload_options,
    bounded_int,
    idle_timeout,
)
from sockrace.cli.output import (
    EXIT_BROKEN_PIPE,
    EXIT_CHECK_FAILED,
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_SCENARIO,
    EXIT_USAGE,
    OutputError,
    UsageError,
    emit,
    emit_lines,
    fail,
    print_results,
    print_timelines,
)
from sockrace.cli.proxy import add_proxy_command, run_proxy_command
from sockrace.cli.replay import add_replay_command, run_replay_command
from sockrace.client import STRATEGIES
from sockrace.compare import CompareConfig, CompareResult, compare
from sockrace.counter import DEFAULT_CLIENTS, DEFAULT_COROUTINES, DEFAULT_INCREMENTS, counter
from sockrace.events import Recorder
from sockrace.protocol import DEFAULT_MAX_LINE, MAX_SLEEP_MS
from sockrace.race import run_mode
from sockrace.server import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    MAX_IDLE_TIMEOUT_S,
    ServerConfig,
    serve_until_signalled,
)
from sockrace.store import DEFAULT_MAX_KEY_BYTES, DEFAULT_MAX_KEYS, DEFAULT_MAX_VALUE_BYTES
from sockrace.workload import WorkloadConfig

__all__ = [  # the exit codes are defined in cli/output.py and named here too, where callers look
    "EXIT_BROKEN_PIPE", "EXIT_CHECK_FAILED", "EXIT_CODES", "EXIT_INTERRUPTED", "EXIT_NETWORK", "EXIT_OK",
    "EXIT_OUTPUT", "EXIT_SCENARIO", "EXIT_USAGE", "build_parser", "main", "version",
]

DEFAULT_PORT: Final = 7777


# ------------------------------------------------------------------ one function per command


def version() -> str:
    """The installed distribution's version; run from a source tree that is not installed, the package's own
    `sockrace.__version__` (which pyproject.toml reads, so the two agree)."""
    from importlib import metadata  # only for --version: it costs a third of `import sockrace.cli`

    try:
        return metadata.version("sockrace")
    except metadata.PackageNotFoundError:
        return __version__


class _VersionAction(argparse.Action):
    """--version: `sockrace X.Y.Z`, one line on stdout, and exit 0. Unlike argparse's own version action it
    looks the version up only when asked, and a failed write is the output's error (exit 4; 141 when the
    reader has gone), as for any other output."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> NoReturn:
        emit(f"sockrace {version()}", flush=True)
        parser.exit()


def _add_compare_command(commands: Commands) -> None:
    parser = add_command(
        commands, "compare", "start an embedded server and run every mode side by side (the main job)",
        "Start a server on a free port, run every mode on the same seeded workload over one real TCP\n"
        "connection each, and print a side-by-side table.",
    )
    add_workload_options(parser)
    parser.add_argument("--modes", default=",".join(STRATEGIES),
                        help=f"comma-separated modes to run (default: {','.join(STRATEGIES)})")
    add_latency_options(parser)
    add_loop_option(parser)
    add_timeout_option(parser, "; for the scenarios without a timeout of their own")
    add_report_options(parser, "exit 1 if a mode that a scenario does not show failing gave a wrong "
                        "answer, lost a request, or failed one for another reason than a timeout or "
                        "(guarded) a collision it reports")
    add_timeline_option(parser)
    parser.add_argument("--html", metavar="FILE",
                        help="also write a self-contained HTML report (swimlanes, crossed replies, "
                        "throughput) to FILE")


def _add_server_command(commands: Commands) -> None:
    parser = add_command(
        commands, "server", "run the line-protocol server until Ctrl-C or SIGTERM",
        "Serve the sockrace line protocol (see the README) until Ctrl-C or SIGTERM. It has no\n"
        "authentication: binding every interface (0.0.0.0, ::, 0, ...) prints a warning.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=bounded_int(0, 65535), default=DEFAULT_PORT,
                        help="port to bind; 0 picks a free one and prints it (default: %(default)s)")
    add_latency_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="seeds the jitter (default: %(default)s)")
    parser.add_argument("--max-line", type=bounded_int(16), default=DEFAULT_MAX_LINE,
                        help="longest request line accepted, in bytes (default: %(default)s)")
    add_loop_option(parser)
    parser.add_argument("--max-keys", type=bounded_int(1), default=DEFAULT_MAX_KEYS,
                        help="keys the store may hold; more is ERR FULL (default: %(default)s)")
    parser.add_argument("--max-key-size", type=bounded_int(1), default=DEFAULT_MAX_KEY_BYTES,
                        help="longest key SET/INCR may create, in bytes (default: %(default)s)")
    parser.add_argument("--max-value-size", type=bounded_int(1), default=DEFAULT_MAX_VALUE_BYTES,
                        help="longest value SET may store, in bytes (default: %(default)s)")
    parser.add_argument("--max-connections", type=bounded_int(1), default=DEFAULT_MAX_CONNECTIONS,
                        help="open connections served at once; more get 'ERR BUSY ...' and are closed "
                        "(default: %(default)s; keep it below `ulimit -n`)")
    parser.add_argument("--idle-timeout", type=idle_timeout, default=DEFAULT_IDLE_TIMEOUT_S, metavar="S",
                        help="seconds a connection may go without a complete request or without reading "
                        f"its replies before it is closed; 0 = never, at most {MAX_IDLE_TIMEOUT_S:g} "
                        "(default: %(default)g)")
    parser.add_argument("--out-of-order", action="store_true",
                        help="work on all the requests of a connection at once and answer each when it is "
                        "done (only tagged requests can then be matched to their replies)")
    parser.add_argument("--unsafe-incr", action="store_true",
                        help="INCR yields between its read and its write, so concurrent INCRs lose updates "
                        "(a demonstration; the default INCR is atomic)")


def _add_client_command(commands: Commands) -> None:
    parser = add_command(
        commands, "client", "race many coroutines over one connection to a running server",
        "Open ONE connection to a sockrace server and race many coroutines over it.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    parser.add_argument("--port", type=bounded_int(1, 65535), default=DEFAULT_PORT,
                        help="server port (default: %(default)s)")
    parser.add_argument("--mode", choices=tuple(STRATEGIES), default="unsafe",
                        help="how the coroutines share the connection (default: %(default)s)")
    add_workload_options(parser)
    parser.add_argument("--split-writes", action="store_true",
                        help="write every request in two parts with a yield between")
    add_timeout_option(parser)
    parser.add_argument("--slow-every", type=bounded_int(0), default=0, metavar="N",
                        help="make one request in N a SLEEP (see --slow-ms) instead of an ECHO "
                        "(default: none)")
    parser.add_argument("--slow-ms", type=bounded_int(0, MAX_SLEEP_MS), default=30,
                        help="how long the server sleeps on those requests, in ms (default: %(default)s)")
    parser.add_argument("--trace", action="store_true",
                        help="print one line per request: coroutine, sent, received, verdict")
    add_loop_option(parser)
    add_report_options(parser, "exit 1 if any request was not answered correctly")
    add_timeline_option(parser)


def _add_counter_command(commands: Commands) -> None:
    parser = add_command(
        commands, "counter",
        "the lost-update race: shared memory without/with a lock, server INCR unsafe/atomic",
        "The seed tutorial's race: N coroutines read a shared value, yield, add one, yield\n"
        "and write it back, without and with asyncio.Lock. Then the same race on a server: many\n"
        "clients, each on its own connection, INCR one key against an embedded server with\n"
        "--unsafe-incr, and with the default atomic INCR. Every client and the server share this\n"
        "process: --clients N needs about 2 x N file descriptors (see `ulimit -n`).",
    )
    parser.add_argument("-n", "--coroutines", type=bounded_int(1, 1_000_000), default=DEFAULT_COROUTINES,
                        help="coroutines updating the shared value (default: %(default)s)")
    parser.add_argument("--clients", type=bounded_int(1, 500), default=DEFAULT_CLIENTS,
                        help="connections INCRing the server's key (default: %(default)s)")
    parser.add_argument("--increments", type=bounded_int(1, 100_000), default=DEFAULT_INCREMENTS,
                        help="INCRs per connection (default: %(default)s)")
    add_loop_option(parser)
    add_report_options(parser, "exit 1 unless the lock and the atomic INCR both count every update")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockrace",
        description="See what goes wrong when many asyncio coroutines share one socket, "
        "and prove that a fix really works.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="print `sockrace X.Y.Z` and exit")
    # Every command's parser is a CommandParser; add_parser() is all the commands call on it.
    commands = cast(Commands, parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                                    parser_class=CommandParser))
    for add in (_add_compare_command, _add_server_command, _add_client_command, _add_counter_command,
                add_check_command, add_replay_command, add_proxy_command):
        add(commands)
    return parser


# ------------------------------------------------------------------ running the commands


def _workload(args: argparse.Namespace, *, split_writes: bool = False) -> WorkloadConfig:
    slow_every = getattr(args, "slow_every", 0)
    try:
        return WorkloadConfig(
            concurrency=args.concurrency, requests=args.requests, seed=args.seed,
            split_writes=split_writes, max_yields=args.max_yields,
            slow_every=slow_every, slow_ms=args.slow_ms if slow_every else 0,
        )
    except ValueError as exc:
        raise UsageError(f"-c/--concurrency and -n/--requests: {exc}") from None


def _print_compare_json(args: argparse.Namespace, config: CompareConfig, outcome: CompareResult) -> None:
    if args.timeline:  # to stderr, so that stdout stays one JSON document
        print_timelines(outcome.results, sys.stderr)
    descriptions = {s.name: s.description for s in config.scenarios}
    ratio = outcome.throughput_ratio("multiplexed", "locked")
    emit(json.dumps(report.compare_document(outcome.results, descriptions=descriptions,
                                             throughput_ratio=ratio), indent=2))


def _print_compare_text(args: argparse.Namespace, config: CompareConfig, outcome: CompareResult) -> None:
    host, port = outcome.address
    emit(f"sockrace compare: {args.concurrency} coroutines x {args.requests} requests, "
          f"seed {args.seed}, one connection per run to {host}:{port}\n")
    if args.timeline:
        print_timelines(outcome.results, sys.stdout)
    print_results(outcome.results)
    ran = {r.scenario for r in outcome.results}
    emit()
    emit_lines(f"scenario {scenario.name}: {scenario.description}"
                for scenario in config.scenarios if scenario.name in ran)
    ratio = outcome.throughput_ratio("multiplexed", "locked")
    if ratio is not None:
        first = outcome.results[0]
        emit(f"\nthroughput, multiplexed / locked ({first.scenario}, {first.plan.config.concurrency} "
              f"coroutines on one connection): {ratio:.1f}x")


def run_compare(args: argparse.Namespace) -> int:
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if args.html and not Path(args.html).parent.is_dir():
        # Checked before the run, so that a typo does not cost a whole run first.
        return fail(f"cannot write --html {args.html}: no such directory", EXIT_USAGE)
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
        return fail(f"--modes: {exc}", EXIT_USAGE)
    except OSError as exc:
        return fail(f"cannot start the embedded server: {exc.strerror or exc}", EXIT_NETWORK)
    if args.html:
        try:
            Path(args.html).write_text(html_report.render(outcome.results), encoding="utf-8")
        except OSError as exc:
            return fail(f"cannot write --html {args.html}: {exc.strerror or exc}", EXIT_USAGE)
        emit(f"sockrace: wrote the HTML report to {args.html}", sys.stderr)
    if args.json:
        _print_compare_json(args, config, outcome)
    else:
        _print_compare_text(args, config, outcome)
    problems = outcome.problems()
    if args.check and problems:
        emit_lines((f"sockrace: check failed: {problem}" for problem in problems), sys.stderr)
        return EXIT_CHECK_FAILED
    return EXIT_OK


def run_client(args: argparse.Namespace) -> int:
    workload = _workload(args, split_writes=args.split_writes)  # its plan is built once connected
    try:
        result = loops.run(run_mode(
            args.host, args.port, STRATEGIES[args.mode], workload, stall_timeout=args.stall_timeout,
            request_timeout=None if args.timeout is None else args.timeout / 1000,
            recorder=Recorder() if args.timeline else None,
        ), args.loop)
    except OSError as exc:
        return fail(f"cannot connect to {args.host}:{args.port}: {exc.strerror or exc} "
                     "(is `sockrace server` running there?)", EXIT_NETWORK)
    # With --json the trace and the timeline go to stderr, so that stdout stays one JSON document.
    side = sys.stderr if args.json else sys.stdout
    if args.trace:
        emit_lines(report.format_trace(result), side)
    if args.timeline:
        print_timelines([result], side)
    if args.json:
        emit(json.dumps(report.client_document(result), indent=2))
    else:
        if args.trace and not args.timeline:
            emit()
        print_results([result])
    if args.check and not result.perfect:
        return EXIT_CHECK_FAILED
    return EXIT_OK


def _wildcard_address(host: str, port: int) -> str | None:
    """The unspecified address (every interface) that `host` binds, whatever its spelling ("0",
    "0x0", "::0", ...), or None. Decided by resolving it as the server will; a name that does not
    resolve binds nothing, and the server says so."""
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return None
    for *_, sockaddr in found:
        address = str(sockaddr[0]).partition("%")[0]
        if ipaddress.ip_address(address).is_unspecified:
            return address
    return None


def _warn_if_exposed(host: str, port: int) -> None:
    address = _wildcard_address(host, port)
    if address is None:
        return
    named = "all interfaces" if not host else host if host == address else f"{host} ({address})"
    emit(f"sockrace: warning: binding {named} exposes the server to the network", sys.stderr)


def run_server(args: argparse.Namespace) -> int:
    _warn_if_exposed(args.host, args.port)
    config = ServerConfig(host=args.host, port=args.port, delay_ms=args.delay, jitter_ms=args.jitter,
                          seed=args.seed, max_line=args.max_line, max_keys=args.max_keys,
                          max_key_bytes=args.max_key_size, max_value_bytes=args.max_value_size,
                          max_connections=args.max_connections, idle_timeout_s=args.idle_timeout,
                          out_of_order=args.out_of_order, unsafe_incr=args.unsafe_incr)
    try:
        loops.run(serve_until_signalled(config, lambda line: emit(line, flush=True)), args.loop)
    except OSError as exc:
        return fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", EXIT_NETWORK)
    return EXIT_OK


def run_counter(args: argparse.Namespace) -> int:
    try:
        result = loops.run(counter(args.coroutines, args.clients, args.increments), args.loop)
    except OSError as exc:
        hint = ""
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            hint = (f" ({args.clients} clients and the server in this process need about "
                    f"{2 * args.clients} file descriptors: raise `ulimit -n` or lower --clients)")
        return fail(f"cannot run the embedded server: {exc.strerror or exc}{hint}", EXIT_NETWORK)
    if args.json:
        emit(json.dumps(report.counter_document(result), indent=2))
    else:
        emit_lines(report.format_counter(result))
    if args.check and not result.fixes_hold:
        return EXIT_CHECK_FAILED
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "compare": run_compare,
    "counter": run_counter,
    "client": run_client,
    "server": run_server,
    "check": run_check_command,
    "replay": run_replay_command,
    "proxy": run_proxy_command,
}


def _run(args: argparse.Namespace) -> int:
    """The command, then the flush of what it printed: with stdout a file, a full disk is only
    noticed there."""
    code = COMMANDS[args.command](args)
    try:
        sys.stdout.flush()
    except OSError as exc:
        raise OutputError(exc.strerror or str(exc)) from exc
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of what is still buffered
    does not fail again at exit (it would print a traceback and change the exit code to 120)."""
    try:
        stdout = sys.stdout.fileno()
    except (OSError, ValueError):  # not a file (main() called with stdout replaced): nothing to flush
        return
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), stdout)


def _output_failed(exc: OutputError) -> int:
    _silence_stdout()
    if isinstance(exc.__cause__, BrokenPipeError):  # the reader (`| head`) has gone: say no more
        return EXIT_BROKEN_PIPE
    return fail(f"cannot write the output: {exc}", EXIT_OUTPUT)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except OutputError as exc:  # --version could not be written
        return _output_failed(exc)
    try:
        return _run(args)
    except loops.LoopUnavailable as exc:
        return fail(f"--loop {args.loop}: {exc}", EXIT_USAGE)
    except UsageError as exc:
        return fail(f"{args.command}: {exc}", EXIT_USAGE)
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_INTERRUPTED)
    except OutputError as exc:
        return _output_failed(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
