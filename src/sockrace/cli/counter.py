"""The `counter` command: argparse only. Read its arguments once into a CounterCommand, run the
lost-update race in memory and against an embedded server (sockrace.counter), print, return an exit
code (cli/output.py, EXIT_CODES)."""

from __future__ import annotations

import argparse
import errno
import json
from dataclasses import dataclass

from sockrace import loop as loops
from sockrace.cli.options import Commands, add_command, add_loop_option, add_report_options, bounded_int
from sockrace.cli.output import EXIT_CHECK_FAILED, EXIT_NETWORK, EXIT_OK, emit, emit_lines, fail
from sockrace.counter import DEFAULT_CLIENTS, DEFAULT_COROUTINES, DEFAULT_INCREMENTS


def add_counter_command(commands: Commands) -> None:
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


@dataclass(frozen=True, slots=True)
class CounterCommand:
    """`sockrace counter` as its command line asked for it."""

    coroutines: int = DEFAULT_COROUTINES
    clients: int = DEFAULT_CLIENTS
    increments: int = DEFAULT_INCREMENTS
    loop: str = loops.DEFAULT_LOOP
    json: bool = False
    check: bool = False


def read(args: argparse.Namespace) -> CounterCommand:
    """The race that `args` asks for; all that follows reads this, not `args`."""
    return CounterCommand(args.coroutines, args.clients, args.increments, loop=args.loop, json=args.json,
                          check=args.check)


def run_counter_command(args: argparse.Namespace) -> int:
    return run(read(args))


def run(command: CounterCommand) -> int:
    from sockrace import report
    from sockrace.counter import counter

    try:
        result = loops.run(counter(command.coroutines, command.clients, command.increments), command.loop)
    except OSError as exc:
        hint = ""
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            hint = (f" ({command.clients} clients and the server in this process need about "
                    f"{2 * command.clients} file descriptors: raise `ulimit -n` or lower --clients)")
        return fail(f"cannot run the embedded server: {exc.strerror or exc}{hint}", EXIT_NETWORK)
    if command.json:
        emit(json.dumps(report.counter_document(result), indent=2))
    else:
        emit_lines(report.format_counter(result))
    if command.check and not result.fixes_hold:
        return EXIT_CHECK_FAILED
    return EXIT_OK
