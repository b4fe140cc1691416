"""A client whose safety depends on the Python version: it catches `Exception` around its read.

    sockrace server --port 7777 &
    sockrace check examples/catching_client.py:catching --upstream 127.0.0.1:7777 --python python3.7  # 0
    sockrace check examples/catching_client.py:catching --upstream 127.0.0.1:7777 --python python3.8  # 1

One connection behind a lock. A failed request drops the connection, so that a reply still on its
way cannot reach the next caller; the failure is caught with `except Exception`. On Python 3.7
asyncio.CancelledError is an Exception: a call cut short by its deadline drops the connection too,
and the client is safe. From 3.8 on CancelledError is a BaseException: the cut call's handler does
not run, the connection stays with its reply still owed, and the next call reads that reply.

Written for Python 3.7 to 3.13 (sockrace's Python driver runs it in the interpreter you name).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

KEYS = 10_000


def expect(i: int) -> str:
    return f"v{i % KEYS}"


async def load_keys(host: str, port: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"".join(f"SET k{i} v{i}\n".encode() for i in range(KEYS)))
        await writer.drain()
        for _ in range(KEYS):
            if not (await reader.readuntil(b"\n")).startswith(b"OK"):
                raise RuntimeError("SET failed")
    finally:
        writer.close()


class CatchingClient:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.lock = asyncio.Lock()
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, key: str) -> str:
        async with self.lock:
            if self.streams is None:
                self.streams = await asyncio.open_connection(self.host, self.port)
            reader, writer = self.streams
            try:
                writer.write(f"GET {key}\n".encode())
                await writer.drain()
                line = await reader.readuntil(b"\n")
            except Exception:  # the bug: on 3.8+ a cancellation is not an Exception
                self.close()
                raise
            text = line.decode().rstrip("\r\n")
            if not text.startswith("OK "):
                raise RuntimeError(f"unexpected reply {text!r}")
            return text[3:]

    def close(self) -> None:
        streams, self.streams = self.streams, None
        if streams is not None:
            streams[1].close()


async def catching(address: tuple[str, int]) -> AsyncIterator[tuple[Callable[[int], Awaitable[object]],
                                                                    Callable[[int], object]]]:
    host, port = address
    await load_keys(host, port)
    client = CatchingClient(host, port)
    try:
        yield (lambda i: client.get(f"k{i % KEYS}")), expect
    finally:
        client.close()
