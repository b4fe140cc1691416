"""The server's lifecycle: listen, accept (within a file-descriptor budget), hand each connection to
its driver or refuse it, sweep idle connections, and shut down gracefully.

Serving one connection (reading, answering, writing, saying goodbye) is serving.py's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final, Protocol

from sockrace.listener import Listener, bind, fd_budget
from sockrace.protocol import DEFAULT_MAX_LINE, Err, format_reply
from sockrace.serving import LINGER_S, READ_SIZE, Connection, Serving, goodbye
from sockrace.session import SessionConfig
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
# A refused connection gets its BUSY line, then the server discards what the client sends for up to
# this long (so that the kernel does not turn the line into a reset, see serving.py), and then waits
# as long again at most for the line to leave. Short, because a flood is made of refusals.
REFUSAL_LINGER_S: Final = 0.25
# Refusals under way at once, at most: each holds a file descriptor for up to 2 x REFUSAL_LINGER_S.
# Past it the server accepts nothing until one ends (the kernel's backlog holds the next).
MAX_REFUSALS: Final = 64

# Defaults for the connection limits. 1024 is a common default `ulimit -n`; the server also keeps
# what it holds below that limit by itself (see listener.py).
DEFAULT_MAX_CONNECTIONS: Final = 1024
# Long enough for any person typing at a prompt, short enough that forgotten or hostile (slowloris)
# connections do not pile up.
DEFAULT_IDLE_TIMEOUT_S: Final = 300.0
# Beyond a year an idle timeout means "never", which 0 says plainly; the bound also keeps every
# wait of the sweeper far inside what the platform's clock arithmetic can hold.
MAX_IDLE_TIMEOUT_S: Final = 365 * 24 * 3600.0
# The idle sweeper checks the connections this many times per idle timeout (see IdleSweeper), and at
# most this often, whatever the timeout.
SWEEPS_PER_TIMEOUT: Final = 4
MIN_SWEEP_PERIOD_S: Final = 0.01


def _check_number(name: str, value: float, low: float, high: float = math.inf) -> None:
    if not low <= value <= high or not math.isfinite(value):
        bound = f"from {low:g} to {high:g}" if math.isfinite(high) else f"a finite number >= {low:g}"
        raise ValueError(f"ServerConfig.{name} must be {bound}, got {value:g}")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """What a server is. Raises ValueError, naming the field, for a value it cannot run with."""

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

    def __post_init__(self) -> None:
        _check_number("port", self.port, 0, 65535)
        _check_number("delay_ms", self.delay_ms, 0)
        _check_number("jitter_ms", self.jitter_ms, 0)
        _check_number("idle_timeout_s", self.idle_timeout_s, 0, MAX_IDLE_TIMEOUT_S)
        _check_number("max_line", self.max_line, 1)
        _check_number("max_keys", self.max_keys, 1)
        _check_number("max_key_bytes", self.max_key_bytes, 1)
        _check_number("max_value_bytes", self.max_value_bytes, 1)
        _check_number("max_connections", self.max_connections, 1)

    def session_config(self) -> SessionConfig:
        return SessionConfig(max_line=self.max_line, delay_ms=self.delay_ms, jitter_ms=self.jitter_ms,
                             unsafe_incr=self.unsafe_incr, out_of_order=self.out_of_order)

    def store_limits(self) -> StoreLimits:
        return StoreLimits(self.max_keys, self.max_key_bytes, self.max_value_bytes)


Sweep = Callable[[], None]


class IdleSweeper:
    """Enforces the idle timeout of every connection from one background thread.

    Why not a timer on the event loop: while any timer is pending, asyncio's loop computes a select()
    timeout and walks its timer heap on every pass, and the kernel arms a timer for every wait. In
    lock-step traffic that was a tenth of the server's instructions per request, for a timeout that
    fires once in minutes. The thread sleeps a quarter of the timeout at a time, then asks the loop
    to run `sweep`: a connection is closed between `idle_timeout` and 1.25 x `idle_timeout` after
    its last complete request.

    `Server(config, sweeper=...)` takes any callable with this constructor's parameters that returns
    something with `stop()`: tests pass one that never sweeps by itself, and call
    `Server.sweep_idle(now)` at a loop time of their choosing.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, period_s: float, sweep: Sweep) -> None:
        self._loop = loop
        # Clamped, so that no period (NaN included) makes the thread's wait overflow the platform's
        # clock or spin.
        period_s = period_s if period_s >= MIN_SWEEP_PERIOD_S else MIN_SWEEP_PERIOD_S
        self.period_s = min(period_s, threading.TIMEOUT_MAX / 2)
        self._sweep = sweep
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sockrace idle sweeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.period_s):
            try:
                self._loop.call_soon_threadsafe(self._sweep)
            except RuntimeError:  # the loop is closed: nothing left to sweep
                return

    def stop(self) -> None:
        """Stop the thread; returns once it has ended (at once: it waits on the event)."""
        self._stopped.set()
        self._thread.join()


class _Stoppable(Protocol):
    def stop(self) -> None: ...


SweeperFactory = Callable[[asyncio.AbstractEventLoop, float, Sweep], _Stoppable]


class Server:
    """A sockrace server. Use `async with Server(config) as server:`; `server.address` is bound.

    It holds at most max_connections served connections plus MAX_REFUSALS being refused, and never
    more than the process's RLIMIT_NOFILE leaves (see listener.py): past that it stops accepting
    until a connection closes.
    """

    def __init__(self, config: ServerConfig | None = None, *, sweeper: SweeperFactory = IdleSweeper) -> None:
        self.config = config or ServerConfig()
        self.store = Store(self.config.store_limits())
        self._serving = Serving(self.store, self.config.session_config(), seed=self.config.seed,
                                idle_timeout_s=self.config.idle_timeout_s)
        self._listener: Listener | None = None
        self._connections: dict[asyncio.StreamWriter, Connection] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # one per accepted socket, until it is closed
        self._closing = False
        self._make_sweeper = sweeper
        self._sweeper: _Stoppable | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._listener is None:
            raise RuntimeError("server is not started")
        host, port = self._listener.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> tuple[str, int]:
        """Bind and listen. Raises OSError when the address cannot be bound."""
        sockets = await bind(self.config.host, self.config.port)
        limit = self.config.max_connections + MAX_REFUSALS
        budget = fd_budget()
        if budget is not None:
            limit = min(limit, budget)
        self._listener = Listener(sockets, self._accepted, limit)
        self._listener.start()
        timeout = self.config.idle_timeout_s
        if timeout > 0:
            loop = asyncio.get_running_loop()
            self._sweeper = self._make_sweeper(loop, timeout / SWEEPS_PER_TIMEOUT, self.sweep_idle)
        return self.address

    def sweep_idle(self, now: float | None = None) -> None:
        """Interrupt the wait for bytes of every connection idle past its deadline at loop time
        `now` (default: the loop's time now). The idle sweeper calls it; tests may call it with a
        time of their choosing instead of waiting.

        A connection busy at that moment (writing, or blocked in drain(), which has a timeout of its
        own) is looked at again by the next sweep.
        """
        if now is None:
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
        """Stop accepting, let every connection finish the replies it owes, then close them all.

        Takes at most SHUTDOWN_GRACE_S plus one LINGER_S; no connection task is left running.
        """
        if self._listener is None or self._closing:
            return
        self._closing = True
        self._listener.close()
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_GRACE_S
        # Loop: a socket accepted just before close() may register while we wait for the others.
        while self._tasks:
            for conn in self._connections.values():
                conn.stopping = True
                self._interrupt_read(conn, timed_out=False)
            _, pending = await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - loop.time()))
            if pending and loop.time() >= deadline:
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _accepted(self, sock: socket.socket) -> None:
        task = asyncio.get_running_loop().create_task(self._run_accepted(sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_accepted(self, sock: socket.socket) -> None:
        """Wrap an accepted socket in streams and serve it; the listener learns when it is closed."""
        assert self._listener is not None
        try:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=self.config.max_line)
            protocol = asyncio.StreamReaderProtocol(reader)
            try:
                transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
            except OSError as exc:  # reset before it could be wrapped
                log.debug("accepted connection lost at once: %r", exc)
                sock.close()
                return
            except asyncio.CancelledError:
                sock.close()
                if not self._closing:
                    raise
                _forgive_cancellation()  # shutdown ran out of grace: closing the socket is enough
                return
            await self.handle_connection(reader, asyncio.StreamWriter(transport, protocol, reader, loop))
        finally:
            self._listener.release()

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection to its end. The listener calls it; tests call it with in-memory streams.

        Never raises for anything the peer does: resets and timeouts end the connection quietly, and
        a connection cut by shutdown ends normally rather than cancelled.
        """
        conn = Connection(reader, writer, asyncio.current_task())
        try:
            if len(self._connections) >= self.config.max_connections:
                await self._refuse(conn)
                return
            # Served here rather than in a coroutine of its own: an idle connection holds its chain
            # of coroutine frames, and one frame less is a few hundred bytes less per connection.
            peer = writer.get_extra_info("peername")
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
                _forgive_cancellation()
            except OSError as exc:  # ConnectionResetError, BrokenPipeError, TimeoutError, ...
                log.debug("connection %s ended: %r", peer, exc)
            finally:
                counters.connections -= 1
                del self._connections[writer]
                await _close(writer, LINGER_S)
        except asyncio.CancelledError:
            # Past its grace, shutdown cancels what is left (see close()), even during the close above.
            if not self._closing:
                raise
            _forgive_cancellation()

    async def _refuse(self, conn: Connection) -> None:
        """Say BUSY, half-close, discard what the client sends for a moment, close: a short goodbye."""
        writer = conn.writer
        peer = writer.get_extra_info("peername")
        log.debug("refusing %s: %d connections open", peer, len(self._connections))
        limit = self.config.max_connections
        line = format_reply(Err(code="BUSY", message=f"server is at its limit of {limit} connections"))
        try:
            writer.write(line)
            if not writer.is_closing() and writer.can_write_eof():
                writer.write_eof()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REFUSAL_LINGER_S):
                        while await conn.reader.read(READ_SIZE):
                            pass
        except OSError as exc:
            log.debug("refused connection ended: %r", exc)
        finally:
            await _close(writer, REFUSAL_LINGER_S)


def _forgive_cancellation() -> None:
    """Take back the cancellation just caught, so that the task ends as finished, not cancelled."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _consume_outcome(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a reset seen while closing is nobody's business


async def _close(writer: asyncio.StreamWriter, linger_s: float) -> None:
    """Close, waiting up to `linger_s` for unsent replies; a client that never reads gets cut off.

    The wait for the close runs as a task of its own: a timeout around wait_closed() itself would
    cancel the protocol's close future, and any later wait_closed() (asyncio's, or ours after the
    abort) would raise CancelledError from it; on Python 3.11 and 3.12 that ends in a traceback.
    If shutdown cancels this wait, the connection is cut off all the same.
    """
    writer.close()
    closed = asyncio.ensure_future(writer.wait_closed())
    closed.add_done_callback(_consume_outcome)
    try:
        await asyncio.wait({closed}, timeout=linger_s)
    finally:
        if not closed.done():
            writer.transport.abort()


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
