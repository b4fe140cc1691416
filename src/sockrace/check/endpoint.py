"""One socket of a proxied connection, as an asyncio protocol: a fixed receive buffer that stops the
socket reading when it is full, write flow control, and how the socket ended.

The pump that owns an endpoint reads from it with `read()` and writes to the other endpoint of its
connection with `write()` then `drain()`; the endpoint itself never buffers more than READ_CAPACITY
received bytes, and its transport's send buffer stays near WRITE_HIGH_WATER while the pump drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Final

READ_CAPACITY: Final = 64 * 1024  # one recv() at most: larger reads cost the allocator more than they save
WRITE_HIGH_WATER: Final = 64 * 1024  # a pump waits above this: the receiving peer sets our pace
_RST_ON_CLOSE: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


class Endpoint(asyncio.BufferedProtocol):
    """One socket of a proxied connection: a fixed receive buffer, write flow control, and its end."""

    def __init__(self, on_made: Callable[[Endpoint], None] | None = None) -> None:
        self._on_made = on_made
        self._buffer = bytearray(READ_CAPACITY)
        self._filled = 0
        self.arrived_at = 0.0  # loop time when the first byte now in the buffer came in
        self.last_arrival = 0.0  # arrived_at of what the last read() returned
        self.eof = False
        self.error: Exception | None = None
        self.reading_paused = False
        self._write_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def lost(self) -> bool:
        return self.closed.done()

    @property
    def receiving(self) -> int:
        """Bytes received and not yet read by the pump."""
        return self._filled

    @property
    def sending(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        return 0 if self.transport is None or self.lost else self.transport.get_write_buffer_size()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if self._on_made is not None:
            self._on_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buffer)[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._filled == 0:
            self.arrived_at = asyncio.get_running_loop().time()
        self._filled += nbytes
        if self._filled == READ_CAPACITY and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return True  # stay open for writing: the other direction may still have bytes for this peer

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = exc
        self.eof = True
        if not self.closed.done():
            self.closed.set_result(None)
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read(self, deadline: float | None = None) -> bytes:
        """What has arrived, at least one byte; b"" at EOF, after a loss, or when `deadline` (loop
        time) passes first. Only one pump reads an endpoint."""
        if not self._filled and not self.eof:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    while not self._filled and not self.eof:
                        await self._wait()
        data = bytes(memoryview(self._buffer)[:self._filled])
        self._filled = 0
        self.last_arrival = self.arrived_at
        if self.reading_paused and self.transport is not None and not self.lost:
            self.reading_paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: memoryview | bytes) -> bool:
        """Hand `data` to the socket; False when it is gone (nothing written)."""
        if self.transport is None or self.lost or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    async def drain(self) -> bool:
        """Wait until the send buffer is below the high-water mark; False when the socket is gone."""
        while self._write_paused and not self.lost:
            await self._wait()
        return not self.lost

    def close(self, *, rst: bool = False) -> None:
        if self.transport is None or self.lost:
            return
        if rst:
            sock = self.transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_ON_CLOSE)
            self.transport.abort()
        else:
            self.transport.close()

    def write_eof(self) -> None:
        """Pass an EOF on (the peer can still send)."""
        if self.transport is not None and not self.lost and self.transport.can_write_eof():
            self.transport.write_eof()

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()
