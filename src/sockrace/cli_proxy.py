"""The `proxy` command: argparse only. Parse into proxy settings, run the library's fault proxy
(sockrace.check.proxy) until Ctrl-C or SIGTERM, return an exit code (cli_output.EXIT_CODES). Its fault
options are the `check` command's, defined in cli_check.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sockrace import loop as loops
from sockrace.cli_check import Commands, _add_command, _add_fault_options, _faults
from sockrace.cli_options import add_loop_option, address
from sockrace.cli_output import EXIT_NETWORK, EXIT_OK, EXIT_USAGE, emit, fail


def add_proxy_command(commands: Commands) -> None:
    parser = _add_command(
        commands, "proxy", "a seeded fault proxy in front of a server, for clients in any language",
        "Forward every connection to --upstream with seeded faults until Ctrl-C or SIGTERM. The same\n"
        "seed gives the same faults for the same bytes. Prints where it listens.",
    )
    parser.add_argument("--upstream", type=address(1), required=True, metavar="HOST:PORT",
                        help="the server to forward to")
    parser.add_argument("--listen", type=address(0), default=("127.0.0.1", 0), metavar="HOST:PORT",
                        help="where to listen; port 0 picks a free one (default: 127.0.0.1:0)")
    _add_fault_options(parser)
    parser.add_argument("--seed", type=int, required=True, help="seeds every fault decision")
    parser.add_argument("--log", metavar="FILE", help="write the fault log to FILE, one JSON object a line")
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
                      announce=lambda line: emit(line, flush=True), log_path=args.log)


def run_proxy_command(args: argparse.Namespace) -> int:
    if args.log and not Path(args.log).parent.is_dir():
        return fail(f"cannot write --log {args.log}: no such directory", EXIT_USAGE)
    try:
        loops.run(_serve(args), args.loop)
    except ValueError as exc:  # a combination of faults the library refuses
        return fail(f"proxy: {exc}", EXIT_USAGE)
    except OSError as exc:
        if exc.filename is not None:
            return fail(f"cannot write --log {args.log}: {exc.strerror or exc}", EXIT_USAGE)
        host, port = args.listen
        return fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_NETWORK)
    return EXIT_OK
