"""The bytes a replay has for the tape's pieces, sans-IO: what of a flow makes the next piece, and
how far the client's bytes have arrived.

A replay follows its tape by structure, not bytes (follower.py): a piece is what this replay's bytes
make (`piece_length`: the recorded size, or the peer's message as it came when its size differs),
and an arrival's total is read with what this replay's client wrote more or less than the
recording's (`Arrivals`). The time is a number passed in.

Pure: no asyncio, no sockets.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from sockrace.check.faults import Direction
from sockrace.check.tape import Arrival, Cut, Entry, Piece, Reset

# How long a follower holding less of a flow than its piece's recorded size waits for more before it
# takes what it holds as the piece: the peer's message is shorter this time (a greeting of another
# size). What a peer sent in one write comes in one read on loopback, well within this; the rest of
# a message it has not sent yet (a reply still being computed) would be left to the next piece.
QUIET_S: Final = 0.05
# Waits for a server that ended with nothing of it, in a row, after which the replay stops holding the
# loop for servers: one in this very loop never answers a held loop; one may be slow once.
MAX_UNANSWERED: Final = 3
# How far past the cursor a replay looks for server bytes due by the next pass (ServerHolds.wants).
LOOKAHEAD: Final = 16


@dataclass(frozen=True, slots=True)
class HoldFor:
    """A piece cannot be told yet: look again in `seconds` (unless more bytes come first)."""

    seconds: float


def piece_length(entry: Piece, data: bytes | bytearray, read_ends: Iterable[int], since_read_s: float | None,
                 continues: bool) -> int | HoldFor | None:
    """How many bytes of `data` (held, in order) make the tape's `entry`; None while there are none,
    HoldFor while the peer may send more.

    The recorded size whenever the bytes held allow it: the same bytes (the CRC matches), or other
    bytes of the same size (a server's salt, a date). When the peer's message is of another size
    this time, the message as it came: the bytes held short of the size, once QUIET_S passed since
    the last read (`since_read_s`; None once the source ended); the bytes past it up to the end of
    the read the size falls in (`read_ends`: where each read held ends, counted from the start of
    `data`), unless the recording wrote more of this flow right after the piece (`continues`: the
    piece was part of a message, and keeps its size)."""
    held, size = len(data), entry.length
    if held < size:
        if not held:
            return None
        if since_read_s is not None and since_read_s < QUIET_S:
            return HoldFor(QUIET_S - since_read_s)
        return held
    if held == size or continues or zlib.crc32(memoryview(data)[:size]) == entry.crc:
        return size
    return next(end for end in read_ends if end >= size)


class Arrivals:
    """How far the client's bytes have arrived on each connection, and how far a replay has taken
    them: an arrival recorded at a total is reached at that total plus what this replay's client
    wrote to the server more (or less) than the recording's so far (a hash of a salt, a session id
    may have another size)."""

    def __init__(self) -> None:
        self._received: dict[int, int] = {}  # connection -> bytes of the client's arrived
        self._arrived_at: dict[int, float] = {}  # connection -> when they last came
        # connection -> the bytes arrived when its last Arrival was taken: more are the next one's.
        self._taken_at: dict[int, int] = {}
        self._shift: dict[int, int] = {}  # connection -> bytes written to the server - recorded

    def add(self, connection: int, count: int, time: float) -> int:
        """`count` more bytes came at `time`: the total so far."""
        total = self._received[connection] = self._received.get(connection, 0) + count
        self._arrived_at[connection] = time
        return total

    def wrote_more(self, connection: int, more: int) -> None:
        """A piece to the server was `more` bytes longer (or shorter, < 0) than recorded."""
        self._shift[connection] = self._shift.get(connection, 0) + more

    def reached(self, entry: Arrival) -> bool:
        connection = entry.connection
        return self._received.get(connection, 0) >= entry.total + self._shift.get(connection, 0)

    def taken(self, connection: int) -> None:
        """The tape's arrival of `connection` was taken: what comes next is the next one's."""
        self._taken_at[connection] = self._received.get(connection, 0)

    def came_since_taken(self, connection: int) -> bool:
        return self._received.get(connection, 0) > self._taken_at.get(connection, 0)

    def quiet_left(self, connection: int, time: float) -> float:
        """The seconds of QUIET_S still to pass at `time` since the client's bytes last came."""
        return max(0.0, QUIET_S - (time - self._arrived_at.get(connection, 0.0)))


@dataclass(frozen=True, slots=True)
class ServerWant:
    """By the next pass, the client is due `wanted` bytes of the server's on `connection` (counted
    from the follower's next byte); `same_pass`: a request of that connection goes to the server
    before them, so that they may answer it and cannot be waited for long."""

    connection: int
    wanted: int
    same_pass: bool


class ServerHolds:
    """When the loop is held for a server's bytes due to the client (the adapter holds it): the
    client must not run ahead of the reply it raced in the recording because the server answers
    later this time. After MAX_UNANSWERED holds in a row that ended with nothing, no more: a server
    in this very loop never answers a held loop."""

    def __init__(self) -> None:
        self.active = True
        self._unanswered = 0

    @staticmethod
    def wants(entries: tuple[Entry, ...], offset: int | None, passes: int | None) -> list[ServerWant]:
        """The server's bytes due by the next pass among `entries` (the tape from its cursor on, at
        most LOOKAHEAD of them; `offset`: this replay's passes minus the recording's), flow by flow
        in order: the loop is held for the first that is not in hand. Not only the write at the
        cursor: one after entries of this same pass (the client's next request, written in the pass
        the reply to an earlier one came) must be in hand when they are taken."""
        wants: list[ServerWant] = []
        wanted: dict[int, int] = {}  # connection -> bytes of the server's the pieces due want
        requested: set[int] = set()  # connections with a write to the server due, not made yet
        for entry in entries[:LOOKAHEAD]:
            if entry.at_pass is None or offset is None or passes is None or \
                    entry.at_pass + offset > passes + 1:
                break
            if isinstance(entry, Piece | Reset) and entry.direction is Direction.TO_SERVER:
                requested.add(entry.connection)
            elif isinstance(entry, Piece) and entry.direction is Direction.TO_CLIENT:
                total = wanted[entry.connection] = wanted.get(entry.connection, 0) + entry.length
                wants.append(ServerWant(entry.connection, total, entry.connection in requested))
        return wants

    def answered(self, answered: bool, same_pass: bool) -> None:
        """A hold ended with some of the server's bytes, or none (one that may have waited for the
        answer to its very request, `same_pass`, does not count)."""
        if answered or same_pass:
            self._unanswered = 0 if answered else self._unanswered
            return
        self._unanswered += 1
        if self._unanswered >= MAX_UNANSWERED:
            self.active = False


def continued(entries: tuple[Entry, ...]) -> frozenset[int]:
    """The indices of the pieces after which the tape's next entry of their connection (cuts aside)
    is a piece of the same flow: the recording wrote that flow on, it did not pause there."""
    found: set[int] = set()
    following: dict[int, Entry] = {}  # connection -> the next entry of it, going backwards
    for index in range(len(entries) - 1, -1, -1):
        entry = entries[index]
        if isinstance(entry, Cut):
            continue
        later = following.get(entry.connection)
        if isinstance(entry, Piece) and isinstance(later, Piece) and later.direction == entry.direction:
            found.add(index)
        following[entry.connection] = entry
    return frozenset(found)
