"""A direction's fault plan applied to its bytes, sans-IO: the one executor of a `Delivery`.

The proxy's pump, `simulate` and the tests' in-memory link forward bytes the same way, so the way
is written once, here. A `Forwarder` is handed the reads of one direction in order (`take`), gathers
them into units as the plan's coalesce target asks (at most COALESCE_LIMIT_BYTES), and hands back
each complete `Unit`: its bytes, the plan's decisions, the delay before it, the pieces it is cut into
with the pause before each, and whether the connection is reset after them. Its users only wait and
write: the proxy sleeps and writes to a socket, the in-memory link sets timers on a virtual clock,
and `simulate` does neither, so that the same seed and the same reads give the same bytes and the
same fault records in all three.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sockrace.check.faults import COALESCE_LIMIT_BYTES, Decision, Delivery, Direction, DirectionPlan, Faults


@dataclass(frozen=True, slots=True)
class Unit:
    """One unit as the plan delivers it: wait `delivery.delay_ms` from the arrival of its first read,
    write its `pieces()` in order, then reset the connection when `delivery.reset` is set."""

    data: bytes
    chunks: int  # the reads it was gathered from
    delivery: Delivery

    def pieces(self) -> Iterator[tuple[float | None, memoryview]]:
        """(the pause in ms before it, None for the first; its bytes) for every piece, in order.
        The pieces cover the unit up to the reset point when there is one."""
        view, start, pauses = memoryview(self.data), 0, self.delivery.pauses_ms
        for index, length in enumerate(self.delivery.fragments):
            yield (pauses[index - 1] if index else None), view[start:start + length]
            start += length


class Forwarder:
    """Gathers one direction's reads into units and decides each with the direction's plan.

    `take(read)` for every read (not empty), in order; it returns the unit the read completes, or None
    while the unit waits for more reads (its coalesce target). `flush()` completes a unit as it is,
    when its window closed or its source ended. The coalesce window itself is the caller's clock:
    `window_s` after the first read of the unit.
    """

    def __init__(self, plan: DirectionPlan) -> None:
        self.plan = plan
        self.window_s = plan.faults.coalesce_window_ms / 1000
        self._parts: list[bytes] = []
        self._size = 0
        self._target = 1

    @property
    def in_hand(self) -> int:
        """Bytes of the unit being gathered."""
        return self._size

    def take(self, chunk: bytes) -> Unit | None:
        if not self._parts:
            self._target = self.plan.coalesce_target()
        self._parts.append(chunk)
        self._size += len(chunk)
        if len(self._parts) < self._target and self._size < COALESCE_LIMIT_BYTES:
            return None
        return self.flush()

    def flush(self) -> Unit | None:
        """The unit gathered so far, complete as it is; None when no unit is open."""
        parts = self._parts
        if not parts:
            return None
        self._parts, self._size = [], 0
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return Unit(data, len(parts), self.plan.deliver(len(data), chunks=len(parts), target=self._target))


@dataclass(frozen=True, slots=True)
class Simulation:
    """What `simulate` wrote, one bytes object per write, and what it decided."""

    writes: tuple[bytes, ...]
    decisions: tuple[Decision, ...]
    reset: bool


def simulate(
    faults: Faults, seed: int, chunks: Iterable[bytes], *, connection: int = 0,
    direction: Direction = Direction.TO_SERVER,
) -> Simulation:
    """Forward `chunks` (the reads, in order) through the plan as the proxy does when every read is
    already there: a unit gathers the reads its coalesce target asks for, within COALESCE_LIMIT_BYTES.
    No time passes; delays and pauses are only decided."""
    forwarder = Forwarder(DirectionPlan(faults, seed, connection, direction))
    writes: list[bytes] = []
    decisions: list[Decision] = []

    def forward(unit: Unit | None) -> bool:
        if unit is None:
            return False
        decisions.extend(unit.delivery.decisions)
        writes.extend(bytes(piece) for _, piece in unit.pieces())
        return unit.delivery.reset

    for chunk in chunks:
        if chunk and forward(forwarder.take(chunk)):
            return Simulation(tuple(writes), tuple(decisions), True)
    reset = forward(forwarder.flush())  # the last unit, short of its coalesce target
    return Simulation(tuple(writes), tuple(decisions), reset)
