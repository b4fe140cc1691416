"""The client strategies: how coroutines share ONE connection (connection.py), one small class each.

Every strategy sends a planned request over the ONE connection it is given and returns the raw
reply line it received. Whether that line answers the request is judged elsewhere (workload.py):
a strategy is free to be wrong, and the unsafe one is, on purpose.

Words: a *strategy* is the class that coordinates the coroutines (Locked, Multiplexed, ...); its
*mode* is its name, `Strategy.name`, the word a user types (`--mode`, `--modes`) and reads (the
"mode" fields of the JSON documents). Code that holds the class says strategy, code that holds
the name says mode.

Errors (errors.py): the connection's own (ConnectionClosedError, ConnectionBrokenError) pass through;
only the unsafe strategy lets asyncio's own RuntimeError through: it is the alarm that strategy
exists to show.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Awaitable
from typing import ClassVar, Final

from sockrace.connection import CLOSE_TIMEOUT_S, SharedConnection
from sockrace.errors import ConnectionBrokenError, ConnectionBusyError, ConnectionClosedError
from sockrace.events import EventKind, Recorder
from sockrace.workload import Step

# A write batch leaves as soon as it holds this many lines, not only at the end of the event loop's
# pass, when the server has less than that of ours left to answer: it then answers the first lines
# while the coroutines of the same pass are still writing the rest, and client and server work at
# the same time instead of taking turns. A server that has a batch in hand already is not short of
# work: the batch then waits for the end of the pass, since every extra write costs a send() here
# and a wake-up, a read and a write in the server.
FLUSH_AT_LINES: Final = 64
# No early flush for this batch: it leaves at the end of the pass.
_END_OF_PASS: Final = 2**62
# The class, looked up once: `asyncio.Future` per request is a global and an attribute lookup.
_Future: Final = asyncio.Future


async def yield_times(n: int) -> None:
    """Let every other ready coroutine run, `n` times: the explicit suspension points of a race."""
    for _ in range(n):
        await asyncio.sleep(0)


class Strategy:
    """How coroutines share the connection. Subclasses override `roundtrip`.

    `recorder`, when given, is told when each request is fully written (WROTE) and when its
    coroutine starts waiting for the reply (READING); None records nothing and costs one test.
    """

    name: ClassVar[str]
    summary: ClassVar[str]

    def __init__(self, connection: SharedConnection, recorder: Recorder | None = None) -> None:
        self.connection = connection
        self.recorder = recorder
        # Replies that arrived for nobody (their requester had given up): thrown away, never handed
        # to another coroutine. Only the strategies with a reader task can see them.
        self.dropped = 0

    def roundtrip(self, step: Step) -> Awaitable[bytes]:
        """Send `step`'s request; awaited, gives the reply line this coroutine received."""
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
                with contextlib.suppress(ConnectionClosedError, ConnectionBrokenError):
                    self._write(line[split_at:])
                raise
            self._write(line[split_at:])
        else:
            self._write(line)
        try:
            await self.connection.writer.drain()
        except ConnectionError as exc:  # asyncio's "Connection lost" once the transport is gone
            raise self.connection.lost_error(exc) from exc
        if self.recorder is not None:
            self.recorder.mark(EventKind.WROTE, step)

    def _write(self, data: bytes) -> None:
        """Hand bytes to the transport. Raises ConnectionClosedError or ConnectionBrokenError once
        the connection is closed."""
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

    def __init__(self, connection: SharedConnection, recorder: Recorder | None = None) -> None:
        super().__init__(connection, recorder)
        self._lock = asyncio.Lock()

    async def roundtrip(self, step: Step) -> bytes:
        async with self._lock:
            return await self._exchange(step)


class LockedCancelSafe(Locked):
    name = "locked-cancel-safe"
    summary = ("the lock, and a request cancelled between its write and its read closes the connection; "
               "the next request reopens it")

    def __init__(self, connection: SharedConnection, recorder: Recorder | None = None) -> None:
        super().__init__(connection, recorder)
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


def _describe_step(step: Step) -> str:
    return f"c{step.coroutine}.{step.index} {step.line.decode().rstrip()!r}"


class Guarded(Strategy):
    name = "guarded"
    summary = "fail fast: a second coroutine entering while a request is in flight gets ConnectionBusyError"

    def __init__(self, connection: SharedConnection, recorder: Recorder | None = None) -> None:
        super().__init__(connection, recorder)
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
    lock is held across the wait for a reply. The round trip is the same for every such strategy
    (register a future, send, record, await); a subclass says how a future is registered
    (`_register`) and how replies find their futures (`_deliver`).
    """

    def __init__(self, connection: SharedConnection, recorder: Recorder | None = None) -> None:
        super().__init__(connection, recorder)
        self._reader_task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        # Serializes the writing of whole lines only (a split write yields halfway); never held
        # while waiting for a reply. Uncontended, acquiring it does not even yield.
        self._write_lock = asyncio.Lock()
        # Coroutines holding or waiting for _write_lock: while there are any, every line takes the
        # lock too. An attribute rather than _write_lock.locked(), a call on every request.
        self._lock_users = 0
        self._batch: list[bytes] = []
        self._flush_at = FLUSH_AT_LINES  # the batch's length at which an early flush is considered
        # Set with the reader task, then used per request: asyncio.get_running_loop() checks for a
        # fork with a getpid() system call on some Pythons, far too dear to pay per request.
        self._loop: asyncio.AbstractEventLoop | None = None

    def roundtrip(self, step: Step) -> Awaitable[bytes]:
        """Send `step`'s request; awaited, gives its reply. Awaiting raises ConnectionBrokenError
        once the server closed the connection or its replies cannot be framed,
        ConnectionClosedError once this side closed it.

        The usual request (reader running, a whole line, nothing recorded, nothing waiting to
        drain) is queued right here, and what is returned is the future its reply goes to: no
        coroutine to create and run per request. A caller that stops waiting cancels that future,
        as `_forget` would. Any other request takes `_roundtrip`, the same steps with their waits.
        """
        loop = self._loop
        if (loop is not None and self._failure is None and self._reader_task is not None
                and not step.split_at and not self._lock_users and self.recorder is None):
            batch = self._batch
            if batch:  # _enqueue's own steps for a batch under way, without the call
                future: asyncio.Future[bytes] = asyncio.Future(loop=loop)
                batch.append(self._register(future) + step.line)
                if len(batch) >= self._flush_at:
                    self._flush_early()
                return future
            if self.connection.drained():
                future = asyncio.Future(loop=loop)
                self._enqueue(self._register(future) + step.line)  # cannot raise: checked above
                return future
        return self._roundtrip(step)

    async def _roundtrip(self, step: Step) -> bytes:
        loop = self._loop
        if loop is None or self._reader_task is None or self._failure is not None:
            loop = self._ensure_reader()
        # Not loop.create_future(): that is one more Python call per request, to build the same
        # object (asyncio's loops and uvloop both return an asyncio.Future).
        future: asyncio.Future[bytes] = asyncio.Future(loop=loop)
        try:
            if step.split_at or self._lock_users:
                await self._send_under_lock(step, future)
            else:
                # Registered just before its first byte is queued, with no await between: the
                # order of registration is the order on the wire. The first line of a pass
                # drains: it feels the backpressure for all of them.
                if self._enqueue(self._register(future) + step.line):
                    try:
                        await self.connection.writer.drain()
                    except ConnectionError as exc:  # see Strategy._send
                        raise self.connection.lost_error(exc) from exc
                if self.recorder is not None:  # inline: recording off costs one test, not a call
                    self.recorder.mark(EventKind.WROTE, step)
            if self.recorder is not None:
                self.recorder.mark(EventKind.READING, step)
            return await future
        except BaseException:
            self._forget(future)
            raise

    def _register(self, future: asyncio.Future[bytes]) -> bytes:
        """Make `future` the one its reply will go to; return what goes before the request line."""
        raise NotImplementedError

    def _deliver(self, lines: list[bytes]) -> None:
        """Hand each reply line to the future waiting for it, or count it as dropped (one call per
        read, not per line: this loop runs once for every reply)."""
        raise NotImplementedError

    def _waiting_futures(self) -> list[asyncio.Future[bytes]]:
        raise NotImplementedError

    async def _send_under_lock(self, step: Step, future: asyncio.Future[bytes]) -> None:
        """Write a split line (or any line while a split one is halfway) with no other line between."""
        self._lock_users += 1
        try:
            async with self._write_lock:
                await self._send(step, self._register(future))
        finally:
            self._lock_users -= 1

    def _write(self, data: bytes) -> None:
        self._enqueue(data)

    def _enqueue(self, data: bytes) -> bool:
        """Queue bytes for the batch that leaves at the end of this pass of the event loop, or as
        soon as it holds FLUSH_AT_LINES lines while the server is short of work; True when they
        start a new batch.

        A hundred coroutines writing in one pass then cost two send() system calls, not a hundred.
        Bytes keep the order they were written in. Raises ConnectionClosedError or
        ConnectionBrokenError once the connection is closed or the reader has stopped.
        """
        batch = self._batch
        if not batch:
            # Checked once per batch: a connection closed later in this pass makes the flush fail,
            # and the reader's end of stream then fails every waiter.
            if self._failure is not None or self.connection.writer.is_closing():
                raise self._unusable_error()
            batch.append(data)
            (self._loop or asyncio.get_running_loop()).call_soon(self._flush)
            return True
        if self._failure is not None:
            raise self._unusable_error()
        batch.append(data)
        if len(batch) >= self._flush_at:
            self._flush_early()
        return False

    def _flush_early(self) -> None:
        """Send the full batch now when the server has less than a batch of ours still to answer;
        otherwise leave it to the end of the pass (see FLUSH_AT_LINES)."""
        if self._replies_owed() - len(self._batch) < FLUSH_AT_LINES:
            self._flush()  # the flush already scheduled for this pass takes what follows
        else:
            self._flush_at = _END_OF_PASS

    def _replies_owed(self) -> int:
        """Requests registered whose reply has not arrived (those queued in this batch included)."""
        raise NotImplementedError

    def _flush(self) -> None:
        self._flush_at = FLUSH_AT_LINES
        if not self._batch:
            return
        data = b"".join(self._batch)
        self._batch.clear()
        try:
            self.connection.write(data)
        except (ConnectionClosedError, ConnectionBrokenError) as exc:  # the reader's EOF fails the waiters
            self._failure = self._failure or exc

    def _unusable_error(self, prefix: str = "") -> ConnectionClosedError | ConnectionBrokenError:
        """The error for a request that finds the reader stopped or the connection closing."""
        failure = self._failure
        if failure is None:
            if self._reader_task is None and self._loop is not None:
                return ConnectionClosedError(f"{prefix}connection closed")  # aclose() stopped the reader
            return self.connection.closed_error()
        if isinstance(failure, ConnectionClosedError):
            return ConnectionClosedError(f"{prefix}{failure}")
        broken = ConnectionBrokenError(f"{prefix}{failure}")
        broken.__cause__ = failure.__cause__ or failure
        return broken

    def _ensure_reader(self) -> asyncio.AbstractEventLoop:
        """Start the reader task if need be; return the running loop.

        Raises ConnectionBrokenError (or ConnectionClosedError) once the reader has stopped.
        """
        if self._failure is not None:
            raise self._unusable_error("connection unusable: ")
        if self._reader_task is None or self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._reader_task = asyncio.create_task(self._read_replies(), name=f"sockrace {self.name} reader")
        return self._loop

    async def _read_replies(self) -> None:
        try:
            while True:
                self._deliver(await self.connection.read_lines())
        except Exception as exc:  # EOF, a reset, an over-long line: the stream cannot be trusted any more
            self._failure = exc
        finally:
            for future in self._waiting_futures():
                if not future.done():
                    future.set_exception(self._unusable_error())

    async def aclose(self) -> None:
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=CLOSE_TIMEOUT_S)

    @staticmethod
    def _forget(future: asyncio.Future[bytes]) -> None:
        """The requester stops waiting: a reply still to come is then dropped by `_deliver`."""
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()  # mark it retrieved: the requester's own exception is already on its way


class Pipelined(_ReaderTaskStrategy):
    name = "pipelined"
    summary = ("write without waiting; one reader task hands replies out in FIFO order "
               "(correct only while the server answers in order)")

    def __init__(self, connection: SharedConnection, recorder: Recorder | None = None) -> None:
        super().__init__(connection, recorder)
        # One future per line on the wire, in the order of the lines: the n-th reply goes to the n-th.
        self._queue: deque[asyncio.Future[bytes]] = deque()

    def _register(self, future: asyncio.Future[bytes]) -> bytes:
        self._queue.append(future)
        return b""

    def _waiting_futures(self) -> list[asyncio.Future[bytes]]:
        return list(self._queue)

    def _replies_owed(self) -> int:
        return len(self._queue)

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


class Multiplexed(_ReaderTaskStrategy):
    name = "multiplexed"
    summary = "every request tagged '#<id>'; one reader task hands each reply to the future of its tag"

    def __init__(self, connection: SharedConnection, recorder: Recorder | None = None) -> None:
        super().__init__(connection, recorder)
        # By tag, b"#<id> " exactly as it starts the request and its reply, its space included: a
        # reply whose line starts with a key is that key's, and only the tags issued here can match.
        # A tag whose requester gave up stays until its late reply takes it out (every registered
        # line is written whole, so that reply comes unless the connection dies, and the table with it).
        self._waiting: dict[bytes, asyncio.Future[bytes]] = {}
        # The next tags, the next one last (list.pop()): made a thousand at a time by _more_tags,
        # since formatting one number costs more than all the rest of a request's tagging.
        self._tags: list[bytes] = []
        self._tags_made = 0  # the thousands of ids whose tags have been made
        # The length of the tag of the last reply delivered: the next reply's tag is tried as a
        # slice of that length first (a dict miss costs less than finding the space in every line).
        self._reply_tag_size = 3

    def roundtrip(self, step: Step) -> Awaitable[bytes]:
        """As `_ReaderTaskStrategy.roundtrip`, with `_register` inlined into a request that joins a
        batch: with 1,000 coroutines the client's CPU sets the pace."""
        loop = self._loop
        if (loop is not None and self._failure is None and self._reader_task is not None
                and not step.split_at and not self._lock_users and self.recorder is None):
            batch = self._batch
            if batch:
                future: asyncio.Future[bytes] = _Future(loop=loop)
                tags = self._tags
                if not tags:
                    self._more_tags()
                tag = tags.pop()
                self._waiting[tag] = future
                batch.append(tag + step.line)
                if len(batch) >= self._flush_at:
                    self._flush_early()
                return future
            if self.connection.drained():
                future = _Future(loop=loop)
                self._enqueue(self._register(future) + step.line)  # cannot raise: checked above
                return future
        return self._roundtrip(step)

    def _register(self, future: asyncio.Future[bytes]) -> bytes:
        if not self._tags:
            self._more_tags()
        tag = self._tags.pop()
        self._waiting[tag] = future
        return tag

    def _more_tags(self) -> None:
        """Make the tags of the next thousand ids (ids start at 1): a few joins and one split."""
        thousands = self._tags_made
        self._tags_made += 1
        if thousands:
            # b"#<thousands><three digits> " for every three digits, largest first.
            head = b"#%d" % thousands
            made = (head + (b" \n" + head).join(_three_digits()) + b" ").split(b"\n")
        else:
            made = (b"#" + b" \n#".join(_three_digits(padded=False)) + b" ").split(b"\n")
            made.pop()  # b"#0 ": ids start at 1
        self._tags.extend(made)

    def _waiting_futures(self) -> list[asyncio.Future[bytes]]:
        return list(self._waiting.values())

    def _replies_owed(self) -> int:
        return len(self._waiting)

    def _deliver(self, lines: list[bytes]) -> None:
        take = self._waiting.pop
        size = self._reply_tag_size
        for line in lines:
            # Every key is b"#<id> ", one space, at its end: the slice equals a key only when the
            # line starts with that key, so a tag that is a prefix of another (b"#1" of b"#12 ")
            # never matches the wrong one. A miss is a reply whose tag is of another length (or
            # none, or not ours): _deliver_slowly looks at the line's first word.
            try:
                take(line[:size]).set_result(line)
            except KeyError:
                size = self._deliver_slowly(line, size)
            except asyncio.InvalidStateError:
                self.dropped += 1  # its requester gave up: never handed to anybody else
        self._reply_tag_size = size

    def _deliver_slowly(self, line: bytes, size: int) -> int:
        """Deliver a line whose tag is not `size` bytes long, or count it dropped; return the size
        to try next. An untagged line (b"OK x\n"), a line without a space (all of it, b"\n"
        included, then ends the key looked up) or a tag we never issued finds nothing."""
        tag = line.partition(b" ")[0] + b" "
        future = self._waiting.pop(tag, None)
        if future is None or future.done():
            self.dropped += 1
            return size
        future.set_result(line)
        return len(tag)


@functools.cache
def _three_digits(*, padded: bool = True) -> tuple[bytes, ...]:
    """b"999" down to b"000" (`padded`), or b"999" down to b"0": the tails of a thousand tags."""
    return tuple((b"%03d" if padded else b"%d") % number for number in range(999, -1, -1))


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Unsafe, Locked, LockedCancelSafe, Guarded, Pipelined, Multiplexed)
}
