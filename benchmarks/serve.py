"""Run one benchmark server: `python -m benchmarks.serve KIND [--loop LOOP]`.

KIND is "readline" or "bulk" (reference servers, see reference.py) or "sockrace". The process
prints `PORT <n>` once it listens, then serves until its stdin reaches EOF (the benchmark closes it,
or dies) or it receives SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Final

from benchmarks.reference import HANDLERS
from sockrace import loop as loops
from sockrace.server import Server, ServerConfig

SERVER_KINDS: Final = ("readline", "bulk", "sockrace")


@contextlib.asynccontextmanager
async def running_server(kind: str) -> AsyncIterator[tuple[str, int]]:
    """Serve `kind` on a free loopback port for the duration of the block; yields (host, port)."""
    if kind == "sockrace":
        async with Server(ServerConfig(port=0)) as server:
            yield server.address
        return
    if kind not in HANDLERS:
        raise ValueError(f"unknown server kind {kind!r}; choose from {', '.join(SERVER_KINDS)}")
    listener = await asyncio.start_server(HANDLERS[kind], "127.0.0.1", 0)
    try:
        host, port = listener.sockets[0].getsockname()[:2]
        yield str(host), int(port)
    finally:
        listener.close()
        await listener.wait_closed()


async def serve(kind: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096):
            stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), on_stdin)
    try:
        async with running_server(kind) as (_, port):
            print(f"PORT {port}", flush=True)
            await stop.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve")
    parser.add_argument("kind", choices=SERVER_KINDS)
    parser.add_argument("--loop", choices=loops.LOOPS, default=loops.DEFAULT_LOOP)
    args = parser.parse_args(argv)
    try:
        loops.run(serve(args.kind), args.loop)
    except loops.LoopUnavailable as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
