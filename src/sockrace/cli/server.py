"""The `server` command: argparse only. Read its arguments once into the library's ServerConfig,
serve the line protocol (sockrace.server) until Ctrl-C or SIGTERM, return an exit code (cli/output.py,
EXIT_CODES). It has no authentication: binding every interface prints a warning (warn_if_exposed,
which the `proxy` command shares)."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from dataclasses import dataclass

from sockrace import loop as loops
from sockrace.cli.options import (
    DEFAULT_PORT,
    Commands,
    add_command,
    add_latency_options,
    add_loop_option,
    bounded_int,
    idle_timeout,
)
from sockrace.cli.output import EXIT_NETWORK, EXIT_OK, emit, fail
from sockrace.protocol import DEFAULT_MAX_LINE
from sockrace.server import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    MAX_IDLE_TIMEOUT_S,
    ServerConfig,
    serve_until_signalled,
)
from sockrace.store import DEFAULT_MAX_KEY_BYTES, DEFAULT_MAX_KEYS, DEFAULT_MAX_VALUE_BYTES


def add_server_command(commands: Commands) -> None:
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


@dataclass(frozen=True, slots=True)
class ServerCommand:
    """`sockrace server` as its command line asked for it."""

    config: ServerConfig
    loop: str = loops.DEFAULT_LOOP


def read(args: argparse.Namespace) -> ServerCommand:
    """The server that `args` asks for; all that follows reads this, not `args`."""
    config = ServerConfig(host=args.host, port=args.port, delay_ms=args.delay, jitter_ms=args.jitter,
                          seed=args.seed, max_line=args.max_line, max_keys=args.max_keys,
                          max_key_bytes=args.max_key_size, max_value_bytes=args.max_value_size,
                          max_connections=args.max_connections, idle_timeout_s=args.idle_timeout,
                          out_of_order=args.out_of_order, unsafe_incr=args.unsafe_incr)
    return ServerCommand(config, args.loop)


def run_server_command(args: argparse.Namespace) -> int:
    return run(read(args))


def run(command: ServerCommand) -> int:
    config = command.config
    warn_if_exposed(config.host, config.port)
    try:
        loops.run(serve_until_signalled(config, lambda line: emit(line, flush=True)), command.loop)
    except OSError as exc:
        return fail(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", EXIT_NETWORK)
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


def warn_if_exposed(host: str, port: int) -> None:
    address = _wildcard_address(host, port)
    if address is None:
        return
    named = "all interfaces" if not host else host if host == address else f"{host} ({address})"
    emit(f"sockrace: warning: binding {named} exposes the server to the network", sys.stderr)
