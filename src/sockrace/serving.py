"""asyncio drivers that serve ONE connection: in order, or out of order.

The in-order driver reads whatever the socket has (many lines per read), answers every complete
line, and writes the replies in batches of at most FLUSH_BYTES, awaiting drain() after each: a
client that does not read its replies stops the server reading its requests, so no connection can
make the server buffer without bound. Replies on a connection then always leave in request order.
The out-of-order driver answers every request in its own task, each reply as soon as it is done.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from sockrace.fastpath import stateless_replies, stateless_reply
from sockrace.loop import limit_recv_size
from sockrace.protocol import (
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

if TYPE_CHECKING:
    from sockrace.server import ServerConfig

log = logging.getLogger("sockrace.server")

# One read takes what the kernel has, up to this; 64 KiB matches the default line limit so a
# maximal line arrives in one or two reads.
READ_SIZE: Final = 64 * 1024
# Replies are written and drained whenever this much is waiting. Without the cap one 64 KiB read of
# tiny requests with big replies (GET of a 4 KiB value) would build a 45 MB batch before any drain().
FLUSH_BYTES: Final = 64 * 1024
# After the server half-closes, how long it keeps discarding the client's late bytes (see above).
LINGER_S: Final = 1.0
# With --out-of-order, one connection has at most this many requests in progress at once; past it
# the server stops reading from that connection until one finishes, so a flood costs the flooder
# time, not the server memory. Far above what the demo's 100 coroutines keep in flight.
MAX_IN_PROGRESS: Final = 1024


class _Output(Protocol):
    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...
    def get_write_buffer_size(self) -> int: ...


@dataclass(slots=True)
class Connection:
    """One connection's streams and the state its server's lifecycle shares with its driver."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    idle: bool = False  # True while waiting for bytes: the only moment shutdown may interrupt it
    interrupted: bool = False  # shutdown or the idle timeout cancelled the wait for bytes (once)
    timed_out: bool = False  # ... and it was the idle timeout
    # The server is shutting down: the driver finishes the read in hand, then says goodbye.
    stopping: bool = False
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


def _interrupted(conn: Connection) -> bool:
    """For a read that was cancelled: True when the server did it (shutdown or the idle
    sweeper), and then the cancellation is taken back; False when it came from elsewhere."""
    task = asyncio.current_task()
    if not conn.interrupted or task is None:
        return False
    task.uncancel()
    return True


def _is_quit(line: bytes) -> bool:
    try:
        return isinstance(parse_request(line), Quit)
    except ProtocolError:
        return False


class Serving:
    """What every connection of one server shares: its config, its store and the seeded latency
    draw. `serve(conn)` runs the driver the config chooses."""

    def __init__(self, config: ServerConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self._rng = random.Random(config.seed)

    async def serve(self, conn: Connection) -> bytes | None:
        """Answer requests until the connection should end.

        Returns None when the client ended it (EOF), else the last line to send before the server
        half-closes (b"" for none). Raises OSError when the peer resets or stops reading for too long.
        """
        if self.config.out_of_order:
            return await self._serve_out_of_order(conn)
        return await self._serve(conn)

    async def _serve(self, conn: Connection) -> bytes | None:
        lines = LineBuffer(self.config.max_line)
        counters = self.store.counters
        # With no artificial latency, PING and ECHO are answered straight from their bytes: the hot
        # path of every benchmark, with no event objects and no coroutine per request.
        fast = self.config.delay_ms == 0 and self.config.jitter_ms == 0
        replies = conn.replies
        loop, reader = conn.loop, conn.reader
        idle_timeout = self.config.idle_timeout_s
        conn.deadline = self._idle_deadline(loop)
        while not conn.stopping:
            # The read is inlined (see _receive): a coroutine call less per request.
            conn.idle = True
            try:
                data = await reader.read(READ_SIZE)
            except asyncio.CancelledError:
                if not _interrupted(conn):
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

    async def _receive(self, conn: Connection) -> bytes | None:
        """The next bytes from the client; b"" at EOF; None when shutdown interrupted the wait.

        Raises TimeoutError when the idle sweeper interrupted it, OSError when the connection is reset.
        """
        conn.idle = True
        try:
            return await conn.reader.read(READ_SIZE)
        except asyncio.CancelledError:
            if not _interrupted(conn):
                raise
            if conn.timed_out:
                raise TimeoutError from None
            return None
        finally:
            conn.idle = False

    def _idle_goodbye(self) -> bytes:
        idle = f"no complete request in {self.config.idle_timeout_s:g} s; closing"
        return format_reply(Err(code="IDLE", message=idle))

    async def _answer(self, conn: Connection, line: bytes) -> bool:
        """Queue the reply to `line`; return True when the connection should close (QUIT)."""
        reply, quit_ = await self._reply(line, flush_first=conn)
        await self._queue(conn, reply)
        return quit_

    async def _reply(self, line: bytes, flush_first: Connection | None) -> tuple[bytes, bool]:
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

    async def _reject(self, conn: Connection, error: ProtocolError) -> None:
        await self._queue(conn, self._error_line(error))

    async def _serve_out_of_order(self, conn: Connection) -> bytes | None:
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
            while not conn.stopping:
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
                    if _is_quit(line):
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

    async def _queue(self, conn: Connection, reply: bytes) -> None:
        conn.replies.append(reply)
        conn.reply_bytes += len(reply)
        if conn.reply_bytes >= FLUSH_BYTES:
            await self._flush(conn)

    async def _flush(self, conn: Connection) -> None:
        """Write the queued replies and wait until the transport's buffer is low again.

        Raises OSError when the connection is lost, TimeoutError when the client does not read for
        the idle timeout.
        """
        if self._write_queued(conn):
            await self._drain(conn)

    @staticmethod
    def _write_queued(conn: Connection) -> bool:
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

    async def _drain(self, conn: Connection) -> None:
        async with asyncio.timeout_at(self._idle_deadline(conn.loop)):
            await conn.writer.drain()

    def _idle_deadline(self, loop: asyncio.AbstractEventLoop | None = None) -> float | None:
        """The loop time at which an idle connection times out from now; None: never."""
        timeout = self.config.idle_timeout_s
        return (loop or asyncio.get_running_loop()).time() + timeout if timeout > 0 else None

    def _latency_ms(self) -> float:
        config = self.config
        if config.jitter_ms > 0:
            return config.delay_ms + self._rng.uniform(0, config.jitter_ms)
        return config.delay_ms


async def goodbye(conn: Connection, last_line: bytes) -> None:
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
