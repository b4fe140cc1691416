"""The `proxy` command: argparse only. Parse into proxy settings, run the library's fault proxy
(sockrace.check.proxy) until Ctrl-C or SIGTERM, return an exit code (cli/output.py, EXIT_CODES). Its fault
options are the `check` command's, defined in cli/check.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

from sockrace import loop as loops
from sockrace.cli.check import Commands, _add_command, _add_fault_options, _faults
from sockrace.cli.options import add_loop_option, address, bounded_int
from sockrace.cli.output import EXIT_NETWORK, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, emit, fail

# The library's default (sockrace.check.proxy.DEFAULT_MAX_CONNECTIONS), repeated so that building the
# parser imports nothing of sockrace.check; test_cli_proxy pins it to the library's own.
DEFAULT_MAX_CONNECTIONS: Final = 1024


def add_proxy_command(commands: Commands) -> None:
    parser = _add_command(
        commands, "proxy", "a seeded fault proxy in front of a server, for clients in any language",
        "Forward every connection to --upstream with seeded faults until Ctrl-C or SIGTERM. The same\n"
        "seed gives the same faults for the same bytes. Prints where it listens. It has no\n"
        "authentication: listening on every interface (0.0.0.0, ::, 0, ...) prints a warning.",
    )
    parser.add_argument("--upstream", type=address(1), required=True, metavar="HOST:PORT",
                        help="the server to forward to")
    parser.add_argument("--listen", type=address(0), default=("127.0.0.1", 0), metavar="HOST:PORT",
                        help="where to listen; port 0 picks a free one (default: 127.0.0.1:0)")
    _add_fault_options(parser)
    parser.add_argument("--seed", type=int, required=True, help="seeds every fault decision")
    parser.add_argument("--log", metavar="FILE",
                        help="write the fault log to FILE, one JSON object a line; if a write fails (disk "
                        "full, ...) the proxy stops and exits 4")
    parser.add_argument("--max-connections", type=bounded_int(1), default=DEFAULT_MAX_CONNECTIONS,
                        metavar="N", help="connections forwarded at once; those past it are closed at once "
                        "and logged as over_limit (default: %(default)s). Each takes two file descriptors: "
                        "past what `ulimit -n` leaves, connections wait to be accepted instead")
    add_loop_option(parser)


# ------------------------------------------------------------------ running it


async def _serve(args: argparse.Namespace) -> None:
    from sockrace.check.proxy import serve_proxy
    from sockrace.check.runner import UpstreamError, probe

    try:
        await probe(args.upstream)
    except UpstreamError as exc:  # it may come up later: each connection tries again
        emit(f"sockrace: warning: {exc}; connections will be refused until it answers", sys.stderr)
    await serve_proxy(args.upstream, faults=_faults(args), seed=args.seed, listen=args.listen,
                      announce=lambda line: emit(line, flush=True), log_path=args.log,
                      max_connections=args.max_connections)


def run_proxy_command(args: argparse.Namespace) -> int:
    # Here, not at the top: sockrace.cli imports this module (the server's words, the same function).
    from sockrace.check.proxy import FaultLogError
    from sockrace.cli import _warn_if_exposed

    if args.log and not Path(args.log).parent.is_dir():
        return fail(f"cannot write --log {args.log}: no such directory", EXIT_USAGE)
    host, port = args.listen
    _warn_if_exposed(host, port)
    try:
        loops.run(_serve(args), args.loop)
    except ValueError as exc:  # a combination of faults the library refuses
        return fail(f"proxy: {exc}", EXIT_USAGE)
    except FaultLogError as exc:  # a write failed while it ran: it stopped, its connections closed
        return fail(f"cannot write --log {args.log}: {exc.strerror or exc}", EXIT_OUTPUT)
    except OSError as exc:
        if exc.filename is not None:  # the log could not be opened
            return fail(f"cannot write --log {args.log}: {exc.strerror or exc}", EXIT_USAGE)
        return fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_NETWORK)
    return EXIT_OK
