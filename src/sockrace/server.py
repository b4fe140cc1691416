"""The asyncio I/O around the protocol: accept connections, frame lines, answer each one in order.

One handler task per connection. The handler reads whatever the socket has (many lines per read),
answers every complete line, and writes the replies in batches of at most FLUSH_BYTES, awaiting
drain() after each: a client that does not read its replies stops the server reading its requests,
so no connection can make the server buffer without bound. Replies on a connection always leave in
request order.

Who ends a connection decides how it ends. The client: EOF (an unterminated last line is still
answered, then the server closes) or a reset (logged at debug level, nothing else). The server
(QUIT, idle timeout, too many connections, shutdown): it sends its last reply, half-closes, and
discards what the client still sends for up to LINGER_S, so that the kernel does not answer those
late bytes with a reset that could destroy replies the client has not read yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from sockrace.loop import limit_recv_size
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
from sockrace.store import (
    DEFAULT_MAX_KEY_BYTES,
    DEFAULT_MAX_KEYS,
    DEFAULT_MAX_VALUE_BYTES,
    Store,
    StoreLimits,
    stateless_replies,
    stateless_reply,
)

log = logging.getLogger("sockrace.server")

# One read takes what the kernel has, up to this; 64 KiB matches the default line limit so a
# maximal line arrives in one or two reads.
READ_SIZE: Final = 64 * 1024
# Replies are written and drained whenever this much is waiting. Without the cap one 64 KiB read of
# tiny requests with big replies (GET of a 4 KiB value) would build a 45 MB batch before any drain().
FLUSH_BYTES: Final = 64 * 1024
# How long shutdown waits for busy connections to finish the replies they owe before cutting them.
SHUTDOWN_GRACE_S: Final = 5.0
# After the server half-closes, how long it keeps discarding the client's late bytes (see above).
LINGER_S: Final = 1.0
# Defaults for the connection limits. 1024 is a common default `ulimit -n`; raise both together.
DEFAULT_MAX_CONNECTIONS: Final = 1024
# Long enough for any person typing at a prompt, short enough that forgotten or hostile (slowloris)
# connections do not pile up.
DEFAULT_IDLE_TIMEOUT_S: Final = 300.0
# The idle sweeper checks the connections this many times per idle timeout (see IdleSweeper), and at
# most this often, whatever the timeout.
SWEEPS_PER_TIMEOUT: Final = 4
MIN_SWEEP_PERIOD_S: Final = 0.01
# With --out-of-order, one connection has at most this many requests in progress at once; past it
# the server stops reading from that connection until one finishes, so a flood costs the flooder
# time, not the server memory. Far above what the demo's 100 coroutines keep in flight.
MAX_IN_PROGRESS: Final = 1024


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
    # `_serve_out_of_order`): only tagged requests can then be matched to their replies.
    out_of_order: bool = False
    # INCR reads, yields to the event loop, then writes: concurrent INCRs lose updates (a demo).
    unsafe_incr: bool = False

    def store_limits(self) -> StoreLimits:
        return StoreLimits(self.max_keys, self.max_key_bytes, self.max_value_bytes)


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    idle: bool = False  # True while waiting for bytes: the only moment shutdown may interrupt it
    interrupted: bool = False  # shutdown or the idle timeout cancelled the wait for bytes (once)
    timed_out: bool = False  # ... and it was the idle timeout
    # Idle past this loop time (None: never), the connection is closed by the next sweep (see
    # IdleSweeper). Moved forward on every answered read: a float assignment, not a timer.
    deadline: float | None = None
    # Where replies go: the writer's transport (one call per operation instead of two), or the
    # writer itself when it has none (the tests' in-memory writers).
    out: _Output = field(init=False)
    replies: list[bytes] = field(default_factory=list)  # computed, not yet written
    reply_bytes: int = 0
    # Looked up once: on CPython 3.11, asyncio.get_running_loop() makes a getpid() system call (a
    # fork check), which cost two system calls per lock-step request when it was called per read.
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)

    def __post_init__(self) -> None:
        writer = self.writer
        self.out = writer.transport if isinstance(writer, asyncio.StreamWriter) else writer
        limit_recv_size(self.out, READ_SIZE)


class _Output(Protocol):
    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...
    def get_write_buffer_size(self) -> int: ...


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


@dataclass(slots=True)
class Server:
    """A sockrace server. Use `async with Server(config) as server:`; `server.address` is bound."""

    config: ServerConfig = field(default_factory=ServerConfig)
    store: Store = field(init=False)
    _server: asyncio.Server | None = None
    _connections: dict[asyncio.StreamWriter, _Connection] = field(default_factory=dict)
    _closing: bool = False
    _rng: random.Random = field(init=False)
    _sweeper: IdleSweeper | None = None

    def __post_init__(self) -> None:
        self.store = Store(self.config.store_limits())
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
    def _interrupt_read(conn: _Connection, *, timed_out: bool) -> None:
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
        conn = _Connection(reader, writer, asyncio.current_task())
        peer = writer.get_extra_info("peername")
        if len(self._connections) >= self.config.max_connections:
            log.debug("refusing %s: %d connections open", peer, len(self._connections))
            await self._refuse(conn)
            return
        self._connections[writer] = conn
        counters = self.store.counters
        counters.connections += 1
        counters.total_connections += 1
        try:
            serve = self._serve_out_of_order if self.config.out_of_order else self._serve
            goodbye = await serve(conn)
            if goodbye is not None:
                await self._goodbye(conn, goodbye)
        except asyncio.CancelledError:
            if not self._closing:
                raise
        except OSError as exc:  # ConnectionResetError, BrokenPipeError, TimeoutError, ...
            log.debug("connection %s ended: %r", peer, exc)
        finally:
            counters.connections -= 1
            del self._connections[writer]
            await self._close(writer)

    async def _serve(self, conn: _Connection) -> bytes | None:
        """Answer requests until the connection should end.

        Returns None when the client ended it (EOF), else the last line to send before the server
        half-closes (b"" for none). Raises OSError when the peer resets or stops reading for too long.
        """
        lines = LineBuffer(self.config.max_line)
        counters = self.store.counters
        # With no artificial latency, PING and ECHO are answered straight from their bytes: the hot
        # path of every benchmark, with no event objects and no coroutine per request.
        fast = self.config.delay_ms == 0 and self.config.jitter_ms == 0
        replies = conn.replies
        loop, reader = conn.loop, conn.reader
        idle_timeout = self.config.idle_timeout_s
        conn.deadline = self._idle_deadline(loop)
        while not self._closing:
            # The read is inlined (see _receive): a coroutine call less per request.
            conn.idle = True
            try:
                data = await reader.read(READ_SIZE)
            except asyncio.CancelledError:
                if not self._interrupted(conn):
                    raise
                return self._idle_goodbye() if conn.timed_out else b""
            finally:
                conn.idle = False
            answered = 0
            unfed: bytes | None = data  # fed to `lines` by the loop's first call
            while True:
                try:
                    if unfed is None:
                        batch = lines.next_lines()
                    else:
                        batch, unfed = lines.feed_lines(unfed), None
                except LineTooLong as exc:
                    unfed = None
                    await self._reject(conn, exc)
                    answered += 1
                    continue
                if not batch:
                    break
                answered += len(batch)
                if fast:
                    # A read of nothing but PING and ECHO (the benchmark's load): every reply in
                    # one call, with no Python loop here; any other verb takes the loop below.
                    quick_replies = stateless_replies(batch)
                    if quick_replies is not None:
                        replies.append(quick_replies)  # see the FLUSH_BYTES note below
                        counters.requests += len(batch)
                        continue
                quick = 0  # fast-path replies queued but not yet counted: counted once per batch
                for line in batch:
                    reply = stateless_reply(line) if fast else None
                    if reply is not None:
                        # No FLUSH_BYTES check per reply: a PING or ECHO reply is at most 3 bytes
                        # longer than its request, so what one read's requests queue stays within
                        # a few hundred KiB, and it is flushed at the end of the read.
                        replies.append(reply)
                        quick += 1
                        continue
                    counters.requests += quick  # before STATS, say, can read the count
                    quick = 0
                    if await self._answer(conn, line):
                        await self._flush(conn)
                        return b""  # QUIT: its reply is already written
                counters.requests += quick
            if not data:  # EOF: an unterminated last line is still a request (documented)
                leftover = lines.leftover()
                if leftover:
                    await self._answer(conn, leftover)
                await self._flush(conn)
                return None
            if self._write_queued(conn):
                await self._drain(conn)
            if answered and idle_timeout > 0:  # only complete requests count as activity, not trickling bytes
                conn.deadline = loop.time() + idle_timeout
        return b""

    async def _receive(self, conn: _Connection) -> bytes | None:
        """The next bytes from the client; b"" at EOF; None when shutdown interrupted the wait.

        Raises TimeoutError when the idle sweeper interrupted it, OSError when the connection is reset.
        """
        conn.idle = True
        try:
            return await conn.reader.read(READ_SIZE)
        except asyncio.CancelledError:
            if not self._interrupted(conn):
                raise
            if conn.timed_out:
                raise TimeoutError from None
            return None
        finally:
            conn.idle = False

    @staticmethod
    def _interrupted(conn: _Connection) -> bool:
        """For a read that was cancelled: True when the server did it (shutdown or the idle
        sweeper), and then the cancellation is taken back; False when it came from elsewhere."""
        task = asyncio.current_task()
        if not conn.interrupted or task is None:
            return False
        task.uncancel()
        return True

    def _idle_goodbye(self) -> bytes:
        idle = f"no complete request in {self.config.idle_timeout_s:g} s; closing"
        return format_reply(Err(code="IDLE", message=idle))

    async def _answer(self, conn: _Connection, line: bytes) -> bool:
        """Queue the reply to `line`; return True when the connection should close (QUIT)."""
        reply, quit_ = await self._reply(line, flush_first=conn)
        await self._queue(conn, reply)
        return quit_

    async def _reply(self, line: bytes, flush_first: _Connection | None) -> tuple[bytes, bool]:
        """The reply line to `line`, after its SLEEP and latency, and whether it was QUIT.

        Before waiting, the replies already queued on `flush_first` leave, so that latency delays
        this reply only.
        """
        try:
            request = parse_request(line)
        except ProtocolError as exc:
            return self._error_line(exc), False
        self.store.counters.requests += 1
        wait_ms = request.ms if isinstance(request, Sleep) else 0.0
        wait_ms += self._latency_ms()
        if wait_ms > 0:
            if flush_first is not None:
                await self._flush(flush_first)
            await asyncio.sleep(wait_ms / 1000)
        if self.config.unsafe_incr and isinstance(request, Incr):
            reply = await self._unsafe_incr(request)
        else:
            reply = self.store.apply(request)
        return format_reply(reply), isinstance(request, Quit)

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

    def _error_line(self, error: ProtocolError) -> bytes:
        """The ERR line for a line that broke the grammar (it still counts as a request)."""
        counters = self.store.counters
        counters.requests += 1
        counters.errors += 1
        return format_reply(error_reply(error))

    async def _reject(self, conn: _Connection, error: ProtocolError) -> None:
        await self._queue(conn, self._error_line(error))

    async def _serve_out_of_order(self, conn: _Connection) -> bytes | None:
        """Like `_serve`, but answer every request as soon as it is done, not in arrival order.

        Every request runs in its own task (with its SLEEP, delay and jitter) and writes its reply,
        a whole line in one write, the moment it is done. QUIT, EOF, the idle timeout and shutdown
        first wait for the replies still owed.
        """
        lines = LineBuffer(self.config.max_line)
        in_progress: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(MAX_IN_PROGRESS)

        async def answer(line: bytes) -> None:
            try:
                reply, _ = await self._reply(line, flush_first=None)
                await self._queue(conn, reply)
                await self._flush(conn)
            except OSError as exc:  # the connection's own loop sees the same failure and ends it
                log.debug("out-of-order reply not delivered: %r", exc)
            finally:
                slots.release()

        async def owed() -> None:
            if in_progress:
                await asyncio.wait(set(in_progress))

        try:
            conn.deadline = self._idle_deadline(conn.loop)
            while not self._closing:
                try:
                    data = await self._receive(conn)
                except TimeoutError:
                    await owed()
                    return self._idle_goodbye()
                if data is None:  # shutdown interrupted the wait
                    await owed()
                    return b""
                if data:
                    lines.feed(data)
                quit_line = None
                answered = 0
                while True:
                    try:
                        line = lines.next_line()
                    except LineTooLong as exc:
                        await self._reject(conn, exc)
                        await self._flush(conn)
                        continue
                    if line is None:
                        break
                    answered += 1
                    if self._is_quit(line):
                        quit_line = line
                        break
                    await slots.acquire()
                    task = asyncio.create_task(answer(line))
                    in_progress.add(task)
                    task.add_done_callback(in_progress.discard)
                if answered:
                    conn.deadline = self._idle_deadline(conn.loop)
                if quit_line is None and data:
                    continue
                await owed()  # QUIT or EOF: finish what is owed first
                if quit_line is not None:
                    await self._answer(conn, quit_line)
                    await self._flush(conn)
                    return b""
                if leftover := lines.leftover():  # EOF: an unterminated last line is still a request
                    await self._answer(conn, leftover)
                await self._flush(conn)
                return None
            await owed()
            return b""
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

    async def _queue(self, conn: _Connection, reply: bytes) -> None:
        conn.replies.append(reply)
        conn.reply_bytes += len(reply)
        if conn.reply_bytes >= FLUSH_BYTES:
            await self._flush(conn)

    async def _flush(self, conn: _Connection) -> None:
        """Write the queued replies and wait until the transport's buffer is low again.

        Raises OSError when the connection is lost, TimeoutError when the client does not read for
        the idle timeout.
        """
        if self._write_queued(conn):
            await self._drain(conn)

    @staticmethod
    def _write_queued(conn: _Connection) -> bool:
        """Hand the queued replies to the transport in one write; True when drain() is needed (the
        transport still holds bytes: otherwise drain() would return at once, after costing a timer).

        Raises ConnectionResetError when the connection is already closed.
        """
        out = conn.out
        if out.is_closing():
            # The peer is gone. Writing anyway would only make asyncio log "socket.send() raised
            # exception." for every late reply (out-of-order tasks still finishing, for example).
            conn.replies.clear()
            conn.reply_bytes = 0
            raise ConnectionResetError("connection lost before the reply could be sent")
        if conn.replies:
            out.write(b"".join(conn.replies))
            conn.replies.clear()
            conn.reply_bytes = 0
        return out.get_write_buffer_size() > 0

    async def _drain(self, conn: _Connection) -> None:
        async with asyncio.timeout_at(self._idle_deadline(conn.loop)):
            await conn.writer.drain()

    async def _goodbye(self, conn: _Connection, last_line: bytes) -> None:
        """Send `last_line`, half-close, and discard what the client still sends for up to LINGER_S."""
        writer = conn.writer
        if last_line:
            writer.write(last_line)
        if writer.is_closing() or not writer.can_write_eof():
            return
        writer.write_eof()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_S):
                while await conn.reader.read(READ_SIZE):
                    pass

    async def _refuse(self, conn: _Connection) -> None:
        limit = self.config.max_connections
        line = format_reply(Err(code="BUSY", message=f"server is at its limit of {limit} connections"))
        try:
            await self._goodbye(conn, line)
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

    def _idle_deadline(self, loop: asyncio.AbstractEventLoop | None = None) -> float | None:
        """The loop time at which an idle connection times out from now; None: never."""
        timeout = self.config.idle_timeout_s
        return (loop or asyncio.get_running_loop()).time() + timeout if timeout > 0 else None

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
            open_at_signal = server.store.counters.connections
        # Announced once every connection is closed, so that the figures are final.
        requests, connections = server.store.counters.requests, server.store.counters.total_connections
        announce(f"sockrace server shutting down ({open_at_signal} connections open); "
                 f"requests answered: {requests}; connections served: {connections}")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
