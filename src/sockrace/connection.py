"""The connection every coroutine of a run shares: one StreamReader/StreamWriter pair, framed replies,
bounded closing, and reopening with a back-off.

Errors (errors.py): a connection closed on this side raises ConnectionClosedError; one the peer
closed or reset, or whose bytes cannot be framed, raises ConnectionBrokenError with the low-level
error as its __cause__.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from sockrace.errors import ConnectionBrokenError, ConnectionClosedError
from sockrace.loop import limit_recv_size
from sockrace.protocol import DEFAULT_MAX_LINE, LineBuffer, LineTooLong

# One read takes what the kernel has, up to this: a hundred replies arrive in one read.
READ_SIZE: Final = 64 * 1024
# Closing waits this long for the bytes still unsent to leave, then aborts: a peer that stopped
# reading (or a server stopped with SIGSTOP) would otherwise hold the close, and the run, for ever.
CLOSE_TIMEOUT_S: Final = 1.0
# Reopening a connection the peer refuses: wait REOPEN_BACKOFF_S before the second attempt, twice
# as long before each next one, and give up after MAX_REOPEN_ATTEMPTS failures in a row (about
# 0.15 s in all). A dead server then costs a handful of connects, not one per request.
REOPEN_BACKOFF_S: Final = 0.01
MAX_REOPEN_ATTEMPTS: Final = 5


class Writer(Protocol):
    """What a strategy needs of asyncio.StreamWriter (tests substitute an in-memory one).

    As asyncio's does, `drain()` returns at once, without suspending, while the writer is not
    closing and its transport's write buffer is empty: `SharedConnection.drained()` relies on it.
    """

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def is_closing(self) -> bool: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...
    @property
    def transport(self) -> WriteTransport: ...


class WriteTransport(Protocol):
    """The part of a transport the connection uses: abort() when the peer does not take the bytes
    left, and the size of its write buffer."""

    def abort(self) -> None: ...
    def get_write_buffer_size(self) -> int: ...


Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, Writer]]]


class SharedConnection:
    """One StreamReader/StreamWriter pair that every coroutine of a run shares.

    `opener`, when given, opens a fresh pair: `reopen()` uses it to replace a connection that a
    cancelled request left with an unread reply (see LockedCancelSafe).
    """

    __slots__ = (
        "_closed_here", "_framing_clean", "_lines", "_opener", "_reopen_failures", "_reopen_not_before",
        "lines_received", "reader", "reopened", "writer",
    )

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
        self._framing_clean = True  # False once an over-long line was refused: _lines then decides
        self.lines_received = 0
        self.reopened = 0
        self._opener = opener
        self._closed_here = False  # tells our own close from the peer's
        self._reopen_failures = 0
        self._reopen_not_before = 0.0  # time.monotonic() before which no reopen is attempted

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
        """Hand bytes to the transport. Raises ConnectionClosedError once this side closed the
        connection, ConnectionBrokenError once the peer did."""
        if self.writer.is_closing():
            raise self.closed_error()
        self.writer.write(data)

    def drained(self) -> bool:
        """Whether the connection is open and holds none of our bytes unsent: a `writer.drain()`
        now would return at once, without waiting or raising."""
        return not self.writer.is_closing() and not self.writer.transport.get_write_buffer_size()

    def closed_error(self) -> ConnectionClosedError | ConnectionBrokenError:
        """The error for using the connection now that it is closing, by whose doing it is."""
        if self._closed_here:
            return ConnectionClosedError("connection is closed")
        return ConnectionBrokenError("the server closed the connection")

    def lost_error(self, exc: OSError) -> ConnectionClosedError | ConnectionBrokenError:
        """The error to raise, from `exc`, for an OSError met while using the connection."""
        if self._closed_here:
            return ConnectionClosedError("connection is closed")
        return ConnectionBrokenError(f"connection lost: {_describe_os_error(exc)}")

    async def read_line(self) -> bytes:
        """One reply line, with its newline.

        Raises RuntimeError when another coroutine is already waiting on the reader (asyncio's own
        guard, let through: it is the unsafe strategy's finding), ConnectionBrokenError at EOF, on
        a reset or on an over-long line, ConnectionClosedError when this side closed it meanwhile.
        """
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raise self._ended_error() from exc
        except asyncio.LimitOverrunError as exc:
            raise ConnectionBrokenError(f"reply line over the limit: {exc}") from exc
        except ConnectionError as exc:
            raise self.lost_error(exc) from exc
        self.lines_received += 1
        return line

    async def read_lines(self) -> list[bytes]:
        """Every complete reply line that has arrived, waiting for at least one; each with its newline.

        For a single reader that owns the stream (one await per chunk rather than per line); do not
        mix with `read_line` on the same connection. Raises ConnectionBrokenError at EOF or on a
        reset, ConnectionClosedError when this side closed it, protocol.LineTooLong on an
        over-long line.
        """
        lines: list[bytes] = []
        while not lines:
            try:
                data = await self.reader.read(READ_SIZE)
            except ConnectionError as exc:
                raise self.lost_error(exc) from exc
            if not data:
                raise self._ended_error()
            if self._whole_lines_fit(data):
                # The usual read: whole lines, nothing held over, no b"\r" (bytes.splitlines() also
                # ends a line there). One C call gives every line with its newline, where a split and
                # a concatenation per line cost a Python loop.
                lines = data.splitlines(keepends=True)
                break
            self._lines.feed(data)
            try:
                # One split per read, not a search and a copy per line; the lines keep their newline.
                while batch := self._lines.next_lines():
                    lines += [line + b"\n" for line in batch]
            except LineTooLong:
                self._framing_clean = False  # the buffer may still be discarding the line's tail
                raise
        self.lines_received += len(lines)
        return lines

    def _whole_lines_fit(self, data: bytes) -> bool:
        """Whether `data` alone frames into lines that `splitlines()` gives exactly, none over the limit."""
        return (
            self._framing_clean and not self._lines.buffered and data.endswith(b"\n")
            and len(data) <= self._lines.max_line and b"\r" not in data
        )

    def _ended_error(self) -> ConnectionClosedError | ConnectionBrokenError:
        if self._closed_here:
            return ConnectionClosedError("connection closed on this side")
        return ConnectionBrokenError("the server closed the connection")

    def abort(self) -> None:
        """Close the streams now, without waiting: whatever the peer still sends is thrown away."""
        self._closed_here = True
        self.writer.close()

    async def reopen(self) -> None:
        """Close the current streams and open fresh ones to the same peer.

        After a failed attempt the next one waits (REOPEN_BACKOFF_S, doubling), and after
        MAX_REOPEN_ATTEMPTS failures in a row no attempt is made any more. Raises RuntimeError when
        the connection was made without an opener, ConnectionBrokenError when the peer cannot be
        reached (the cause chained) or has been given up on; the old streams stay closed.
        """
        if self._opener is None:
            raise RuntimeError("this connection cannot be reopened: it was made without an opener")
        if self._reopen_failures >= MAX_REOPEN_ATTEMPTS:
            raise ConnectionBrokenError(
                f"gave up reopening the connection after {MAX_REOPEN_ATTEMPTS} failed attempts"
            )
        await self.close()
        # A deadline, not a sleep of the whole backoff: a request that gives up waiting (its own
        # timeout) leaves the rest of the wait to the next one instead of starting it over.
        wait = self._reopen_not_before - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        # Counted as failed until it succeeds: an attempt cut short by the caller's timeout counts too.
        self._reopen_failures += 1
        self._reopen_not_before = time.monotonic() + REOPEN_BACKOFF_S * 2 ** (self._reopen_failures - 1)
        try:
            self.reader, self.writer = await self._opener()
        except OSError as exc:
            raise ConnectionBrokenError(f"cannot reopen the connection: {_describe_os_error(exc)}") from exc
        self._reopen_failures = 0
        self._reopen_not_before = 0.0
        self._closed_here = False
        self._lines = LineBuffer(self._lines.max_line)
        self._framing_clean = True
        self.reopened += 1

    async def close(self) -> None:
        """Close the streams, giving the bytes not yet sent CLOSE_TIMEOUT_S to leave, then aborting.

        Never raises for the state of the connection: closed by the peer or reset, it is closed.
        """
        self._closed_here = True
        self.writer.close()
        # A task of its own, never cancelled while the transport lives: on 3.11 and 3.12 cancelling
        # a wait_closed() cancels the stream's close future, and any later wait_closed() then raises.
        closed = asyncio.ensure_future(self.writer.wait_closed())
        _, pending = await asyncio.wait([closed], timeout=CLOSE_TIMEOUT_S)
        if pending:
            self.writer.transport.abort()  # the peer is not reading: drop what it will never take
            _, pending = await asyncio.wait([closed], timeout=CLOSE_TIMEOUT_S)
        if pending:
            closed.cancel()
        elif not closed.cancelled():
            closed.exception()  # the peer went first (reset, timeout): closed either way


def _describe_os_error(exc: OSError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
