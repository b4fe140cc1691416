"""The tape of a checked run: the order in which its bytes crossed the proxy and its calls were cut short.

Over real sockets the seed fixes every decision of a run but not its timing: whether a deadline
fires before or after a reply reaches the client is the kernel's and the server's business, so a
replay that only makes the same decisions again meets the same race only now and then. The tape
records what the timing decided, in order: every write the proxy made (which connection, which
direction, how many bytes, their CRC-32), how far each client's bytes had arrived, and every call
cut short by its deadline or by task.cancel(). A replay that follows the tape (pacing.py) writes the
same pieces in the same order and cuts the same calls at the same places among them. A piece's CRC
tells a replay whether its bytes are the recorded ones, nothing more: a server may choose other bytes
on every connection (a salt, a nonce, a date), and the replay follows the tape's structure all the
same (follower.py and pieces.py say how).

Pure: no asyncio, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sockrace.check.faults import Direction

# Entries a recording keeps (a few per call; about 12 MB): a longer run's tape stops there, and its
# replays follow it that far and run free after.
MAX_ENTRIES: Final = 100_000
# How long a replay waits for the tape's next entry before taking it that the run went another
# way: at least this, and PATIENCE_GAP_FACTOR x the longest pause between two entries recorded.
MIN_PATIENCE_S: Final = 0.5
PATIENCE_GAP_FACTOR: Final = 4.0


@dataclass(frozen=True, slots=True)
class Piece:
    """A write of `length` bytes (CRC-32 `crc`: a hint, see the module's doc) the proxy made on
    `connection` in `direction`."""

    connection: int
    direction: Direction
    length: int
    crc: int
    at_s: float  # since the recording began
    at_pass: int | None = None  # the event loop's pass it happened in, when counted (passes.py)


@dataclass(frozen=True, slots=True)
class Reset:
    """The proxy reset `connection` (a reset fault, decided on `direction`'s bytes)."""

    connection: int
    direction: Direction
    at_s: float
    at_pass: int | None = None


@dataclass(frozen=True, slots=True)
class Arrival:
    """The client's bytes on `connection` reached `total` at the proxy (what it had written by then)."""

    connection: int
    total: int
    at_s: float
    at_pass: int | None = None


@dataclass(frozen=True, slots=True)
class Cut:
    """Call number `call` was cut short (its deadline passed, or task.cancel()). With the loop's
    passes counted, stamped with the pass of the cut; else recorded two passes later, so that what
    the client wrote before the cut has arrived (and been recorded) first."""

    call: int
    at_s: float
    at_pass: int | None = None


Entry = Piece | Reset | Arrival | Cut


@dataclass(frozen=True, slots=True)
class Tape:
    """A run's entries in the order they happened."""

    entries: tuple[Entry, ...]

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def cuts(self) -> frozenset[int]:
        """The calls the run cut short."""
        return frozenset(entry.call for entry in self.entries if isinstance(entry, Cut))

    def gap_s(self, index: int) -> float:
        """The pause before entry `index` (after the previous one; the first entry has none)."""
        if index <= 0 or index >= len(self.entries):
            return 0.0
        return max(0.0, self.entries[index].at_s - self.entries[index - 1].at_s)

    def patience_s(self) -> float:
        """How long a follower waits for an entry before it takes the run to have gone another way."""
        longest = max((self.gap_s(i) for i in range(1, len(self.entries))), default=0.0)
        return max(MIN_PATIENCE_S, PATIENCE_GAP_FACTOR * longest)


class Recorder:
    """The tape of the run being made, in order, at most MAX_ENTRIES entries; its times are seconds
    since the first entry's moment on the clock passed in."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._origin: float | None = None

    def at_s(self, time: float) -> float:
        if self._origin is None:
            self._origin = time
        return time - self._origin

    def record(self, entry: Entry) -> None:
        if len(self._entries) < MAX_ENTRIES:
            self._entries.append(entry)

    def tape(self) -> Tape:
        return Tape(tuple(self._entries))
