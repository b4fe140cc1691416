"""The server's lifecycle: listen, accept, hand each connection to its driver, sweep idle
connections, and shut down gracefully.

Serving one connection (reading, answering, writing, saying goodbye) is serving.py's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

from sockrace.protocol import DEFAULT_MAX_LINE, Err, format_reply
from sockrace.serving import LINGER_S, Connection, Serving, goodbye
from sockrace.store import (
    DEFAULT_MAX_KEY_BYTES,
    DEFAULT_MAX_KEYS,
    DEFAULT_MAX_VALUE_BYTES,
    Store,
    StoreLimits,
)

__all__ = ["Server", "ServerConfig", "running_server", "serve_until_signalled"]

log = logging.getLogger("sockrace.server")

# How long shutdown waits for busy connections to finish the replies they owe before cutting them.
SHUTDOWN_GRACE_S: Final = 5.0

# Defaults for the connection limits. 1024 is a common default `ulimit -n`; raise both together.
DEFAULT_MAX_CONNECTIONS: Final = 1024
# Long enough for any person typing at a prompt, short enough that forgotten or hostile (slowloris)
# connections do not pile up.
DEFAULT_IDLE_TIMEOUT_S: Final = 300.0
# The idle sweeper checks the connections this many times per idle timeout (see IdleSweeper), and at
# most this often, whatever the timeout.
SWEEPS_PER_TIMEOUT: Final = 4
MIN_SWEEP_PERIOD_S: Final = 0.01


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback unless told otherwise: the server has no authentication
    port: int = 0
    delay_ms: float = 0.0  # added before every reply, to widen the race window
    jitter_ms: float = 0.0  # plus a uniform random extra in [0, jitter_ms], drawn from `seed`
    seed: int = 0
    max_line: int = DEFAULT_MAX_LINE
    max_keys: int = DEFAULT_MAX_KEYS
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # Seconds a connection may go without a complete request (or without reading its replies)
    # before the server closes it; 0 means never.
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    # Answer the requests of one connection concurrently, each as soon as it is done (see
    # serving.py's out-of-order driver): only tagged requests can then be matched to their replies.
    out_of_order: bool = False
    # INCR reads, yields to the event loop, then writes: concurrent INCRs lose updates (a demo).
    unsafe_incr: bool = False

    def store_limits(self) -> StoreLimits:
        return StoreLimits(self.max_keys, self.max_key_bytes, self.max_value_bytes)



class IdleSweeper:
    """Enforces the idle timeout of every connection from one background thread.

    Why not a timer on the event loop: while any timer is pending, asyncio's loop computes a select()
    timeout and walks its timer heap on every pass, and the kernel arms a timer for every wait. In
    lock-step traffic that was a tenth of the server's instructions per request (measured with
    callgrind), for a timeout that fires once in minutes. The thread sleeps a quarter of the timeout
    at a time, then asks the loop to run `sweep`: a connection is closed between `idle_timeout` and
    1.25 x `idle_timeout` after its last complete request.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, period_s: float, sweep: Callable[[], None]) -> None:
        self._loop = loop
        self._period_s = period_s
        self._sweep = sweep
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sockrace idle sweeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._period_s):
            try:
                self._loop.call_soon_threadsafe(self._sweep)
            except RuntimeError:  # the loop is closed: nothing left to sweep
                return

    def stop(self) -> None:
        """Stop the thread; returns once it has ended (at once: it waits on the event)."""
        self._stopped.set()
        self._thread.join()


class Server:
    """A sockrace server. Use `async with Server(config) as server:`; `server.address` is bound."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.store = Store(self.config.store_limits())
        self._serving = Serving(self.config, self.store)
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.StreamWriter, Connection] = {}
        self._closing = False
        self._sweeper: IdleSweeper | None = None

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
        timeout = self.config.idle_timeout_s
        if timeout > 0:
            period = max(MIN_SWEEP_PERIOD_S, timeout / SWEEPS_PER_TIMEOUT)
            self._sweeper = IdleSweeper(asyncio.get_running_loop(), period, self._sweep_idle)
        return self.address

    def _sweep_idle(self) -> None:
        """Interrupt the wait for bytes of every connection idle past its deadline (see IdleSweeper).

        A connection busy at that moment (writing, or blocked in drain(), which has a timeout of its
        own) is looked at again by the next sweep.
        """
        now = asyncio.get_running_loop().time()
        for conn in self._connections.values():
            if conn.deadline is not None and now >= conn.deadline:
                self._interrupt_read(conn, timed_out=True)

    @staticmethod
    def _interrupt_read(conn: Connection, *, timed_out: bool) -> None:
        """Cancel `conn`'s wait for bytes, if it is waiting and was not interrupted already; the
        read turns this into the IDLE goodbye (`timed_out`) or a graceful one (shutdown)."""
        if conn.idle and not conn.interrupted and conn.task is not None:
            conn.interrupted = True
            conn.timed_out = timed_out
            conn.task.cancel()

    async def close(self) -> None:
        """Stop accepting, let every connection finish the replies it owes, then close them all."""
        if self._server is None or self._closing:
            return
        self._closing = True
        self._server.close()
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_GRACE_S
        # Loop: a connection accepted just before close() may register while we wait for the others.
        while self._connections:
            for conn in self._connections.values():
                conn.stopping = True
                self._interrupt_read(conn, timed_out=False)
            tasks = [c.task for c in self._connections.values() if c.task is not None]
            if not tasks:
                break
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            if pending and loop.time() >= deadline:
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
        await self._server.wait_closed()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection to its end. start_server calls it; tests call it with in-memory streams.

        Never raises for anything the peer does: resets and timeouts end the connection quietly.
        """
        conn = Connection(reader, writer, asyncio.current_task())
        peer = writer.get_extra_info("peername")
        if len(self._connections) >= self.config.max_connections:
            log.debug("refusing %s: %d connections open", peer, len(self._connections))
            await self._refuse(conn)
            return
        conn.stopping = self._closing
        self._connections[writer] = conn
        counters = self.store.counters
        counters.connections += 1
        counters.total_connections += 1
        try:
            last_line = await self._serving.serve(conn)
            if last_line is not None:
                await goodbye(conn, last_line)
        except asyncio.CancelledError:
            if not self._closing:
                raise
        except OSError as exc:  # ConnectionResetError, BrokenPipeError, TimeoutError, ...
            log.debug("connection %s ended: %r", peer, exc)
        finally:
            counters.connections -= 1
            del self._connections[writer]
            await self._close(writer)

    async def _refuse(self, conn: Connection) -> None:
        limit = self.config.max_connections
        line = format_reply(Err(code="BUSY", message=f"server is at its limit of {limit} connections"))
        try:
            await goodbye(conn, line)
        except OSError as exc:
            log.debug("refused connection ended: %r", exc)
        finally:
            await self._close(conn.writer)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """Close, waiting a bounded time for unsent replies; a client that never reads gets cut off."""
        writer.close()
        try:
            async with asyncio.timeout(LINGER_S):
                await writer.wait_closed()
        except TimeoutError:
            writer.transport.abort()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        except OSError:  # the peer went first: closed either way
            pass


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
            open_at_signal = server.store.counters.connections
        # Announced once every connection is closed, so that the figures are final.
        requests, connections = server.store.counters.requests, server.store.counters.total_connections
        announce(f"sockrace server shutting down ({open_at_signal} connections open); "
                 f"requests answered: {requests}; connections served: {connections}")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
