"""asyncio drivers that serve ONE connection: in order, or out of order.

Both are schedulers around the connection's Session (session.py), which frames, parses and answers:
the drivers read, feed it, write what it gives and wait where it says. The in-order driver reads
whatever the socket has (many lines per read), does every action in turn, and writes the replies in
batches of at most FLUSH_BYTES, awaiting drain() after each: a client that does not read its
replies stops the server reading its requests, so no connection can make the server buffer without
bound. Replies on a connection then always leave in request order. The out-of-order driver runs
every Wait in a task of its own, each reply leaving as soon as it is ready, within a byte bound
per connection (MAX_OWED_BYTES).

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from sockrace.loop import limit_recv_size
from sockrace.protocol import Err, format_reply
from sockrace.session import AWAIT_OWED, CLOSE, ENDED, NEED_DATA, Session, SessionConfig, Wait, Yield
from sockrace.store import Store

log = logging.getLogger("sockrace.server")

# One read takes what the kernel has, up to this; 64 KiB matches the default line limit so a
# maximal line arrives in one or two reads.
READ_SIZE: Final = 64 * 1024
# Replies are written and drained whenever this much is waiting. Without the cap one 64 KiB read of
# tiny requests with big replies (GET of a 4 KiB value) would build a 45 MB batch before any drain().
FLUSH_BYTES: Final = 64 * 1024
# After the server half-closes, how long it keeps discarding the client's late bytes (see above).
LINGER_S: Final = 1.0
# With --out-of-order, what one connection may hold in replies owed and requests in progress before
# the server stops reading from it (see _OutOfOrder): a flood costs the flooder time, not the
# server memory. 512 KiB leaves room for 128 requests in progress at once, above what the demo's
# 100 coroutines keep in flight.
MAX_OWED_BYTES: Final = 512 * 1024
# What one request in progress is counted for: its task, coroutine frames, timer, request and a
# short reply (a task waiting on a SLEEP or a delay holds about 4 KiB in all, traced).
TASK_BYTES: Final = 4096


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


class Serving:
    """What every connection of one server shares: its store, the sessions' config and the seeded
    latency draw. `serve(conn)` runs the driver the config chooses around a fresh Session."""

    def __init__(self, store: Store, session_config: SessionConfig, *, seed: int,
                 idle_timeout_s: float) -> None:
        self.store = store
        self.idle_timeout_s = idle_timeout_s  # 0: never
        self._rng = random.Random(seed)
        self._session_config = session_config
        out_of_order = session_config.out_of_order
        # serve(conn): answer requests until the connection should end. Returns None when the client
        # ended it (EOF), else the last line to send before the server half-closes (b"" for none).
        # Raises OSError when the peer resets or stops reading for too long (TimeoutError). Bound
        # here rather than dispatched by a method: every idle connection holds its chain of
        # coroutine frames, and one frame less is a few hundred bytes less per connection.
        self.serve: Callable[[Connection], Awaitable[bytes | None]] = (
            self._serve_out_of_order if out_of_order else self._serve_in_order
        )

    def session(self) -> Session:
        """The engine for one new connection."""
        return Session(self.store, self._session_config, self._rng)

    async def _serve_in_order(self, conn: Connection) -> bytes | None:
        """Every action in turn: a Wait is over before the next request is even parsed."""
        session = self.session()
        receive_data, next_action, replies = session.receive_data, session.next_action, conn.replies
        loop, reader = conn.loop, conn.reader
        idle_timeout = self.idle_timeout_s
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
            if data:
                receive_data(data)
            else:
                session.feed_eof()
            action = next_action()
            if action is NEED_DATA:  # no complete request: trickling bytes are not activity
                continue
            while action is not NEED_DATA:
                if type(action) is bytes:
                    replies.append(action)
                    conn.reply_bytes += len(action)
                    if conn.reply_bytes >= FLUSH_BYTES:
                        await self._flush(conn)
                elif isinstance(action, Wait | Yield):
                    if isinstance(action, Wait):  # latency delays this reply only: the others leave
                        await self._flush(conn)
                    await self._queue(conn, await _carry_out(session, action))
                elif action is CLOSE or action is ENDED:
                    await self._flush(conn)
                    return b"" if action is CLOSE else None
                action = next_action()
            if self._write_queued(conn):
                await self._drain(conn)
            if idle_timeout > 0:
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
        idle = f"no complete request in {self.idle_timeout_s:g} s; closing"
        return format_reply(Err(code="IDLE", message=idle))

    async def _serve_out_of_order(self, conn: Connection) -> bytes | None:
        """Every Wait in a task of its own, whose reply leaves the moment it is ready.

        QUIT, EOF, the idle timeout and shutdown first wait for the replies still owed. What one
        connection holds is bounded (see _OutOfOrder), and its work is cancelled when it goes.
        """
        session = self.session()
        work = _OutOfOrder(self, conn, session)
        try:
            conn.deadline = self._idle_deadline(conn.loop)
            while not conn.stopping:
                await work.make_room()
                try:
                    data = await self._receive(conn)
                except TimeoutError:
                    await work.owed()
                    return self._idle_goodbye()
                if data is None:  # shutdown interrupted the wait
                    await work.owed()
                    return b""
                if data:
                    session.receive_data(data)
                else:
                    session.feed_eof()
                action = session.next_action()
                if action is not NEED_DATA:
                    conn.deadline = self._idle_deadline(conn.loop)
                while action is not NEED_DATA:
                    if type(action) is bytes:
                        await self._queue(conn, action)
                    elif isinstance(action, Wait | Yield):
                        await work.start(action)
                    elif action is AWAIT_OWED:
                        await self._flush(conn)
                        await work.owed()
                    elif action is CLOSE or action is ENDED:
                        await self._flush(conn)
                        await work.owed()
                        await self._flush(conn)
                        return b"" if action is CLOSE else None
                    action = session.next_action()
                await self._flush(conn)
            await work.owed()
            return b""
        finally:
            await work.cancel()

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
        timeout = self.idle_timeout_s
        return (loop or asyncio.get_running_loop()).time() + timeout if timeout > 0 else None


async def _carry_out(session: Session, action: Wait | Yield) -> bytes:
    """Do what a Wait or Yield asks, until the session gives the reply."""
    step: bytes | Wait | Yield = action
    while not isinstance(step, bytes):
        # A Yield is the unsafe INCR's await between its read and its write: e.g. a call to a
        # cache or a log, in real code. Every other connection may run meanwhile.
        await asyncio.sleep(step.ms / 1000 if isinstance(step, Wait) else 0)
        step = session.complete(step)
    return step


class _OutOfOrder:
    """The requests one out-of-order connection has in progress, each in its own task.

    Bounded in bytes: the replies written but not yet sent (the transport's buffer), the replies
    queued, and TASK_BYTES per task in progress. While over MAX_OWED_BYTES the driver reads no
    more requests, so a client that sends without reading costs the server a bounded amount of
    memory, not one task per request it ever sent. When the connection goes (reset, failed
    write), the tasks are cancelled instead of running on for nobody.
    """

    def __init__(self, serving: Serving, conn: Connection, session: Session) -> None:
        self._serving = serving
        self._conn = conn
        self._session = session
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed: asyncio.Future[None] | None = None  # done when the connection is lost

    def _owed_bytes(self) -> int:
        conn = self._conn
        return len(self._tasks) * TASK_BYTES + conn.out.get_write_buffer_size() + conn.reply_bytes

    async def make_room(self) -> None:
        """Return once what the connection holds is within the bound. Raises ConnectionResetError
        when the connection is lost meanwhile, TimeoutError when the client reads nothing for the
        idle timeout."""
        conn = self._conn
        while self._owed_bytes() > MAX_OWED_BYTES:
            if conn.out.is_closing():
                raise ConnectionResetError("connection lost with requests in progress")
            if not self._tasks:  # only unsent replies: wait for the client to read some
                await self._serving._flush(conn)
                continue
            waiters: set[asyncio.Future[Any]] = set(self._tasks)
            if (closed := self._lost()) is not None:
                waiters.add(closed)
            async with asyncio.timeout_at(self._serving._idle_deadline(conn.loop)):
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)

    def _lost(self) -> asyncio.Future[None] | None:
        """A future done when the connection is lost; None when the writer cannot tell (the
        tests' in-memory writers, whose wait_closed() returns at once)."""
        if self._closed is None:
            self._closed = asyncio.ensure_future(self._conn.writer.wait_closed())
            # Never cancelled: cancelling a task awaiting wait_closed() would cancel the stream's
            # own close future, which a later wait_closed() then raises. It ends with the connection.
            self._closed.add_done_callback(_consume_result)
        if self._closed.done() and not self._conn.out.is_closing():
            return None
        return self._closed

    async def start(self, action: Wait | Yield) -> None:
        """Run `action` in a task of its own, once there is room for it."""
        if self._conn.out.is_closing():
            raise ConnectionResetError("connection lost with requests in progress")
        await self.make_room()
        task = asyncio.create_task(self._answer(action))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, action: Wait | Yield) -> None:
        conn = self._conn
        reply = await _carry_out(self._session, action)
        conn.replies.append(reply)
        conn.reply_bytes += len(reply)
        try:
            # No drain() here: the driver's make_room() applies the backpressure for every task.
            self._serving._write_queued(conn)
        except ConnectionResetError as exc:  # the driver sees the same and ends the connection
            log.debug("out-of-order reply not delivered: %r", exc)

    async def owed(self) -> None:
        """Return once every request in progress is answered."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def cancel(self) -> None:
        """Cancel the requests still in progress (the connection is ending) and wait for them."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))


def _consume_result(future: asyncio.Future[None]) -> None:
    """Retrieve a finished future's exception, so that asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


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
