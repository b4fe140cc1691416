"""The asyncio I/O around the protocol: accept connections, frame lines, answer each one in order.

One handler task per connection. The handler reads whatever the socket has (many lines per read),
answers every complete line, and writes all the replies of one read in one call. Replies on a
connection always leave in request order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final

from sockrace.protocol import (
    DEFAULT_MAX_LINE,
    Err,
    Incr,
    LineBuffer,
    LineTooLong,
    ProtocolError,
    Quit,
    Reply,
    Sleep,
    error_reply,
    format_reply,
    parse_request,
)
from sockrace.store import Store

log = logging.getLogger("sockrace.server")

# One read takes what the kernel has, up to this; 64 KiB matches the default line limit so a
# maximal line arrives in one or two reads.
READ_SIZE: Final = 64 * 1024
# How long shutdown waits for busy connections to finish the replies they owe before cutting them.
SHUTDOWN_GRACE_S: Final = 5.0
# With --out-of-order, one connection has at most this many requests in progress at once; past it
# the server stops reading from that connection until one finishes, so a flood costs the flooder
# time, not the server memory. Far above what the demo's 100 coroutines keep in flight.
MAX_IN_PROGRESS: Final = 1024


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    delay_ms: float = 0.0  # added before every reply, to widen the race window
    jitter_ms: float = 0.0  # plus a uniform random extra in [0, jitter_ms], drawn from `seed`
    seed: int = 0
    max_line: int = DEFAULT_MAX_LINE
    # Answer the requests of one connection concurrently, each as soon as it is done (see
    # `_serve_out_of_order`): only tagged requests can then be matched to their replies.
    out_of_order: bool = False
    # INCR reads, yields to the event loop, then writes: concurrent INCRs lose updates (a demo).
    unsafe_incr: bool = False


@dataclass(slots=True)
class _Connection:
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    idle: bool = True  # True while waiting for bytes: the only moment shutdown may cancel it


@dataclass(slots=True)
class Server:
    """A sockrace server. Use `async with Server(config) as server:`; `server.address` is bound."""

    config: ServerConfig = field(default_factory=ServerConfig)
    store: Store = field(default_factory=Store)
    _server: asyncio.Server | None = None
    _connections: dict[asyncio.StreamWriter, _Connection] = field(default_factory=dict)
    _closing: bool = False
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.config.seed)

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("server is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> tuple[str, int]:
        """Bind and listen. Raises OSError when the address cannot be bound."""
        self._server = await asyncio.start_server(
            self.handle_connection, self.config.host, self.config.port, limit=self.config.max_line
        )
        return self.address

    async def close(self) -> None:
        """Stop accepting, let every connection finish the replies it owes, then close them all."""
        if self._server is None or self._closing:
            return
        self._closing = True
        self._server.close()
        for conn in list(self._connections.values()):
            if conn.idle and conn.task is not None:
                conn.task.cancel()
        tasks = [c.task for c in self._connections.values() if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self._server.wait_closed()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection to its end. start_server calls it; tests call it with in-memory streams."""
        conn = _Connection(writer, asyncio.current_task())
        self._connections[writer] = conn
        counters = self.store.counters
        counters.connections += 1
        counters.total_connections += 1
        peer = writer.get_extra_info("peername")
        serve = self._serve_out_of_order if self.config.out_of_order else self._serve
        try:
            await serve(reader, conn)
        except asyncio.CancelledError:
            if not self._closing:
                raise
        except (ConnectionError, TimeoutError) as exc:
            log.debug("connection %s ended: %r", peer, exc)
        finally:
            counters.connections -= 1
            del self._connections[writer]
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, conn: _Connection) -> None:
        lines = LineBuffer(self.config.max_line)
        writer = conn.writer
        while not self._closing:
            conn.idle = True
            data = await reader.read(READ_SIZE)
            conn.idle = False
            if data:
                lines.feed(data)
            out: list[bytes] = []
            done = False
            while not done:
                try:
                    line = lines.next_line()
                except LineTooLong as exc:
                    out.append(format_reply(error_reply(exc)))
                    continue
                if line is None:
                    break
                done = await self._answer(line, out, writer)
            if not data:  # EOF: an unterminated last line is still a request (documented)
                leftover = lines.leftover()
                if leftover and not done:
                    await self._answer(leftover, out, writer)
                done = True
            if out:
                writer.write(b"".join(out))
                await writer.drain()
            if done:
                return

    async def _answer(self, line: bytes, out: list[bytes], writer: asyncio.StreamWriter) -> bool:
        """Append the reply to `line` to `out`; return True when the connection should close."""
        counters = self.store.counters
        counters.requests += 1
        try:
            request = parse_request(line)
        except ProtocolError as exc:
            counters.errors += 1
            out.append(format_reply(error_reply(exc)))
            return False
        wait_ms = request.ms if isinstance(request, Sleep) else 0.0
        wait_ms += self._latency_ms()
        if wait_ms > 0:
            # Replies already computed leave now, so that latency delays this reply only.
            if out:
                writer.write(b"".join(out))
                out.clear()
            await asyncio.sleep(wait_ms / 1000)
        if self.config.unsafe_incr and isinstance(request, Incr):
            out.append(format_reply(await self._unsafe_incr(request)))
        else:
            out.append(format_reply(self.store.apply(request)))
        return isinstance(request, Quit)

    async def _unsafe_incr(self, request: Incr) -> Reply:
        """INCR as a careless async service writes it: read, await something, write back.

        Every other connection may run during the await, and an INCR of the same key that reads
        in between writes back the same stale value plus one: an update is lost. The seed
        tutorial's shared-counter race, on a server. The default INCR (Store.incr) has no await.
        """
        current = self.store.read_int(request.tag, request.key)
        if isinstance(current, Err):
            return current
        await asyncio.sleep(0)  # e.g. a call to a cache or a log, in real code
        return self.store.write_int(request.tag, request.key, current + request.amount)

    async def _serve_out_of_order(self, reader: asyncio.StreamReader, conn: _Connection) -> None:
        """Serve one connection answering its requests as they finish, not in the order they came.

        Every request runs in its own task (with its SLEEP, delay and jitter) and writes its reply,
        a whole line in one write, the moment it is done. QUIT waits for the replies still owed,
        then answers BYE and closes. EOF does the same without the BYE.
        """
        lines = LineBuffer(self.config.max_line)
        writer = conn.writer
        in_progress: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(MAX_IN_PROGRESS)
        reading = False

        async def answer(line: bytes) -> None:
            try:
                out: list[bytes] = []
                await self._answer(line, out, writer)
                if not writer.is_closing():
                    writer.write(b"".join(out))
            finally:
                slots.release()

        def finished(task: asyncio.Task[None]) -> None:
            in_progress.discard(task)
            # Shutdown cancels only idle connections; one that became idle while shutdown waited
            # for it is cancelled here, instead of waiting for the client's next bytes.
            if not in_progress and reading and self._closing and conn.task is not None:
                conn.task.cancel()

        try:
            while not self._closing:
                conn.idle = not in_progress
                reading = True
                data = await reader.read(READ_SIZE)
                reading = conn.idle = False
                if data:
                    lines.feed(data)
                while True:
                    try:
                        line = lines.next_line()
                    except LineTooLong as exc:
                        writer.write(format_reply(error_reply(exc)))
                        continue
                    if line is None or self._is_quit(line):
                        break
                    await slots.acquire()
                    task = asyncio.create_task(answer(line))
                    in_progress.add(task)
                    task.add_done_callback(finished)
                if line is None and data:
                    await writer.drain()
                    continue
                # QUIT or EOF: finish what is owed, then close.
                if in_progress:
                    await asyncio.wait(set(in_progress))
                if line is not None:  # QUIT
                    out: list[bytes] = []
                    await self._answer(line, out, writer)
                    writer.write(b"".join(out))
                elif leftover := lines.leftover():  # EOF: an unterminated last line is still a request
                    out = []
                    await self._answer(leftover, out, writer)
                    writer.write(b"".join(out))
                await writer.drain()
                return
        finally:
            for task in in_progress:
                task.cancel()
            if in_progress:
                await asyncio.wait(set(in_progress))

    @staticmethod
    def _is_quit(line: bytes) -> bool:
        try:
            return isinstance(parse_request(line), Quit)
        except ProtocolError:
            return False

    def _latency_ms(self) -> float:
        config = self.config
        if config.jitter_ms > 0:
            return config.delay_ms + self._rng.uniform(0, config.jitter_ms)
        return config.delay_ms


@contextlib.asynccontextmanager
async def running_server(config: ServerConfig | None = None) -> AsyncIterator[Server]:
    """Run a server for the duration of the block (tests and `compare` use this)."""
    async with Server(config or ServerConfig()) as server:
        yield server


async def serve_until_signalled(config: ServerConfig, announce: Callable[[str], None]) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully. `announce` receives status lines."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Server(config) as server:
            host, port = server.address
            announce(f"sockrace server listening on {host}:{port}")
            await stop.wait()
            announce(f"sockrace server shutting down ({server.store.counters.connections} connections open)")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
