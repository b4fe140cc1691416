"""The `client` command: argparse only. Read its arguments once into a ClientCommand (the library's
WorkloadConfig, the strategy, the connection's address and timeouts), race the coroutines over one
connection to a running server (sockrace.race), print, return an exit code (cli/output.py, EXIT_CODES)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sockrace import loop as loops
from sockrace.cli.options import (
    DEFAULT_PORT,
    Commands,
    add_command,
    add_loop_option,
    add_report_options,
    add_timeline_option,
    add_timeout_option,
    add_workload_options,
    bounded_int,
    read_workload,
)
from sockrace.cli.output import (
    EXIT_CHECK_FAILED,
    EXIT_NETWORK,
    EXIT_OK,
    emit,
    emit_lines,
    fail,
    print_results,
    print_timelines,
)
from sockrace.client import STRATEGIES
from sockrace.protocol import MAX_SLEEP_MS

if TYPE_CHECKING:
    from sockrace.workload import WorkloadConfig


def add_client_command(commands: Commands) -> None:
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


@dataclass(frozen=True, slots=True)
class ClientCommand:
    """`sockrace client` as its command line asked for it."""

    host: str
    port: int
    mode: str  # a key of client.STRATEGIES
    workload: WorkloadConfig  # its plan is built once connected
    stall_timeout: float
    request_timeout_s: float | None
    loop: str = loops.DEFAULT_LOOP
    trace: bool = False
    timeline: bool = False
    json: bool = False
    check: bool = False


def read(args: argparse.Namespace) -> ClientCommand:
    """The client run that `args` asks for; all that follows reads this, not `args`."""
    timeout = None if args.timeout is None else args.timeout / 1000
    return ClientCommand(args.host, args.port, args.mode, read_workload(args, split_writes=args.split_writes),
                         stall_timeout=args.stall_timeout, request_timeout_s=timeout, loop=args.loop,
                         trace=args.trace, timeline=args.timeline, json=args.json, check=args.check)


def run_client_command(args: argparse.Namespace) -> int:
    return run(read(args))


def run(command: ClientCommand) -> int:
    from sockrace import report
    from sockrace.events import Recorder
    from sockrace.race import run_mode

    try:
        result = loops.run(run_mode(
            command.host, command.port, STRATEGIES[command.mode], command.workload,
            stall_timeout=command.stall_timeout, request_timeout=command.request_timeout_s,
            recorder=Recorder() if command.timeline else None,
        ), command.loop)
    except OSError as exc:
        return fail(f"cannot connect to {command.host}:{command.port}: {exc.strerror or exc} "
                    "(is `sockrace server` running there?)", EXIT_NETWORK)
    # With --json the trace and the timeline go to stderr, so that stdout stays one JSON document.
    side = sys.stderr if command.json else sys.stdout
    if command.trace:
        emit_lines(report.format_trace(result), side)
    if command.timeline:
        print_timelines([result], side)
    if command.json:
        emit(json.dumps(report.client_document(result), indent=2))
    else:
        if command.trace and not command.timeline:
            emit()
        print_results([result])
    if command.check and not result.perfect:
        return EXIT_CHECK_FAILED
    return EXIT_OK
