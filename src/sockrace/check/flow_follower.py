"""One flow of one connection while a replay follows a tape: the bytes its source sent, held until
the tape's next piece of the flow is due, then written as the piece they make.

The pacer (pacing.py) says when a piece is due (`step`); what of the bytes held makes it is
pieces.piece_length's to say. The source's reads are taken in their own callback (a socketless
Endpoint the source relays to), so that a piece due then is written there and then, as the
recording's proxy wrote what it read. The source's socket is also what a pacer probes when it holds
the loop for a server's bytes (`hold_for_bytes`) or asks whether a client's are still coming
(`readable`).
"""

from __future__ import annotations

import array
import asyncio
import select
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

from sockrace.check.endpoint import WRITE_HIGH_WATER, End, Endpoint
from sockrace.check.faults import Direction
from sockrace.check.pieces import HoldFor, piece_length
from sockrace.check.tape import Piece, Reset

# What a follower holds of one flow at most while its bytes wait for their turn in the tape.
MAX_HELD_BYTES: Final = 1024 * 1024
# How often the loop held for a server's bytes looks whether the rest of them came.
SERVER_POLL_S: Final = 0.0002


class FlowPacer(Protocol):
    """What a flow follower tells the pacer that decides when its pieces are due (pacing.Pacer)."""

    def attach(self, follower: FlowFollower) -> None: ...

    def detach(self, follower: FlowFollower) -> None: ...

    def kick(self) -> None: ...

    def continues(self) -> bool: ...

    def diverge(self, how: str = "") -> None: ...

    def reset(self, connection: int, direction: Direction) -> None: ...


def hold_for_bytes(fileno: int, held: int, wanted: int, wait_s: float) -> bool | None:
    """Hold the loop (a blocking select on its thread) until `wanted` bytes of a server's are in
    hand (`held`) or in its socket `fileno`, at most `wait_s`: a piece the recording read at once
    may come in parts now (replies the server wrote one by one), and all of it is due in one pass.
    Whether the server sent anything (or some was in hand already); None when the socket is gone
    (the follower will find out)."""
    deadline = time.monotonic() + wait_s
    answered = held > 0  # then its message is shorter this time, or the rest is on its way
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            ready, _, _ = select.select([fileno], [], [], remaining)
        except (OSError, ValueError):
            return None
        if not ready:
            break
        answered = True
        pending = _pending(fileno)
        if pending is None or pending == 0 or held + pending >= wanted:  # (0: its end)
            break
        time.sleep(min(SERVER_POLL_S, remaining))
    return answered


def _pending(fileno: int) -> int | None:
    """The bytes waiting in socket `fileno`'s receive buffer; None where that cannot be asked."""
    try:
        import fcntl  # here: there is none on Windows
        import termios
    except ImportError:
        return None
    count = array.array("i", [0])
    try:
        fcntl.ioctl(fileno, termios.FIONREAD, count)
    except OSError:
        return None
    return count[0]


def readable(fileno: int) -> bool | None:
    """Whether socket `fileno` has bytes (or its end) to read now; None when it is gone."""
    try:
        ready, _, _ = select.select([fileno], [], [], 0)
    except (OSError, ValueError):
        return None
    return bool(ready)


class _Sink(Endpoint):
    """An endpoint without a socket that a followed flow's source relays to: every read is handed
    to `take` in the read's own callback (Endpoint.relay_to), and the source stops reading while
    the sink is paused (pause_writing) and reads on once it resumes."""

    def __init__(self, take: Callable[[bytes], None]) -> None:
        super().__init__()
        self._take = take

    def write(self, data: memoryview | bytes) -> bool:
        self._take(bytes(data))
        return True


def _ignore(data: bytes) -> None:
    """What the relay into a sink is told of each read: the follower itself says what it writes."""


class FlowFollower:
    """One flow of one connection while its pacer follows a tape: holds what the source sent, up
    to MAX_HELD_BYTES, and writes the tape's pieces of it when the pacer finds them due (`step`).
    Where each read ended is kept: a message the peer sent in one write is read at once, and ends
    where a read ends."""

    def __init__(self, pacer: FlowPacer, connection: int, direction: Direction, source: Endpoint,
                 destination: Endpoint, wrote: Callable[[bytes], None]) -> None:
        self.pacer, self.connection, self.direction = pacer, connection, direction
        self.source, self.destination, self._wrote = source, destination, wrote
        sock = None if source.transport is None else source.transport.get_extra_info("socket")
        self.fileno: int | None = None if sock is None else sock.fileno()
        self.data = bytearray()
        self.ended: End | None = None  # how the source ended, once it has
        self._sink = _Sink(self._received)
        self._taken = 0  # bytes taken out of `data` so far
        self._ends: deque[int] = deque()  # where the reads held ended, counted as `_taken` is
        self._read_at = 0.0  # loop time of the last read
        self._done: asyncio.Future[End | None] = asyncio.get_running_loop().create_future()
        self._released = False  # the pacer stopped following: bytes go on as they come
        self._quiet: asyncio.TimerHandle | None = None
        self._draining: asyncio.Task[None] | None = None

    async def run(self) -> End | None:
        relay = self.source.relay_to(self._sink, _ignore)
        relay.add_done_callback(self._source_ended)
        self.pacer.attach(self)
        try:
            return await self._done
        finally:
            if not self._done.done():  # cancelled: the connection is closing
                self.pacer.detach(self)
            # Else it stays attached: a piece of this flow the tape still holds is a divergence (step).
            self._released = True
            if self._quiet is not None:
                self._quiet.cancel()
            if self._draining is not None:
                self._draining.cancel()

    def held(self) -> int:
        """The bytes of this flow in hand: held, and received by the source but not relayed yet."""
        return len(self.data) + self.source.receiving

    def step(self, entry: Piece | Reset) -> None:
        """The tape's next entry is this flow's, and due: take it if this replay's bytes for it are
        in hand (or schedule a look once they may be)."""
        if self._draining is not None:  # on once the destination has drained
            return
        if self._done.done():
            end = self._done.result()
            how = "released" if end is None else end.value
            self.pacer.diverge(f"the {self.direction} flow ended ({how}) before the tape's {entry}")
            return
        if isinstance(entry, Reset):
            self.pacer.reset(self.connection, self.direction)
            self.source.close(rst=True)
            self.destination.close(rst=True)
            self._finish(End.RESET)
            return
        data = self.piece(entry)
        if data is None:
            if self.ended is not None and not self.data:
                self._finish(self.ended)
                self.pacer.diverge(f"the {self.direction} flow ended ({self.ended.value}) "
                                   f"before the tape's {entry}")
            return
        if not self.destination.write(data):
            self._finish(End.DESTINATION_LOST)
            return
        self._wrote(data)
        if self.ended is not None and not self.data:
            self._finish(self.ended)
        elif self.destination.sending > WRITE_HIGH_WATER and not self._done.done():
            self._draining = asyncio.get_running_loop().create_task(self._drain())

    def piece(self, entry: Piece) -> bytes | None:
        """The bytes this replay has for the tape's `entry`, or None while they are not in hand.

        Their size is the recorded one whenever the bytes held allow it: the same bytes (the CRC
        matches), or other bytes of the same size (a server's salt, a date). When the peer's message
        is of another size this time, it is the message as it came: the bytes held short of the
        size, once QUIET_S passed without more (or the source ended); the bytes past it up to the
        end of the read the size falls in, unless the recording wrote more of this flow right after
        the piece (Pacer.continues): then the piece was part of a message, and keeps its size."""
        loop = asyncio.get_running_loop()
        since_read_s = None if self.ended is not None else loop.time() - self._read_at
        length = piece_length(entry, self.data, (end - self._taken for end in self._ends), since_read_s,
                              self.pacer.continues())
        if isinstance(length, HoldFor):
            if self._quiet is None:
                self._quiet = loop.call_later(length.seconds, self._quieted)
            return None
        return None if length is None else self._take(length)

    def release(self) -> None:
        """The pacer stopped following: write what is held, and let `run` return (the caller
        relays the rest); what comes before it does goes on as it comes."""
        if self._released:
            return
        self._released = True
        if self.data and not self._done.done():
            rest = self._take()
            if not self.destination.write(rest):
                self._finish(End.DESTINATION_LOST)
                return
            self._wrote(rest)
        self._finish(self.ended)

    def _received(self, data: bytes) -> None:
        """A read of the source, in its callback."""
        if self._released:  # until the caller relays: what a relay would do
            if self.destination.write(data):
                self._wrote(data)
            return
        self.data += data
        self._ends.append(self._taken + len(self.data))
        self._read_at = asyncio.get_running_loop().time()
        if len(self.data) >= MAX_HELD_BYTES:
            self._sink.pause_writing()
        self.pacer.kick()

    def _source_ended(self, relay: asyncio.Future[End]) -> None:
        if relay.cancelled() or self.ended is not None:
            return
        self.ended = relay.result()
        if not self.data:
            self._finish(self.ended)  # nothing held: the flow ends here, as the recording's relay ended it
        else:
            self.pacer.kick()  # what is held may make a piece now: a message the end cut short

    def _take(self, length: int | None = None) -> bytes:
        taken = bytes(self.data[:length])
        del self.data[:len(taken)]
        self._taken += len(taken)
        while self._ends and self._ends[0] <= self._taken:
            self._ends.popleft()
        if len(self.data) < MAX_HELD_BYTES:
            self._sink.resume_writing()
        return taken

    def _quieted(self) -> None:
        self._quiet = None
        self.pacer.kick()

    async def _drain(self) -> None:
        """Write no more of this flow until its destination has taken what it was given."""
        drained = await self.destination.drain()
        self._draining = None
        if not drained:
            self._finish(End.DESTINATION_LOST)
        else:
            self.pacer.kick()

    def _finish(self, end: End | None) -> None:
        if not self._done.done():
            self._done.set_result(end)
            self.fileno = None  # no more waits for its source: it may be closed, its number reused
