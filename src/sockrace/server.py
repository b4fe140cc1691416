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
    LineBuffer,
    LineTooLong,
    ProtocolError,
    Quit,
    Sleep,
    error_reply,
    format_reply,
    parse_request,
)
from sockrace.store import Store, stateless_reply

log = logging.getLogger("sockrace.server")

# One read takes what the kernel has, up to this; 64 KiB matches the default line limit so a
# maximal line arrives in one or two reads.
READ_SIZE: Final = 64 * 1024
# How long shutdown waits for busy connections to finish the replies they owe before cutting them.
SHUTDOWN_GRACE_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    delay_ms: float = 0.0  # added before every reply, to widen the race window
    jitter_ms: float = 0.0  # plus a uniform random extra in [0, jitter_ms], drawn from `seed`
    seed: int = 0
    max_line: int = DEFAULT_MAX_LINE


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
        try:
            await self._serve(reader, conn)
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
        counters = self.store.counters
        # With no artificial latency, PING and ECHO are answered straight from their bytes: the hot
        # path of every benchmark, with no event objects and no coroutine per request.
        fast = self.config.delay_ms == 0 and self.config.jitter_ms == 0
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
                    batch = lines.next_lines()
                except LineTooLong as exc:
                    out.append(format_reply(error_reply(exc)))
                    continue
                if not batch:
                    break
                for line in batch:
                    reply = stateless_reply(line) if fast else None
                    if reply is not None:
                        counters.requests += 1
                        out.append(reply)
                        continue
                    done = await self._answer(line, out, writer)
                    if done:
                        break
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
        out.append(format_reply(self.store.apply(request)))
        return isinstance(request, Quit)

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
