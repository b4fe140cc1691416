"""Reference servers and clients: plain asyncio streams, the simplest correct code for the job.

They are the yardstick every sockrace figure is divided by, measured in the same run on the same
machine. They know two verbs (ECHO, PING) and the optional "#tag " prefix, so any sockrace client
can run against them; they are deliberately not hardened (no line limit beyond asyncio's, no
idle timeout): that is the server's job, not a baseline's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

# Same read size as the sockrace server, so that the bulk comparison is about parsing, not buffering.
READ_SIZE: Final = 64 * 1024

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def answer(line: bytes) -> bytes:
    """The reply to one request line (its line ending optional)."""
    line = line.rstrip(b"\r\n")
    prefix = b""
    if line.startswith(b"#"):
        tag, _, line = line.partition(b" ")
        prefix = tag + b" "
    verb, _, rest = line.partition(b" ")
    verb = verb.upper()
    if verb == b"ECHO" and rest:
        return prefix + b"OK " + rest + b"\n"
    if verb == b"PING" and not rest:
        return prefix + b"OK PONG\n"
    return prefix + b"ERR UNKNOWN the reference server knows ECHO and PING only\n"


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def handle_readline(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One readline() per request, one write and drain() per reply: what the asyncio docs show."""
    try:
        while line := await reader.readline():
            writer.write(answer(line))
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        await _close(writer)


async def handle_bulk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Take whatever one read brings, answer every complete line in it, write the replies at once."""
    pending = b""
    try:
        while data := await reader.read(READ_SIZE):
            *lines, pending = (pending + data).split(b"\n")
            if lines:
                writer.write(b"".join([answer(line) for line in lines]))
                await writer.drain()
    except ConnectionError:
        pass
    finally:
        await _close(writer)


HANDLERS: Final[dict[str, Handler]] = {"readline": handle_readline, "bulk": handle_bulk}


class LockStepClient:
    """One request at a time: write, drain, read the reply line."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def roundtrip(self, line: bytes) -> bytes:
        """Raises ConnectionError when the server closed before replying."""
        self.writer.write(line)
        await self.writer.drain()
        reply = await self.reader.readline()
        if not reply.endswith(b"\n"):
            raise ConnectionResetError("server closed the connection")
        return reply

    async def aclose(self) -> None:
        await _close(self.writer)


class PipelinedClient:
    """Many coroutines, one connection: each request appends a future to a FIFO, one reader task
    resolves them in order (the server answers in order), and every write made in one pass of the
    event loop leaves in one call.

    No drain() is needed: each coroutine waits for its reply before sending again, so at most
    `concurrency` requests are ever buffered.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.outgoing: list[bytes] = []
        self.loop = asyncio.get_running_loop()
        self.reader_task = asyncio.create_task(self._read_replies())

    def _flush(self) -> None:
        self.writer.write(b"".join(self.outgoing))
        self.outgoing.clear()

    async def roundtrip(self, line: bytes) -> bytes:
        """Raises ConnectionError when the connection ends before the reply arrives."""
        if self.reader_task.done():
            raise ConnectionResetError("connection is closed")
        if not self.outgoing:
            self.loop.call_soon(self._flush)
        self.outgoing.append(line)
        future: asyncio.Future[bytes] = self.loop.create_future()
        self.waiting.append(future)
        return await future

    async def _read_replies(self) -> None:
        try:
            while True:
                reply = await self.reader.readline()
                if not reply.endswith(b"\n"):
                    break
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except (ConnectionError, IndexError):
            pass
        finally:
            while self.waiting:
                future = self.waiting.popleft()
                if not future.done():
                    future.set_exception(ConnectionResetError("server closed the connection"))

    async def aclose(self) -> None:
        self.reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader_task
        await _close(self.writer)


async def open_client(kind: str, host: str, port: int) -> LockStepClient | PipelinedClient:
    """Connect a reference client of `kind` ("lock-step" or "pipelined"). Raises OSError."""
    reader, writer = await asyncio.open_connection(host, port)
    if kind == "lock-step":
        return LockStepClient(reader, writer)
    if kind == "pipelined":
        return PipelinedClient(reader, writer)
    await _close(writer)
    raise ValueError(f"unknown reference client {kind!r}")


async def windowed_load(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lines: list[bytes], window: int
) -> tuple[list[float], bytes]:
    """Keep `window` requests in flight with the least client work there is, so that the server is
    the bottleneck: one write for the first `window` lines, then, for every read, one write of as
    many new lines as replies arrived. No coroutine or future per request.

    Returns the latency of every request (each batch's send time to the read that completed it)
    and all the reply bytes, in order. Raises ConnectionError when the server closes early.
    """
    clock = asyncio.get_running_loop().time
    sent_at: collections.deque[tuple[int, float]] = collections.deque()  # (requests in batch, time)
    latencies: list[float] = []
    received = bytearray()
    next_index = min(window, len(lines))
    writer.write(b"".join(lines[:next_index]))
    sent_at.append((next_index, clock()))
    answered = 0
    while answered < len(lines):
        data = await reader.read(READ_SIZE)
        if not data:
            raise ConnectionResetError("server closed the connection")
        received += data
        count = data.count(b"\n")
        if not count:
            continue
        answered += count
        now = clock()
        while count:  # charge the replies to the batches they answer, oldest first
            size, started = sent_at[0]
            taken = min(size, count)
            latencies.extend([now - started] * taken)
            count -= taken
            if taken == size:
                sent_at.popleft()
            else:
                sent_at[0] = (size - taken, started)
        more = min(len(lines) - next_index, answered + window - next_index)
        if more > 0:
            writer.write(b"".join(lines[next_index : next_index + more]))
            sent_at.append((more, now))
            next_index += more
    return latencies, bytes(received)


# The seed tutorial's program as it is written there (a module global, coroutines gathered), the
# yardstick of sockrace's counter demo: timed in the same run, it shows what asyncio itself costs.
value = 0


async def _seed_task() -> None:
    global value
    tmp = value
    await asyncio.sleep(0)
    tmp = tmp + 1
    await asyncio.sleep(0)
    value = tmp


async def _seed_locked_task(lock: asyncio.Lock) -> None:
    global value
    async with lock:
        tmp = value
        await asyncio.sleep(0)
        tmp = tmp + 1
        await asyncio.sleep(0)
        value = tmp


async def seed_counter(coroutines: int, lock: asyncio.Lock | None = None) -> int:
    """Run the tutorial's `main()`: `coroutines` tasks update the global counter; return its value."""
    global value
    value = 0
    if lock is None:
        await asyncio.gather(*[_seed_task() for _ in range(coroutines)])
    else:
        await asyncio.gather(*[_seed_locked_task(lock) for _ in range(coroutines)])
    return value
