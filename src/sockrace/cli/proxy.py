"""The `proxy` command: argparse only. Parse into proxy settings, run the library's fault proxy
(sockrace.check.proxy) until Ctrl-C or SIGTERM, return an exit code (cli/output.py, EXIT_CODES). Its fault
options are the `check` command's, defined in cli/faults.py."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sockrace import loop as loops
from sockrace.cli.faults import add_fault_options, read_faults
from sockrace.cli.options import Commands, add_command, add_loop_option, address, bounded_int
from sockrace.cli.output import EXIT_NETWORK, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, UsageError, emit, fail
from sockrace.cli.server import warn_if_exposed

if TYPE_CHECKING:
    from sockrace.check.faults import Faults

# The library's default (sockrace.check.proxy.DEFAULT_MAX_CONNECTIONS), repeated so that building the
# parser imports nothing of sockrace.check; test_cli_proxy pins it to the library's own.
DEFAULT_MAX_CONNECTIONS: Final = 1024


def add_proxy_command(commands: Commands) -> None:
    parser = add_command(
        commands, "proxy", "a seeded fault proxy in front of a server, for clients in any language",
        "Forward every connection to --upstream with seeded faults until Ctrl-C or SIGTERM. The same\n"
        "seed gives the same faults for the same bytes. Prints where it listens. It has no\n"
        "authentication: listening on every interface (0.0.0.0, ::, 0, ...) prints a warning.",
    )
    parser.add_argument("--upstream", type=address(1), required=True, metavar="HOST:PORT",
                        help="the server to forward to")
    parser.add_argument("--listen", type=address(0), default=("127.0.0.1", 0), metavar="HOST:PORT",
                        help="where to listen; port 0 picks a free one (default: 127.0.0.1:0)")
    add_fault_options(parser)
    parser.add_argument("--seed", type=int, required=True, help="seeds every fault decision")
    parser.add_argument("--log", metavar="FILE",
                        help="write the fault log to FILE, one JSON object a line; if a write fails (disk "
                        "full, ...) the proxy stops and exits 4")
    parser.add_argument("--max-connections", type=bounded_int(1), default=DEFAULT_MAX_CONNECTIONS,
                        metavar="N", help="connections forwarded at once; those past it are closed at once "
                        "and logged as over_limit (default: %(default)s). Each takes two file descriptors: "
                        "past what `ulimit -n` leaves, connections wait to be accepted instead")
    add_loop_option(parser)


# ------------------------------------------------------------------ reading it, once, and running it


@dataclass(frozen=True, slots=True)
class ProxyCommand:
    """`sockrace proxy` as its command line asked for it."""

    upstream: tuple[str, int]
    faults: Faults
    seed: int
    listen: tuple[str, int] = ("127.0.0.1", 0)
    log: str | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    loop: str = loops.DEFAULT_LOOP


def read(args: argparse.Namespace) -> ProxyCommand:
    """The proxy that `args` asks for; all that follows reads this, not `args`."""
    try:
        faults = read_faults(args)
    except ValueError as exc:  # a combination of faults the library refuses
        raise UsageError(str(exc)) from None
    return ProxyCommand(args.upstream, faults, args.seed, listen=args.listen, log=args.log,
                        max_connections=args.max_connections, loop=args.loop)


async def _serve(command: ProxyCommand) -> None:
    from sockrace.check.proxy import serve_proxy
    from sockrace.check.runner import UpstreamError, probe

    try:
        await probe(command.upstream)
    except UpstreamError as exc:  # it may come up later: each connection tries again
        emit(f"sockrace: warning: {exc}; connections will be refused until it answers", sys.stderr)
    await serve_proxy(command.upstream, faults=command.faults, seed=command.seed, listen=command.listen,
                      announce=lambda line: emit(line, flush=True), log_path=command.log,
                      max_connections=command.max_connections)


def run_proxy_command(args: argparse.Namespace) -> int:
    return run(read(args))


def run(command: ProxyCommand) -> int:
    from sockrace.check.proxy import FaultLogError

    if command.log and not Path(command.log).parent.is_dir():
        return fail(f"cannot write --log {command.log}: no such directory", EXIT_USAGE)
    host, port = command.listen
    warn_if_exposed(host, port)
    try:
        loops.run(_serve(command), command.loop)
    except ValueError as exc:  # a combination of faults the library refuses
        return fail(f"proxy: {exc}", EXIT_USAGE)
    except FaultLogError as exc:  # a write failed while it ran: it stopped, its connections closed
        return fail(f"cannot write --log {command.log}: {exc.strerror or exc}", EXIT_OUTPUT)
    except OSError as exc:
        if exc.filename is not None:  # the log could not be opened
            return fail(f"cannot write --log {command.log}: {exc.strerror or exc}", EXIT_USAGE)
        return fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_NETWORK)
    return EXIT_OK
