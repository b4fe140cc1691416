"""FaultProxy's cost and exactness: pipelined load direct vs through the proxy, and a large stream
through split + delay faults.

    python benchmarks/proxy.py [--requests 200000] [--window 100] [--rounds 5] [--stream 16M] [--seed 1]

Throughput: a sockrace server and a FaultProxy without faults each run in a child process of their
own; one connection keeps `--window` `ECHO` requests in flight (a new batch is written as replies
come back) until `--requests` are answered, straight to the server and through the proxy, in
interleaved rounds. The figures are the medians of the rounds; the ratio is the median of the
rounds' proxy / direct ratios (goal: at least 0.6x). Beside them, in the same rounds, the least an
asyncio proxy can do (a `Protocol` whose data_received writes to the other transport, reading paused
while the other side's buffer is full; its own child process): what one more hop costs on this
machine, so that the proxy's own cost (proxy / relay) is told apart from the hop's; and a relay
without asyncio (one epoll loop, recv_into, sendall), the hop's floor in Python.

Exactness: `--stream` bytes of seeded random data are sent through a FaultProxy with split and
delay in both directions to an echo server, and read back; the script compares the SHA-256 of what
was sent with what came back (the issue's acceptance figure is `--stream 100M`).

Exits 1 when a goal is missed (ratio under 0.6x, a stream that is not exact).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

# Run as a script, this file's directory is on sys.path, not the repository (as in run.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.processes import cpu_seconds
from sockrace.check import FaultProxy, Faults
from sockrace.server import Server, ServerConfig

RATIO_GOAL: Final = 0.6
STREAM_BLOCK: Final = 64 * 1024  # the stream is generated and written in blocks of this size
SUFFIXES: Final = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def size(text: str) -> int:
    """'16M' -> 16 MiB; argparse turns the ValueError into a one-line usage error."""
    number, suffix = (text[:-1], text[-1].upper()) if text[-1:].isalpha() else (text, "")
    if suffix not in SUFFIXES or not number.isdigit() or int(number) <= 0:
        raise ValueError(text)
    return int(number) * SUFFIXES[suffix]


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


# ---------------------------------------------------------------- child processes


class RelaySide(asyncio.Protocol):
    """One socket of the bare relay: what it receives is written to its peer's socket; it stops reading
    while its peer's send buffer is over the transport's high-water mark."""

    def __init__(self, peer: RelaySide | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.held: list[bytes] = []  # what the client sent before the upstream connection was made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.peer is not None:  # the upstream side: the client's side now has somewhere to write
            self.peer.peer = self
            for data in self.peer.held:
                transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self.held.append(data)
        else:
            self.peer.transport.write(data)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


@contextlib.asynccontextmanager
async def bare_relay(upstream_port: int) -> AsyncIterator[int]:
    """The least an asyncio proxy does: every accepted connection relayed to the upstream, nothing
    recorded; yields its port."""
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[Any]] = set()  # held until done: the loop keeps only weak references

    def accepted() -> RelaySide:
        client = RelaySide()
        task = loop.create_task(loop.create_connection(lambda: RelaySide(client), "127.0.0.1", upstream_port))
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    server = await loop.create_server(accepted, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def serve_epoll_relay(upstream_port: int) -> None:
    """A relay without asyncio, for the floor under the bare relay: one epoll loop, recv_into and a
    blocking sendall per read, until stdin reaches EOF. Prints PORT first."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    poller.register(sys.stdin.fileno(), select.EPOLLIN)
    peers: dict[int, tuple[socket.socket, socket.socket]] = {}
    buffer = bytearray(65536)
    view = memoryview(buffer)
    while True:
        for fileno, _ in poller.poll():
            if fileno == sys.stdin.fileno():
                return
            if fileno == listener.fileno():
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", upstream_port))
                for sock in (client, upstream):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's transports
                    poller.register(sock.fileno(), select.EPOLLIN)
                peers[client.fileno()], peers[upstream.fileno()] = (client, upstream), (upstream, client)
                continue
            source, destination = peers[fileno]
            count = source.recv_into(buffer)
            if count:
                destination.sendall(view[:count])
            else:  # an end: this benchmark's connections end together
                poller.unregister(fileno)
                destination.close()


async def serve(role: str, upstream_port: int | None) -> None:
    """Serve until stdin reaches EOF (the parent closed it, or died) or SIGTERM; print PORT first."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)
    if role == "relay":
        assert upstream_port is not None
        async with bare_relay(upstream_port) as port:
            print(f"PORT {port}", flush=True)
            await stop.wait()
        return
    running: contextlib.AbstractAsyncContextManager[Server | FaultProxy]
    if role == "server":
        running = Server(ServerConfig(port=0))
    else:
        assert upstream_port is not None
        running = FaultProxy(("127.0.0.1", upstream_port), seed=0)
    async with running as served:
        print(f"PORT {served.address[1]}", flush=True)
        await stop.wait()


@contextlib.contextmanager
def child(*arguments: str) -> Iterator[tuple[int, int]]:
    """Run this script in `--serve` mode; yields the port it listens on and its process id, stops it
    afterwards."""
    process = subprocess.Popen([sys.executable, __file__, "--serve", *arguments],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("PORT "):
            raise SystemExit(f"proxy.py: the {arguments[0]} process did not start")
        yield int(line.split()[1]), process.pid
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------- throughput


async def windowed_load(port: int, requests: int, window: int) -> float:
    """Keep `window` ECHO requests in flight on one connection until `requests` are answered; req/s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        start = time.perf_counter()
        sent = min(window, requests)
        writer.write(b"".join(b"ECHO r%d\n" % i for i in range(sent)))
        answered = 0
        while answered < requests:
            data = await reader.read(65536)
            if not data:
                raise SystemExit(f"proxy.py: the connection closed after {answered} replies")
            replies = data.count(b"\n")
            answered += replies
            batch = min(replies, requests - sent)
            if batch:
                writer.write(b"".join(b"ECHO r%d\n" % i for i in range(sent, sent + batch)))
                sent += batch
        return requests / (time.perf_counter() - start)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass(slots=True)
class Throughput:
    """req/s straight to the server, through the proxy and (when asked) through the bare relay, one
    figure per round, and the CPU each process spent per request (in microseconds; empty where /proc
    is missing)."""

    direct: list[float] = field(default_factory=list)
    proxied: list[float] = field(default_factory=list)
    relayed: list[float] = field(default_factory=list)
    epoll_relayed: list[float] = field(default_factory=list)
    server_cpu_direct_us: list[float] = field(default_factory=list)
    server_cpu_proxied_us: list[float] = field(default_factory=list)
    proxy_cpu_us: list[float] = field(default_factory=list)
    relay_cpu_us: list[float] = field(default_factory=list)


def _timed_load(port: int, requests: int, window: int, pids: tuple[int, ...]) -> tuple[float, list[float]]:
    """req/s of one windowed load, and the CPU microseconds per request of each of `pids`."""
    before = [cpu_seconds(pid) for pid in pids]
    rate = asyncio.run(windowed_load(port, requests, window))
    after = [cpu_seconds(pid) for pid in pids]
    return rate, [(b - a) / requests * 1e6 for a, b in zip(before, after, strict=True)
                  if a is not None and b is not None]


def paired_throughput(requests: int, window: int, rounds: int, *, relay: bool = False) -> Throughput:
    """req/s straight to a sockrace server and through a FaultProxy without faults (and through the
    bare relay and the epoll relay, with `relay`), one run of each per round, the order reversed
    every other round. Paired: each ratio compares runs made back to back, so a machine that slows
    down or speeds up between rounds moves both sides of a ratio together."""
    figures = Throughput()
    with contextlib.ExitStack() as children:
        server_port, server_pid = children.enter_context(child("server"))
        proxy_port, proxy_pid = children.enter_context(child("proxy", str(server_port)))
        sides = ["direct", "proxied"]
        if relay:
            relay_port, relay_pid = children.enter_context(child("relay", str(server_port)))
            epoll_port, _ = children.enter_context(child("epoll-relay", str(server_port)))
            sides += ["relayed", "epoll relayed"]
        asyncio.run(windowed_load(server_port, min(requests, 10_000), window))  # warm-up
        for round_number in range(rounds):
            for side in sides if round_number % 2 == 0 else reversed(sides):
                if side == "proxied":
                    rate, cpu = _timed_load(proxy_port, requests, window, (server_pid, proxy_pid))
                    figures.proxied.append(rate)
                    figures.server_cpu_proxied_us += cpu[:1]
                    figures.proxy_cpu_us += cpu[1:]
                elif side == "epoll relayed":
                    figures.epoll_relayed.append(_timed_load(epoll_port, requests, window, ())[0])
                elif side == "relayed":
                    rate, cpu = _timed_load(relay_port, requests, window, (relay_pid,))
                    figures.relayed.append(rate)
                    figures.relay_cpu_us += cpu
                else:
                    rate, cpu = _timed_load(server_port, requests, window, (server_pid,))
                    figures.direct.append(rate)
                    figures.server_cpu_direct_us += cpu
    return figures


def throughput(args: argparse.Namespace) -> bool:
    print(f"throughput: one connection, {args.window} ECHO requests in flight, {args.requests:,} requests "
          f"per round, {args.rounds} rounds, direct, through the proxy and through two bare relays "
          "interleaved")
    figures = paired_throughput(args.requests, args.window, args.rounds, relay=True)
    direct, proxied, relayed = figures.direct, figures.proxied, figures.relayed
    ratios = [p / d for p, d in zip(proxied, direct, strict=True)]
    ratio = statistics.median(ratios)
    for name, rates in (("direct", direct), ("through proxy", proxied), ("through relay", relayed),
                        ("through epoll", figures.epoll_relayed)):
        print(f"  {name:<14}{statistics.median(rates):>10,.0f} req/s (median; rounds: "
              f"{', '.join(f'{r:,.0f}' for r in rates)})")
    met = ratio >= RATIO_GOAL
    print(f"  ratio {ratio:.2f}x, median of the rounds' ratios (goal >= {RATIO_GOAL}x: "
          f"{'met' if met else 'MISSED'}); per round: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}")
    def rounds(numerators: list[float], denominators: list[float]) -> str:
        ratios = [n / d for n, d in zip(numerators, denominators, strict=True)]
        return f"{statistics.median(ratios):.2f}x (rounds: {min(ratios):.2f} to {max(ratios):.2f})"

    print(f"  the bare relay {rounds(relayed, direct)} direct, what one more asyncio hop costs; the epoll "
          f"relay {rounds(figures.epoll_relayed, direct)} direct, the hop without asyncio; the proxy "
          f"{rounds(proxied, relayed)} the bare relay, what the proxy itself costs")
    if figures.proxy_cpu_us:
        print(f"  {cpu_line(figures)}")
    return met


def cpu_line(figures: Throughput) -> str:
    """CPU per request of the server (direct, through the proxy) and of the proxy: medians."""
    def us(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} us" if values else "-"

    relay = f", the bare relay {us(figures.relay_cpu_us)}" if figures.relay_cpu_us else ""
    return (f"CPU per request: server {us(figures.server_cpu_direct_us)} direct, "
            f"{us(figures.server_cpu_proxied_us)} through the proxy; the proxy {us(figures.proxy_cpu_us)}"
            f"{relay}")


# ---------------------------------------------------------------- exactness


class Echo(asyncio.Protocol):
    """Writes back what it reads, and stops reading while its own writes wait (bounded)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close once the echo is written

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def send_and_compare(port: int, total: int, seed: int) -> tuple[str, str, int]:
    """Send `total` seeded bytes and read the echo to EOF; the SHA-256 of each and the bytes back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent_hash = hashlib.sha256()

    async def send() -> None:
        blocks = random.Random(seed)
        left = total
        while left:
            block = blocks.randbytes(min(STREAM_BLOCK, left))
            sent_hash.update(block)
            writer.write(block)
            left -= len(block)
            await writer.drain()
        writer.write_eof()

    sending = asyncio.create_task(send())
    received_hash, received = hashlib.sha256(), 0
    while data := await reader.read(1 << 20):
        received_hash.update(data)
        received += len(data)
    await sending
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return sent_hash.hexdigest(), received_hash.hexdigest(), received


async def exactness(args: argparse.Namespace) -> bool:
    faults = Faults(split=True, delay_ms=(0.0, 1.0))
    print(f"exactness: {args.stream:,} bytes each way through a proxy with {faults.describe()} "
          f"(seed {args.seed}) to an echo server")
    async with echo_server() as port, FaultProxy(("127.0.0.1", port), args.seed, faults=faults) as proxy:
        start = time.perf_counter()
        sent, received, count = await send_and_compare(proxy.port, args.stream, args.seed)
        elapsed = time.perf_counter() - start
    splits = sum(record.fault == "split" for record in proxy.log)
    exact = sent == received and count == args.stream
    print(f"  {'exact' if exact else 'NOT EXACT'}: {count:,} bytes back, sha256 {received[:16]}... "
          f"({'equal' if sent == received else 'differs from ' + sent[:16] + '...'}); "
          f"{elapsed:.1f} s, {2 * count / elapsed / 1e6:.1f} MB/s both ways; {splits:,} units split")
    return exact


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=positive, default=200_000, help="requests per round")
    parser.add_argument("--window", type=positive, default=100, help="requests in flight")
    parser.add_argument("--rounds", type=positive, default=7, help="rounds, direct and proxied each")
    parser.add_argument("--stream", type=size, default=size("16M"), help="bytes through split+delay (16M)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=("throughput", "exactness"), help="run one of the two")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        role, *upstream = args.serve
        if role == "epoll-relay":
            serve_epoll_relay(int(upstream[0]))
            return 0
        asyncio.run(serve(role, int(upstream[0]) if upstream else None))
        return 0
    met = True
    if args.only in (None, "throughput"):
        met = throughput(args) and met
    if args.only in (None, "exactness"):
        met = asyncio.run(exactness(args)) and met
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
