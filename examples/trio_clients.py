"""trio clients of sockrace's line protocol: `sockrace check --backend trio`.

    sockrace server --port 7777 &
    sockrace check examples/trio_clients.py:naive --upstream 127.0.0.1:7777 --backend trio      # exit 1
    sockrace check examples/trio_clients.py:cancel_safe --upstream 127.0.0.1:7777 --backend trio  # exit 0

Call i is `ECHO c<i>` and must return "c<i>". The tasks share one client; sockrace cuts calls with
cancel scopes (a deadline, as trio.move_on_after, or a scope another task cancels).

    naive        a trio.Lock around each request (a trio stream refuses two readers at once), but a
                 call cancelled between its request and its reply leaves the reply on the stream,
                 and the next call reads it
    cancel_safe  the same lock, and a request that does not finish (cancelled, or failed) closes the
                 stream, so that its reply can reach no one; the next request connects afresh

Both are async generators: they yield (call, expect) once and close the stream after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    Call = Callable[[int], Awaitable[object]]
    Expect = Callable[[int], object]

LINE_LIMIT = 64 * 1024  # replies are one short line; a garbled stream must not grow a buffer


def expect(i: int) -> str:
    return f"c{i}"


class LineClient:
    """One trio stream, one request at a time, lines read into a buffer of its own."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.lock = trio.Lock()
        self.stream: trio.SocketStream | None = None
        self.buffer = bytearray()

    async def connect(self) -> trio.SocketStream:
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(*self.address)
            self.buffer.clear()
        return self.stream

    async def echo(self, text: str) -> str:
        async with self.lock:
            return await self.request(f"ECHO {text}\n".encode())

    async def request(self, line: bytes) -> str:
        stream = await self.connect()
        await stream.send_all(line)
        return _value(await self.read_line(stream))

    async def read_line(self, stream: trio.SocketStream) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                reply = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                return reply
            if len(self.buffer) > LINE_LIMIT:
                raise RuntimeError("a reply line over the limit")
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk

    async def aclose(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):  # closing must not be cut short in its turn
                await stream.aclose()


class CancelSafeClient(LineClient):
    async def echo(self, text: str) -> str:
        async with self.lock:
            try:
                return await self.request(f"ECHO {text}\n".encode())
            except BaseException:  # trio.Cancelled above all: the reply may still come
                await self.aclose()
                raise


def _value(line: bytes) -> str:
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    if not text.startswith("OK "):
        raise RuntimeError(f"unexpected reply {text!r}")
    return text[3:]


async def naive(address: tuple[str, int]) -> AsyncIterator[tuple[Call, Expect]]:
    client = LineClient(address)
    await client.connect()  # here, not in the first call: the first round measures the latency
    try:
        yield (lambda i: client.echo(f"c{i}")), expect
    finally:
        await client.aclose()


async def cancel_safe(address: tuple[str, int]) -> AsyncIterator[tuple[Call, Expect]]:
    client = CancelSafeClient(address)
    await client.connect()  # here, not in the first call: the first round measures the latency
    try:
        yield (lambda i: client.echo(f"c{i}")), expect
    finally:
        await client.aclose()
