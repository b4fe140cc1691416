"""The shared connection and the client strategies: one small class each, one interface.

Every strategy sends a planned request over the ONE connection it is given and returns the raw
reply line it received. Whether that line answers the request is judged elsewhere (workload.py):
a strategy is free to be wrong, and the unsafe one is, on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from typing import ClassVar, Final, Protocol

from sockrace.events import EventKind, Recorder
from sockrace.loop import limit_recv_size
from sockrace.protocol import DEFAULT_MAX_LINE, LineBuffer
from sockrace.workload import Step

# One read takes what the kernel has, up to this: a hundred replies arrive in one read.
READ_SIZE: Final = 64 * 1024
# A write batch leaves as soon as it holds this many lines, not only at the end of the event loop's
# pass: the server then answers the first lines while the coroutines of the same pass are still
# writing the rest, and client and server work at the same time instead of taking turns. Measured
# with 100 coroutines on 2 cores (benchmarks/run.py): about 1.5x the throughput of one batch per pass.
FLUSH_AT_LINES: Final = 64


async def yield_times(n: int) -> None:
    """Let every other ready coroutine run, `n` times: the explicit suspension points of a race."""
    for _ in range(n):
        await asyncio.sleep(0)


class Writer(Protocol):
    """What a strategy needs of asyncio.StreamWriter (tests substitute an in-memory one)."""

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def is_closing(self) -> bool: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, Writer]]]


class SharedConnection:
    """One StreamReader/StreamWriter pair that every coroutine of a run shares.

    `opener`, when given, opens a fresh pair: `reopen()` uses it to replace a connection that a
    cancelled request left with an unread reply (see LockedCancelSafe).
    """

    __slots__ = ("_lines", "_opener", "lines_received", "reader", "reopened", "writer")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: Writer,
        *,
        opener: Opener | None = None,
        max_line: int = DEFAULT_MAX_LINE,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._lines = LineBuffer(max_line)  # framing for read_lines()
        self.lines_received = 0
        self.reopened = 0
        self._opener = opener

    @classmethod
    async def open(cls, host: str, port: int, *, limit: int = DEFAULT_MAX_LINE) -> SharedConnection:
        """Connect over TCP. Raises OSError when the server cannot be reached."""

        async def opener() -> tuple[asyncio.StreamReader, Writer]:
            reader, writer = await asyncio.open_connection(host, port, limit=limit)
            limit_recv_size(writer.transport, READ_SIZE)
            return reader, writer

        reader, writer = await opener()
        return cls(reader, writer, opener=opener, max_line=limit)

    def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("connection is closed")
        self.writer.write(data)

    async def read_line(self) -> bytes:
        """One reply line, with its newline.

        Raises RuntimeError when another coroutine is already waiting on the reader (asyncio's own
        guard), asyncio.IncompleteReadError at EOF, asyncio.LimitOverrunError on an over-long line.
        """
        line = await self.reader.readuntil(b"\n")
        self.lines_received += 1
        return line

    async def read_lines(self) -> list[bytes]:
        """Every complete reply line that has arrived, waiting for at least one; each with its newline.

        For a single reader that owns the stream (one await per chunk rather than per line); do not
        mix with `read_line` on the same connection. Raises asyncio.IncompleteReadError at EOF and
        protocol.LineTooLong on an over-long line.
        """
        lines: list[bytes] = []
        while not lines:
            data = await self.reader.read(READ_SIZE)
            if not data:
                raise asyncio.IncompleteReadError(self._lines.leftover(), None)
            self._lines.feed(data)
            # One split per read, not a search and a copy per line; the lines keep their newline.
            while batch := self._lines.next_lines():
                lines += [line + b"\n" for line in batch]
        self.lines_received += len(lines)
        return lines

    def abort(self) -> None:
        """Close the streams now, without waiting: whatever the peer still sends is thrown away."""
        self.writer.close()

    async def reopen(self) -> None:
        """Close the current streams and open fresh ones to the same peer.

        Raises RuntimeError when the connection was made without an opener, OSError when the peer
        cannot be reached (the old streams stay closed; a later call may try again).
        """
        if self._opener is None:
            raise RuntimeError("this connection cannot be reopened: it was made without an opener")
        await self.close()
        self.reader, self.writer = await self._opener()
        self._lines = LineBuffer(self._lines.max_line)
        self.reopened += 1

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):  # the peer went first: closed either way
            await self.writer.wait_closed()


class Strategy:
    """How coroutines share the connection. Subclasses override `roundtrip`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    # Set by race() when a timeline or report was asked for. Strategies mark WROTE once the whole
    # request is written and READING when they start waiting for the reply; None means: do nothing.
    recorder: Recorder | None = None

    def __init__(self, connection: SharedConnection) -> None:
        self.connection = connection
        # Replies that arrived for nobody (their requester had given up): thrown away, never handed
        # to another coroutine. Only the strategies with a reader task can see them.
        self.dropped = 0

    async def roundtrip(self, step: Step) -> bytes:
        """Send `step`'s request; return the reply line this coroutine received."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the strategy started (reader tasks); the connection is closed by its owner."""

    async def _send(self, step: Step, prefix: bytes = b"") -> None:
        """Write `prefix` + the step's request line, in one call or split as the plan says.

        Cancelled between the two parts of a split write, it still writes the second part before
        the cancellation goes on: a half-sent line would garble every request after it, while a
        whole line costs at most one unwanted reply.
        """
        line = prefix + step.line
        if step.split_at:
            # Two writes with a suspension between: another writer can slip its bytes in the middle.
            split_at = len(prefix) + step.split_at
            self._write(line[:split_at])
            try:
                await yield_times(step.split_pause)
            except BaseException:
                with contextlib.suppress(ConnectionError):
                    self._write(line[split_at:])
                raise
            self._write(line[split_at:])
        else:
            self._write(line)
        await self.connection.writer.drain()
        if self.recorder is not None:
            self.recorder.mark(EventKind.WROTE, step)

    def _write(self, data: bytes) -> None:
        """Hand bytes to the transport. Raises ConnectionResetError once the connection is closed."""
        self.connection.write(data)

    async def _exchange(self, step: Step) -> bytes:
        """Write, pause, read: the request/response pair with nothing protecting it."""
        await self._send(step)
        if step.pause:  # no coroutine to create and run when there is nothing to yield
            await yield_times(step.pause)
        if self.recorder is not None:
            self.recorder.mark(EventKind.READING, step)
        return await self.connection.read_line()


class Unsafe(Strategy):
    name = "unsafe"
    summary = "no coordination: every coroutine writes and reads the shared streams when it likes"

    async def roundtrip(self, step: Step) -> bytes:
        return await self._exchange(step)


class Locked(Strategy):
    name = "locked"
    summary = "an asyncio.Lock held across each write+read pair"

    def __init__(self, connection: SharedConnection) -> None:
        super().__init__(connection)
        self._lock = asyncio.Lock()

    async def roundtrip(self, step: Step) -> bytes:
        async with self._lock:
            return await self._exchange(step)


class LockedCancelSafe(Locked):
    name = "locked-cancel-safe"
    summary = ("the lock, and a request cancelled between its write and its read closes the connection; "
               "the next request reopens it")

    def __init__(self, connection: SharedConnection) -> None:
        super().__init__(connection)
        # True from a request's write until its reply is read. Still True once the lock is free
        # means that request was cancelled (or failed) halfway: its reply may still come, so nobody
        # may read from these streams again. redis-py fixed CVE-2023-28858/28859 the same way.
        self._reply_owed = False

    async def roundtrip(self, step: Step) -> bytes:
        async with self._lock:
            if self._reply_owed:
                await self.connection.reopen()
                self._reply_owed = False
            self._reply_owed = True
            try:
                reply = await self._exchange(step)
            except BaseException:
                self.connection.abort()  # now, not at the next request: the stale reply has nowhere to go
                raise
            self._reply_owed = False
            return reply


class ConnectionBusyError(RuntimeError):
    """A coroutine used a guarded connection while another coroutine's request was in flight on it.

    The same alarm as trio's and anyio's BusyResourceError and asyncpg's "another operation is in
    progress": the misuse is reported at once instead of crossing two replies.
    """


class ConnectionBrokenError(RuntimeError):
    """A guarded connection is unusable: a request was cancelled or failed between its write and its read,
    so its reply may still arrive and would answer the next request."""


def _describe_step(step: Step) -> str:
    return f"c{step.coroutine}.{step.index} {step.line.decode().rstrip()!r}"


class Guarded(Strategy):
    name = "guarded"
    summary = "fail fast: a second coroutine entering while a request is in flight gets ConnectionBusyError"

    def __init__(self, connection: SharedConnection) -> None:
        super().__init__(connection)
        self._in_flight: Step | None = None
        self._broken_by: Step | None = None

    async def roundtrip(self, step: Step) -> bytes:
        """Raises ConnectionBusyError while another request is in flight, ConnectionBrokenError once a
        request has been abandoned halfway; both before anything is written."""
        # The check and the claim happen with no await between them: nobody can slip in.
        if self._in_flight is not None:
            raise ConnectionBusyError(
                f"another request is in flight on this connection: {_describe_step(self._in_flight)}"
            )
        if self._broken_by is not None:
            raise ConnectionBrokenError(
                f"connection broken: request {_describe_step(self._broken_by)} was abandoned before its reply"
            )
        self._in_flight = step
        try:
            return await self._exchange(step)
        except BaseException:
            self._broken_by = step
            raise
        finally:
            self._in_flight = None


class _ReaderTaskStrategy(Strategy):
    """Base of the strategies in which one reader task owns the StreamReader and hands replies out.

    Coroutines only write (whole lines, one at a time) and wait on a future of their own, so no
    lock is held across the wait for a reply.
    """

    def __init__(self, connection: SharedConnection) -> None:
        super().__init__(connection)
        self._reader_task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        # Serializes the writing of whole lines only (a split write yields halfway); never held
        # while waiting for a reply. Uncontended, acquiring it does not even yield.
        self._write_lock = asyncio.Lock()
        # Coroutines holding or waiting for _write_lock: while there are any, every line takes the
        # lock too. An attribute rather than _write_lock.locked(), a call on every request.
        self._lock_users = 0
        self._batch: list[bytes] = []
        # Set with the reader task, then used per request: on CPython 3.11 every
        # asyncio.get_running_loop() call makes a getpid() system call (a fork check).
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _send_under_lock(self, step: Step, prefix: bytes, on_first_byte: Callable[[], None]) -> None:
        """Write a split line (or any line while a split one is halfway) with no other line between."""
        self._lock_users += 1
        try:
            async with self._write_lock:
                on_first_byte()
                await self._send(step, prefix)
        finally:
            self._lock_users -= 1

    def _write(self, data: bytes) -> None:
        self._enqueue(data)

    def _mark(self, kind: EventKind, step: Step) -> None:
        if self.recorder is not None:
            self.recorder.mark(kind, step)

    def _enqueue(self, data: bytes) -> bool:
        """Queue bytes for the batch that leaves at the end of this pass of the event loop, or as
        soon as it holds FLUSH_AT_LINES lines; True when they start a new batch.

        A hundred coroutines writing in one pass then cost two send() system calls, not a hundred.
        Bytes keep the order they were written in. Raises ConnectionResetError once the connection
        is closed or the reader has stopped.
        """
        batch = self._batch
        if not batch:
            # Checked once per batch: a connection closed later in this pass makes the flush fail,
            # and the reader's end of stream then fails every waiter.
            if self._failure is not None or self.connection.writer.is_closing():
                raise ConnectionResetError("connection is closed")
            batch.append(data)
            (self._loop or asyncio.get_running_loop()).call_soon(self._flush)
            return True
        if self._failure is not None:
            raise ConnectionResetError("connection is closed")
        batch.append(data)
        if len(batch) >= FLUSH_AT_LINES:
            self._flush()  # the flush already scheduled for this pass takes what follows
        return False

    def _flush(self) -> None:
        if not self._batch:
            return
        data = b"".join(self._batch)
        self._batch.clear()
        try:
            self.connection.write(data)
        except ConnectionError as exc:  # closed in the meantime: the reader's EOF fails the waiters
            self._failure = self._failure or exc

    def _deliver(self, lines: list[bytes]) -> None:
        """Hand each reply line to the future waiting for it, or count it as dropped (one call per
        read, not per line: this loop runs once for every reply)."""
        raise NotImplementedError

    def _waiting_futures(self) -> list[asyncio.Future[bytes]]:
        raise NotImplementedError

    def _ensure_reader(self) -> asyncio.AbstractEventLoop:
        """Start the reader task if need be; return the running loop.

        Raises ConnectionResetError once the reader has stopped (EOF or a broken stream).
        """
        if self._failure is not None:
            raise ConnectionResetError(f"connection unusable: {self._failure}")
        if self._reader_task is None or self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._reader_task = asyncio.create_task(self._read_replies(), name=f"sockrace {self.name} reader")
        return self._loop

    async def _read_replies(self) -> None:
        try:
            while True:
                self._deliver(await self.connection.read_lines())
        except asyncio.IncompleteReadError:
            self._failure = ConnectionResetError("the server closed the connection")
        except Exception as exc:  # an over-long line or a reset: the stream cannot be trusted any more
            self._failure = exc
        finally:
            reason = str(self._failure or "connection closed")
            for future in self._waiting_futures():
                if not future.done():
                    future.set_exception(ConnectionResetError(reason))

    async def aclose(self) -> None:
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    @staticmethod
    def _forget(future: asyncio.Future[bytes]) -> None:
        """The requester stops waiting: a reply still to come is then dropped by `_deliver`."""
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()  # mark it retrieved: the requester's own exception is already on its way


def _nothing() -> None:
    pass


class Pipelined(_ReaderTaskStrategy):
    name = "pipelined"
    summary = ("write without waiting; one reader task hands replies out in FIFO order "
               "(correct only while the server answers in order)")

    def __init__(self, connection: SharedConnection) -> None:
        super().__init__(connection)
        # One future per line on the wire, in the order of the lines: the n-th reply goes to the n-th.
        self._queue: deque[asyncio.Future[bytes]] = deque()

    def _waiting_futures(self) -> list[asyncio.Future[bytes]]:
        return list(self._queue)

    def _deliver(self, lines: list[bytes]) -> None:
        queue = self._queue
        for line in lines:
            if not queue:
                self.dropped += 1  # a reply to nothing we sent
                continue
            future = queue.popleft()
            if future.done():
                self.dropped += 1  # its requester gave up (timeout): the reply still holds its place in line
            else:
                future.set_result(line)

    async def roundtrip(self, step: Step) -> bytes:
        """Raises ConnectionResetError when the server has closed the connection."""
        loop = self._loop
        if loop is None or self._reader_task is None or self._failure is not None:
            loop = self._ensure_reader()
        # Not loop.create_future(): that is one more Python call per request, to build the same
        # object (asyncio's loops and uvloop both return an asyncio.Future).
        future: asyncio.Future[bytes] = asyncio.Future(loop=loop)
        try:
            # Queued just before its first byte is written, so the queue's order is the wire's order.
            if step.split_at or self._lock_users:
                await self._send_under_lock(step, b"", lambda: self._queue.append(future))
                self._mark(EventKind.READING, step)
            else:
                self._queue.append(future)
                if self._enqueue(step.line):  # the first of this pass feels the backpressure for all
                    await self.connection.writer.drain()
                if self.recorder is not None:  # inline: recording off costs one test, not a call
                    self.recorder.mark(EventKind.WROTE, step)
                    self.recorder.mark(EventKind.READING, step)
            return await future
        except BaseException:
            self._forget(future)
            raise


class Multiplexed(_ReaderTaskStrategy):
    name = "multiplexed"
    summary = "every request tagged '#<id>'; one reader task hands each reply to the future of its tag"

    def __init__(self, connection: SharedConnection) -> None:
        super().__init__(connection)
        # By tag, b"#<id>" exactly as it starts the request and its reply: delivering a reply is
        # then one partition and one lookup, and only the tags issued here can match.
        self._waiting: dict[bytes, asyncio.Future[bytes]] = {}
        self._ids = itertools.count(1)

    def _waiting_futures(self) -> list[asyncio.Future[bytes]]:
        return list(self._waiting.values())

    def _deliver(self, lines: list[bytes]) -> None:
        take = self._waiting.pop
        for line in lines:
            # The dict lookup is the validation: every key is b"#<id>", so an untagged line (b"OK x\n"),
            # a line without a space (all of it, b"\n" included, is looked up) or a tag we never
            # issued finds nothing. partition() takes one argument: cheaper than find() and a slice.
            future = take(line.partition(b" ")[0], None)
            if future is None or future.done():
                self.dropped += 1  # untagged, or its requester gave up: never handed to anybody else
            else:
                future.set_result(line)

    async def roundtrip(self, step: Step) -> bytes:
        """Raises ConnectionResetError when the server has closed the connection."""
        loop = self._loop
        if loop is None or self._reader_task is None or self._failure is not None:
            loop = self._ensure_reader()
        tag = b"#%d" % next(self._ids)
        future: asyncio.Future[bytes] = asyncio.Future(loop=loop)
        self._waiting[tag] = future
        try:
            if step.split_at or self._lock_users:
                await self._send_under_lock(step, tag + b" ", _nothing)
                self._mark(EventKind.READING, step)
            else:
                if self._enqueue(tag + b" " + step.line):  # see Pipelined.roundtrip
                    await self.connection.writer.drain()
                if self.recorder is not None:  # inline: recording off costs one test, not a call
                    self.recorder.mark(EventKind.WROTE, step)
                    self.recorder.mark(EventKind.READING, step)
            return await future  # _deliver took its tag out of the table
        except BaseException:
            self._forget(future)
            # An abandoned tag leaves the table: its late reply will find nobody and be dropped.
            self._waiting.pop(tag, None)
            raise


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Unsafe, Locked, LockedCancelSafe, Guarded, Pipelined, Multiplexed)
}
