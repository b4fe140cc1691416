"""The seeded fault plan of the proxy: which bytes are delayed, cut, merged or reset. Pure, no I/O.

Every decision is drawn from ONE seed, separately for each connection, each direction and each kind
of fault, in the order the units of bytes pass: `DirectionPlan(faults, seed, connection, direction)`
called with the same sequence of units makes the same decisions, whatever the time, the machine or
the other connections. A decision is data (`Decision`): the proxy stamps it with the time and keeps
it in its fault log. What a plan's `Delivery` does to the bytes is forwarding.py's, the one executor
the proxy, `simulate()` (the plan over a list of chunks, without sockets or time: how the byte
exactness of the faults is tested) and the tests' in-memory link share.

A *unit* is what the proxy forwards at once: one read, or several reads merged by `coalesce`. For
each unit the plan says how long to hold it (`delay_ms`), where to cut it into separately written
fragments and how long to pause between them (`split`), and whether the connection is reset inside
it (`reset`: after a seeded number of bytes of the direction, counted from its first byte).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final


class Direction(StrEnum):
    TO_SERVER = "to_server"
    TO_CLIENT = "to_client"


DIRECTION_CHOICES: Final = ("to_server", "to_client", "both")

# Far beyond any latency worth simulating, small enough that a typo (ms taken for us) is caught.
MAX_DELAY_MS: Final = 60_000.0
# Cutting a unit into more pieces than this only multiplies the pauses; framing bugs show at 2 or 3.
MAX_FRAGMENTS: Final = 64
# A unit never grows past this by coalescing: the proxy's memory per connection stays bounded.
COALESCE_LIMIT_BYTES: Final = 64 * 1024
MAX_COALESCE_CHUNKS: Final = 1024


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_share(name: str, value: float) -> float:
    _require(
        isinstance(value, int | float) and 0.0 <= value <= 1.0,
        f"{name} must be a share between 0 and 1 (True means 1), got {value!r}",
    )
    return float(value)


def _check_range(name: str, value: object, limit: float, *, integer: bool = False) -> tuple[float, float]:
    kind = "integers" if integer else "numbers"
    message = f"{name} must be (lo, hi), {kind} with 0 <= lo <= hi <= {limit:g}, got {value!r}"
    _require(isinstance(value, tuple | list) and len(value) == 2, message)
    assert isinstance(value, tuple | list)
    lo, hi = value
    allowed = int if integer else int | float
    _require(all(isinstance(v, allowed) and not isinstance(v, bool) for v in (lo, hi)), message)
    _require(math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi <= limit, message)
    return lo, hi


@dataclass(frozen=True, slots=True)
class Faults:
    """Which faults the proxy injects; every one is off by default.

    delay_ms             (lo, hi): hold every unit for a seeded time in [lo, hi] ms from its arrival.
    split                share of units (True: all) cut into 2..split_max_fragments fragments at
                         seeded byte offsets, written separately with a seeded pause of
                         split_pause_ms (lo, hi) between: the peer reads torn messages.
    coalesce             share of units (True: all) that wait for 2..coalesce_max_chunks reads (at
                         most coalesce_window_ms after the first, at most COALESCE_LIMIT_BYTES) and
                         are written in one write: the peer reads several messages at once.
    reset                share of connections, per direction, aborted with a TCP RST after a seeded
                         number of bytes of that direction in reset_after_bytes (lo, hi).
    direction            "to_server", "to_client" or "both" (default): where the faults apply.
    """

    delay_ms: tuple[float, float] | None = None
    split: float = 0.0
    split_max_fragments: int = 4
    split_pause_ms: tuple[float, float] = (0.5, 2.0)
    coalesce: float = 0.0
    coalesce_max_chunks: int = 4
    coalesce_window_ms: float = 5.0
    reset: float = 0.0
    reset_after_bytes: tuple[int, int] = (0, 4096)
    direction: str = "both"

    def __post_init__(self) -> None:
        if self.delay_ms is not None:
            object.__setattr__(self, "delay_ms", _check_range("delay_ms", self.delay_ms, MAX_DELAY_MS))
        object.__setattr__(self, "split_pause_ms", _check_range("split_pause_ms", self.split_pause_ms, 1000))
        object.__setattr__(
            self, "reset_after_bytes",
            _check_range("reset_after_bytes", self.reset_after_bytes, 2**62, integer=True),
        )
        for name in ("split", "coalesce", "reset"):
            object.__setattr__(self, name, _check_share(name, getattr(self, name)))
        _require(
            type(self.split_max_fragments) is int and 2 <= self.split_max_fragments <= MAX_FRAGMENTS,
            f"split_max_fragments must be an integer from 2 to {MAX_FRAGMENTS}, "
            f"got {self.split_max_fragments!r}",
        )
        _require(
            type(self.coalesce_max_chunks) is int and 2 <= self.coalesce_max_chunks <= MAX_COALESCE_CHUNKS,
            f"coalesce_max_chunks must be an integer from 2 to {MAX_COALESCE_CHUNKS}, "
            f"got {self.coalesce_max_chunks!r}",
        )
        window = self.coalesce_window_ms
        _require(
            isinstance(window, int | float) and not isinstance(window, bool)
            and math.isfinite(window) and 0 < window <= MAX_DELAY_MS,
            f"coalesce_window_ms must be a number of ms above 0 and at most {MAX_DELAY_MS:g}, got {window!r}",
        )
        direction = self.direction.replace("-", "_") if isinstance(self.direction, str) else self.direction
        _require(
            direction in DIRECTION_CHOICES,
            f"direction must be one of {', '.join(DIRECTION_CHOICES)}, got {self.direction!r}",
        )
        object.__setattr__(self, "direction", direction)

    @property
    def enabled(self) -> bool:
        """True when some fault is on (the proxy then plans every unit; otherwise it only forwards)."""
        return self.delay_ms is not None or self.split > 0 or self.coalesce > 0 or self.reset > 0

    def describe(self) -> str:
        """The faults in a few words, e.g. "delay 1-5 ms, split, to_server only" ("none" when all are off)."""
        def share(name: str, value: float) -> str:
            return name if value == 1 else f"{name} {value:g}"
        parts = []
        if self.delay_ms is not None:
            parts.append(f"delay {self.delay_ms[0]:g}-{self.delay_ms[1]:g} ms")
        if self.split:
            parts.append(share("split", self.split))
        if self.coalesce:
            parts.append(share("coalesce", self.coalesce))
        if self.reset:
            low, high = self.reset_after_bytes
            parts.append(f"{share('reset', self.reset)} after {low}-{high} bytes")
        if not parts:
            return "none"
        return ", ".join(parts) + ("" if self.direction == "both" else f", {self.direction} only")

    def applies_to(self, direction: Direction) -> bool:
        return self.enabled and self.direction in ("both", direction.value)


@dataclass(frozen=True, slots=True)
class Decision:
    """One fault decided for one unit: the fault log's entry, less the time it happened.

    `offset` is the position in the direction's byte stream of the unit's first byte (of the first
    byte after the cut, for a reset); `params` are JSON values.
    """

    connection: int
    direction: Direction
    offset: int
    fault: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """A fault log entry: a Decision, or a connection event (open, refused, eof, lost, close), and
    when it happened in ms since the proxy started. `direction` is None for connection events."""

    at_ms: float
    connection: int
    direction: str | None
    offset: int
    fault: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, decision: Decision, at_ms: float) -> FaultRecord:
        return cls(at_ms, decision.connection, decision.direction.value, decision.offset, decision.fault,
                   decision.params)

    def as_dict(self) -> dict[str, Any]:
        return {
            "at_ms": round(self.at_ms, 3), "connection": self.connection, "direction": self.direction,
            "offset": self.offset, "fault": self.fault, "params": dict(self.params),
        }

    def to_json(self) -> str:
        """One line of JSON (the `--log` file holds one record per line)."""
        return json.dumps(self.as_dict(), separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Delivery:
    """How to forward one unit: wait `delay_ms` after its arrival, then write `fragments` (lengths,
    in order) with `pauses_ms[i]` between fragment i and i+1; then, when `reset` is set, abort the
    connection (the fragments then cover only the bytes before the reset point)."""

    delay_ms: float
    fragments: tuple[int, ...]
    pauses_ms: tuple[float, ...]
    reset: bool
    decisions: tuple[Decision, ...]

    @property
    def length(self) -> int:
        return sum(self.fragments)


_Note = Callable[..., None]  # note(fault, **params) records one decision


class DirectionPlan:
    """The decisions for one direction of one connection, drawn in order from the seed.

    Call `coalesce_target()` when a unit starts and `deliver()` once it is complete, for every unit
    in order. Each fault kind draws from a random stream of its own, so that turning one fault on
    leaves the decisions of the others as they were.
    """

    def __init__(self, faults: Faults, seed: int, connection: int, direction: Direction) -> None:
        self.faults = faults
        self.connection = connection
        self.direction = direction
        self.active = faults.applies_to(direction)
        self.offset = 0

        def stream(kind: str) -> random.Random:
            # Seeding with a string hashes it with SHA-512: the same stream on every run and machine.
            return random.Random(f"sockrace.faults:{seed}:{connection}:{direction.value}:{kind}")

        self._delay, self._split, self._coalesce = stream("delay"), stream("split"), stream("coalesce")
        self.reset_at: int | None = None
        reset = stream("reset")
        if self.active and faults.reset > 0 and reset.random() < faults.reset:
            self.reset_at = reset.randint(*faults.reset_after_bytes)

    def coalesce_target(self) -> int:
        """How many reads the next unit should gather (1: forward each read as it comes)."""
        share = self.faults.coalesce
        if not self.active or share == 0 or self._coalesce.random() >= share:
            return 1
        return self._coalesce.randint(2, self.faults.coalesce_max_chunks)

    def deliver(self, length: int, *, chunks: int = 1, target: int = 1) -> Delivery:
        """Decide how to forward the next unit of `length` bytes (gathered from `chunks` reads when
        the plan asked for `target`), and move the offset past it."""
        if length <= 0:
            raise ValueError(f"a unit has at least one byte, got {length}")
        decisions: list[Decision] = []
        note = self._decision(decisions, self.offset)
        if target > 1:
            note("coalesce", target=target, chunks=chunks, bytes=length)
        delay_ms = 0.0
        if self.active and self.faults.delay_ms is not None:
            delay_ms = self._delay.uniform(*self.faults.delay_ms)
            note("delay", ms=round(delay_ms, 3))
        reset = self.reset_at is not None and self.offset + length >= self.reset_at
        forwarded = self.reset_at - self.offset if reset and self.reset_at is not None else length
        fragments, pauses = self._cut(forwarded, note)
        if reset:
            self._decision(decisions, self.offset + forwarded)("reset", after_bytes=self.reset_at)
        self.offset += forwarded
        return Delivery(delay_ms, fragments, pauses, reset, tuple(decisions))

    def _cut(self, length: int, note: _Note) -> tuple[tuple[int, ...], tuple[float, ...]]:
        share = self.faults.split
        if not self.active or share == 0 or self._split.random() >= share or length < 2:
            return ((length,) if length else ()), ()
        count = self._split.randint(2, min(self.faults.split_max_fragments, length))
        cuts = sorted(self._split.sample(range(1, length), count - 1))
        edges = [0, *cuts, length]
        fragments = tuple(b - a for a, b in itertools.pairwise(edges))
        pauses = tuple(self._split.uniform(*self.faults.split_pause_ms) for _ in cuts)
        note("split", fragments=list(fragments), pauses_ms=[round(p, 3) for p in pauses])
        return fragments, pauses

    def _decision(self, into: list[Decision], offset: int) -> _Note:
        def note(fault: str, **params: Any) -> None:
            into.append(Decision(self.connection, self.direction, offset, fault, params))
        return note
