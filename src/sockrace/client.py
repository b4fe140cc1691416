"""The shared connection and the client strategies: one small class each, one interface.

Every strategy sends a planned request over the ONE connection it is given and returns the raw
reply line it received. Whether that line answers the request is judged elsewhere (workload.py):
a strategy is free to be wrong, and the unsafe one is, on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import ClassVar, Protocol

from sockrace.events import EventKind, Recorder
from sockrace.protocol import DEFAULT_MAX_LINE
from sockrace.workload import Step


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


class SharedConnection:
    """One StreamReader/StreamWriter pair that every coroutine of a run shares."""

    __slots__ = ("lines_received", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        self.reader = reader
        self.writer = writer
        self.lines_received = 0

    @classmethod
    async def open(cls, host: str, port: int, *, limit: int = DEFAULT_MAX_LINE) -> SharedConnection:
        """Connect over TCP. Raises OSError when the server cannot be reached."""
        reader, writer = await asyncio.open_connection(host, port, limit=limit)
        return cls(reader, writer)

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

    async def roundtrip(self, step: Step) -> bytes:
        """Send `step`'s request; return the reply line this coroutine received."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the strategy started (reader tasks); the connection is closed by its owner."""

    async def _send(self, step: Step) -> None:
        conn = self.connection
        if step.split_at:
            # Two writes with a suspension between: another writer can slip its bytes in the middle.
            conn.write(step.line[: step.split_at])
            await yield_times(step.split_pause)
            conn.write(step.line[step.split_at :])
        else:
            conn.write(step.line)
        await conn.writer.drain()
        if self.recorder is not None:
            self.recorder.mark(EventKind.WROTE, step)

    async def _exchange(self, step: Step) -> bytes:
        """Write, pause, read: the request/response pair with nothing protecting it."""
        await self._send(step)
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


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (Unsafe, Locked)}
