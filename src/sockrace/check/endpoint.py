"""One socket of a proxied connection, as an asyncio protocol: a receive buffer of READ_CAPACITY bytes
that stops the socket reading when it is full, write flow control, and how the socket ended.

The pump that owns an endpoint reads from it with `read()` and writes to the other endpoint of its
connection with `write()` then `drain()`; the endpoint itself never buffers more than READ_CAPACITY
received bytes, and its transport's send buffer stays near WRITE_HIGH_WATER while the pump drains.

The receive buffer is held only while it holds bytes: taken from the proxy's `Buffers` when the socket
has something to read, given back once what it received is forwarded. A quiet connection therefore
holds none, and a proxy with thousands of them holds a few spare buffers, not two per connection
(which glibc's malloc kept after the connections closed: 64 KiB blocks inside its heap).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from collections.abc import Callable
from typing import Final

READ_CAPACITY: Final = 64 * 1024  # one recv() at most: larger reads cost the allocator more than they save
WRITE_HIGH_WATER: Final = 64 * 1024  # a pump waits above this: the receiving peer sets our pace
_RST_ON_CLOSE: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN
# Receive buffers a proxy keeps for reuse when no socket holds them. A relayed read gives its buffer
# back in the same callback, so one would do there; a read for a pump (a direction with faults) holds
# it until the pump's task runs, and the sockets that became readable in the same pass of the loop
# each hold one meanwhile. Eight covers that for a few busy connections, so that a read seldom
# allocates (and zero-fills) 64 KiB; an idle proxy holds at most 8 x READ_CAPACITY = 512 KiB.
SPARE_BUFFERS: Final = 8


class Arrivals:
    """A count of the reads of every socket of one proxy, shared by its endpoints: each read takes
    the next number, so that which side of a connection spoke last, and whether anything moved at
    all between two looks, are comparisons of integers (no clock read per read)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class Buffers:
    """Receive buffers of READ_CAPACITY bytes for the endpoints of one proxy: `take()` one, `give()` it
    back when it is empty; at most SPARE_BUFFERS are kept for the next `take()`, the others freed."""

    __slots__ = ("_spare",)

    def __init__(self) -> None:
        self._spare: list[memoryview] = []

    def take(self) -> memoryview:
        return self._spare.pop() if self._spare else memoryview(bytearray(READ_CAPACITY))

    def give(self, buffer: memoryview) -> None:
        if len(self._spare) < SPARE_BUFFERS:
            self._spare.append(buffer)


class End(enum.Enum):
    """How one direction of a connection ended, most telling first (when both directions end at
    once, the first of their ends in this order names the connection's end)."""

    RESET = "reset"  # a reset fault fired
    SOURCE_LOST = "source lost"
    DESTINATION_LOST = "destination lost"
    EOF = "eof"  # the source sent FIN


class Endpoint(asyncio.BufferedProtocol):
    """One socket of a proxied connection: a receive buffer (held while it holds bytes), write flow
    control, and its end."""

    def __init__(self, on_made: Callable[[Endpoint], None] | None = None,
                 arrivals: Arrivals | None = None, buffers: Buffers | None = None) -> None:
        self._on_made = on_made
        self._arrivals = arrivals if arrivals is not None else Arrivals()
        self.last_in = 0  # the Arrivals number of the latest read on this socket; 0: nothing came yet
        self._buffers = buffers if buffers is not None else Buffers()
        self._buffer: memoryview | None = None  # held only while it holds bytes (see the module's doc)
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
        # Relaying (see relay_to): where received bytes go at once, who writes to us, and the end.
        self._relay: Endpoint | None = None
        self._relay_source: Endpoint | None = None
        self._relayed: Callable[[bytes], None] | None = None
        self._relay_end: asyncio.Future[End] | None = None
        # Told how many bytes each read brought in, as they come (a pacer's recording of a client).
        self.on_received: Callable[[int], None] | None = None

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
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = self._buffers.take()
        return buffer[self._filled:] if self._filled else buffer

    def _give_back(self) -> None:
        """Return the receive buffer once it is empty: a socket with nothing to forward holds none."""
        if self._buffer is not None and not self._filled:
            self._buffers.give(self._buffer)
            self._buffer = None

    def buffer_updated(self, nbytes: int) -> None:
        arrivals = self._arrivals
        arrivals.count += 1
        self.last_in = arrivals.count
        if self.on_received is not None:
            self.on_received(nbytes)
        if self._relay is not None:
            self._filled += nbytes
            self._forward()
            return
        if self._filled == 0:
            self.arrived_at = asyncio.get_running_loop().time()
        self._filled += nbytes
        if self._filled == READ_CAPACITY and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._give_back()  # taken for a recv() that found the end instead
        self._end_relay(End.EOF)
        self._wake()
        return True  # stay open for writing: the other direction may still have bytes for this peer

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = exc
        self.eof = True
        self._give_back()  # unless it holds bytes the pump may still read
        if not self.closed.done():
            self.closed.set_result(None)
        self._end_relay(End.SOURCE_LOST)
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._relay_source is not None and self._relay_source.reading_paused:
            self._relay_source._resume()
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
        data = b"" if self._buffer is None else bytes(self._buffer[:self._filled])
        self._filled = 0
        self._give_back()
        self.last_arrival = self.arrived_at
        if self.reading_paused and self.transport is not None and not self.lost:
            self.reading_paused = False
            self.transport.resume_reading()
        return data

    def relay_to(self, destination: Endpoint, relayed: Callable[[bytes], None]) -> asyncio.Future[End]:
        """Forward everything received to `destination` from now on, in the protocol callbacks (no
        task runs per read); `relayed(data)` is told each write. Reading stops while the destination's
        send buffer is over its high-water mark; a socket that stopped reading on a full buffer before
        the relay began reads on once that buffer is forwarded. The future is resolved with how the
        relay ended."""
        self._relay, destination._relay_source, self._relayed = destination, self, relayed
        self._relay_end = asyncio.get_running_loop().create_future()
        if self._filled:
            self._forward()
        if self.lost:
            self._end_relay(End.SOURCE_LOST)
        elif self.eof:
            self._end_relay(End.EOF)
        return self._relay_end

    def _forward(self) -> None:
        destination = self._relay
        assert destination is not None
        assert self._relayed is not None
        buffer = self._buffer
        assert buffer is not None
        count, self._filled = self._filled, 0
        # A copy: the transport may keep what it cannot send at once, and this buffer is reused.
        data = buffer[:count].tobytes()
        # _give_back() inline (the buffer is empty now): this runs for every read of a relayed direction.
        self._buffers.give(buffer)
        self._buffer = None
        if not destination.write(data):  # write(), not its transport: a follower's sink takes it there
            self._end_relay(End.DESTINATION_LOST)
            return
        self._relayed(data)
        # Reading follows the destination: paused while it cannot take more, running otherwise. The
        # resume matters for a source that filled its buffer (and paused) before the relay began:
        # nothing else would resume it, since the destination never paused writing.
        if destination._write_paused:
            if self.transport is not None and not self.reading_paused:
                self.transport.pause_reading()
                self.reading_paused = True
        elif self.reading_paused:
            self._resume()

    def _resume(self) -> None:
        if self.transport is not None and not self.lost:
            self.reading_paused = False
            self.transport.resume_reading()

    def _end_relay(self, end: End) -> None:
        if self._relay_end is not None and not self._relay_end.done():
            self._relay_end.set_result(end)

    def write(self, data: memoryview | bytes) -> bool:
        """Hand `data` to the socket; False when it is gone (nothing written)."""
        transport = self.transport  # (every relayed read comes here: no property on the way)
        if transport is None or self.closed.done() or transport.is_closing():
            return False
        transport.write(data)
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
