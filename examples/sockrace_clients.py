"""sockrace check scenarios for sockrace's own server: a naive client that crosses, and a safe one.

    sockrace server --port 7777 &
    sockrace check examples/sockrace_clients.py:naive --upstream 127.0.0.1:7777       # exit 1
    sockrace check examples/sockrace_clients.py:reconnecting --upstream 127.0.0.1:7777  # exit 0

Call i is `GET k<i>` and must return "v<i>"; the set-up writes the keys first. KEYS keys cover the
default run (10 tasks x 20 calls) and larger ones: call i reads key i % KEYS, so values only repeat
between calls KEYS apart, never among the calls in flight at once.

    naive         one connection, no coordination: a call cut short between its write and its
                  read (or refused a second reader) leaves its reply for the next one
    reconnecting  a lock around each request, and a call cut short closes the connection (its
                  reply could still come), so the next call opens a fresh one

Both are async generators: they yield (call, expect) once and close their connections afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: the module also runs on Python 3.7 under sockrace's driver (--python)
    from collections.abc import AsyncIterator, Awaitable, Callable

    Call = Callable[[int], Awaitable[object]]
    Expect = Callable[[int], object]

KEYS = 10_000
LINE_LIMIT = 64 * 1024  # replies are one short line; a garbled stream must not grow a buffer


def expect(i: int) -> str:
    return f"v{i % KEYS}"


# The set-up's requests: the same bytes in every run, built once per process.
SETS = b"".join(f"SET k{i} v{i}\n".encode() for i in range(KEYS))


async def load_keys(host: str, port: int) -> None:
    """Write k0..k<KEYS-1>, all pipelined at once, on a connection of its own, and read the replies
    many lines a read: a line a read was most of the CPU a sweep's seed took (benchmarks/sweep_speed.py)."""
    reader, writer = await asyncio.open_connection(host, port, limit=LINE_LIMIT)
    try:
        writer.write(SETS)
        await writer.drain()
        replies, partial = 0, b""
        while replies < KEYS:
            chunk = await reader.read(LINE_LIMIT)
            if not chunk:
                raise RuntimeError(f"the server closed the connection after {replies} of {KEYS} SET replies")
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            if len(partial) > LINE_LIMIT:
                raise RuntimeError(f"a SET reply longer than {LINE_LIMIT} bytes: {partial[:60]!r}...")
            for reply in lines:
                if not reply.startswith(b"OK"):
                    raise RuntimeError(f"SET failed: {reply!r}")
            replies += len(lines)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _value(line: bytes) -> str:
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    if not text.startswith("OK "):
        raise RuntimeError(f"unexpected reply {text!r}")
    return text[3:]


async def naive(address: tuple[str, int]) -> AsyncIterator[tuple[Call, Expect]]:
    host, port = address
    await load_keys(host, port)
    reader, writer = await asyncio.open_connection(host, port, limit=LINE_LIMIT)

    async def call(i: int) -> object:
        writer.write(f"GET k{i % KEYS}\n".encode())
        await writer.drain()
        return _value(await reader.readuntil(b"\n"))

    try:
        yield call, expect
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class ReconnectingClient:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.lock = asyncio.Lock()
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, key: str) -> str:
        async with self.lock:
            if self.streams is None:
                self.streams = await asyncio.open_connection(self.host, self.port, limit=LINE_LIMIT)
            reader, writer = self.streams
            try:
                writer.write(f"GET {key}\n".encode())
                await writer.drain()
                return _value(await reader.readuntil(b"\n"))
            except BaseException:
                await asyncio.shield(self.aclose())
                raise

    async def aclose(self) -> None:
        streams, self.streams = self.streams, None
        if streams is not None:
            streams[1].close()
            with contextlib.suppress(OSError):
                await streams[1].wait_closed()


async def reconnecting(address: tuple[str, int]) -> AsyncIterator[tuple[Call, Expect]]:
    host, port = address
    await load_keys(host, port)
    client = ReconnectingClient(host, port)
    try:
        yield (lambda i: client.get(f"k{i % KEYS}")), expect
    finally:
        await client.aclose()
