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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, ClassVar, Final


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
# A delay range narrower than this is a point already, as far as timers on a real machine go: a
# shrink halves a range no further.
MIN_DELAY_RANGE_MS: Final = 1.0


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
        for kind in _KINDS:  # each kind checks (and normalises) its own fields
            for name, value in kind.checked(self).items():
                object.__setattr__(self, name, value)

    @property
    def enabled(self) -> bool:
        """True when some fault is on (the proxy then plans every unit; otherwise it only forwards)."""
        return any(kind.on(self) for kind in _INJECTED)

    def describe(self) -> str:
        """The faults in a few words, e.g. "delay 1-5 ms, split, to_server only" ("none" when all are off)."""
        parts = [kind.describe(self) for kind in _KINDS if kind.on(self)]
        return ", ".join(parts) if self.enabled else "none"  # where the faults apply, when there are some

    def applies_to(self, direction: Direction) -> bool:
        return self.enabled and DIRECTION.applies(self, direction)


# ------------------------------------------------------------------ the kinds of fault

Drawn = tuple[str, "Faults"]  # a smaller Faults, with a few words saying how it is smaller


def _share_words(name: str, value: float) -> str:
    return name if value == 1 else f"{name} {value:g}"


class FaultKind:
    """One kind of fault: its fields on Faults, how they are checked and told in words, the step of a
    direction's plan that draws for it (from a random stream of its own, named after the kind), and
    the smaller Faults a shrink tries: `removals` (the kind turned off) before `narrowings`.

    The command line's spelling of each kind (its flag, metavar, help, and a value spelt back as
    words) is the cli package's (cli/faults.py): building the parser may import nothing of
    sockrace.check, and no library module writes command-line flags. A test keeps the two naming
    the same kinds.
    """

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]  # its fields on Faults; the first says whether it is on
    off: ClassVar[Any] = 0.0  # the first field's value when the kind is off

    def checked(self, faults: Faults) -> dict[str, object]:
        """Its fields' values, checked and normalised; ValueError naming the first that is wrong."""
        return {}

    def on(self, faults: Faults) -> bool:
        return bool(getattr(faults, self.fields[0]))

    def describe(self, faults: Faults) -> str:
        return _share_words(self.name, getattr(faults, self.fields[0]))

    def removals(self, faults: Faults) -> Iterator[Drawn]:
        if self.on(faults):
            off: dict[str, Any] = {self.fields[0]: self.off}
            yield f"no {self.name}", replace(faults, **off)

    def narrowings(self, faults: Faults) -> Iterator[Drawn]:
        return iter(())


class Delay(FaultKind):
    """Every unit held a seeded time in delay_ms (lo, hi) from its arrival."""

    name, fields, off = "delay", ("delay_ms",), None

    def checked(self, faults: Faults) -> dict[str, object]:
        if faults.delay_ms is None:
            return {}
        return {"delay_ms": _check_range("delay_ms", faults.delay_ms, MAX_DELAY_MS)}

    def on(self, faults: Faults) -> bool:
        return faults.delay_ms is not None

    def describe(self, faults: Faults) -> str:
        assert faults.delay_ms is not None
        return f"delay {faults.delay_ms[0]:g}-{faults.delay_ms[1]:g} ms"

    def draw(self, faults: Faults, stream: random.Random) -> float:
        """The plan step: how long the next unit is held, in ms."""
        assert faults.delay_ms is not None
        return stream.uniform(*faults.delay_ms)

    def narrowings(self, faults: Faults) -> Iterator[Drawn]:
        if faults.delay_ms is None:
            return
        lo, hi = faults.delay_ms
        if hi - lo < 2 * MIN_DELAY_RANGE_MS:
            return
        middle = round((lo + hi) / 2, 1)
        yield f"delay {lo:g}-{middle:g} ms", replace(faults, delay_ms=(lo, middle))
        yield f"delay {middle:g}-{hi:g} ms", replace(faults, delay_ms=(middle, hi))


class Split(FaultKind):
    """A share of units cut at seeded offsets into 2..split_max_fragments fragments, written apart
    with a seeded pause in split_pause_ms (lo, hi) between."""

    name, fields = "split", ("split", "split_max_fragments", "split_pause_ms")

    def checked(self, faults: Faults) -> dict[str, object]:
        _require(
            type(faults.split_max_fragments) is int and 2 <= faults.split_max_fragments <= MAX_FRAGMENTS,
            f"split_max_fragments must be an integer from 2 to {MAX_FRAGMENTS}, "
            f"got {faults.split_max_fragments!r}",
        )
        return {"split": _check_share("split", faults.split),
                "split_pause_ms": _check_range("split_pause_ms", faults.split_pause_ms, 1000)}

    def cut(self, faults: Faults, stream: random.Random,
            length: int) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
        """The plan step: the fragments (lengths) of a unit of `length` bytes and the pauses between
        them, or None when it goes whole."""
        share = faults.split
        if share == 0 or stream.random() >= share or length < 2:
            return None
        count = stream.randint(2, min(faults.split_max_fragments, length))
        cuts = sorted(stream.sample(range(1, length), count - 1))
        edges = [0, *cuts, length]
        fragments = tuple(b - a for a, b in itertools.pairwise(edges))
        return fragments, tuple(stream.uniform(*faults.split_pause_ms) for _ in cuts)


class Coalesce(FaultKind):
    """A share of units that wait for 2..coalesce_max_chunks reads (at most coalesce_window_ms after
    the first, at most COALESCE_LIMIT_BYTES) and go in one write."""

    name, fields = "coalesce", ("coalesce", "coalesce_max_chunks", "coalesce_window_ms")

    def checked(self, faults: Faults) -> dict[str, object]:
        chunks = faults.coalesce_max_chunks
        _require(
            type(chunks) is int and 2 <= chunks <= MAX_COALESCE_CHUNKS,
            f"coalesce_max_chunks must be an integer from 2 to {MAX_COALESCE_CHUNKS}, "
            f"got {faults.coalesce_max_chunks!r}",
        )
        window = faults.coalesce_window_ms
        _require(
            isinstance(window, int | float) and not isinstance(window, bool)
            and math.isfinite(window) and 0 < window <= MAX_DELAY_MS,
            f"coalesce_window_ms must be a number of ms above 0 and at most {MAX_DELAY_MS:g}, got {window!r}",
        )
        return {"coalesce": _check_share("coalesce", faults.coalesce)}

    def target(self, faults: Faults, stream: random.Random) -> int:
        """The plan step: how many reads the next unit gathers (1: each read goes as it comes)."""
        share = faults.coalesce
        if share == 0 or stream.random() >= share:
            return 1
        return stream.randint(2, faults.coalesce_max_chunks)


class Reset(FaultKind):
    """A share of connections, per direction, aborted with a TCP RST after a seeded number of bytes
    of that direction in reset_after_bytes (lo, hi)."""

    name, fields = "reset", ("reset", "reset_after_bytes")

    def checked(self, faults: Faults) -> dict[str, object]:
        return {"reset": _check_share("reset", faults.reset),
                "reset_after_bytes": _check_range("reset_after_bytes", faults.reset_after_bytes, 2**62,
                                                  integer=True)}

    def describe(self, faults: Faults) -> str:
        low, high = faults.reset_after_bytes
        return f"{_share_words('reset', faults.reset)} after {low}-{high} bytes"

    def point(self, faults: Faults, stream: random.Random) -> int | None:
        """The plan step, once a direction: the byte of the direction the reset comes at, or None."""
        if faults.reset > 0 and stream.random() < faults.reset:
            return stream.randint(*faults.reset_after_bytes)
        return None


class Where(FaultKind):
    """Not a fault but where the faults apply: "to_server", "to_client" or "both"."""

    name, fields = "direction", ("direction",)

    def checked(self, faults: Faults) -> dict[str, object]:
        given = faults.direction
        direction = given.replace("-", "_") if isinstance(given, str) else given
        _require(direction in DIRECTION_CHOICES,
                 f"direction must be one of {', '.join(DIRECTION_CHOICES)}, got {given!r}")
        return {"direction": direction}

    def on(self, faults: Faults) -> bool:
        return faults.direction != "both"

    def describe(self, faults: Faults) -> str:
        return f"{faults.direction} only"

    def applies(self, faults: Faults, direction: Direction) -> bool:
        """The plan step: whether a direction's plan draws at all."""
        return faults.direction in ("both", direction.value)

    def removals(self, faults: Faults) -> Iterator[Drawn]:
        return iter(())  # narrower is smaller; "both" is the widest

    def narrowings(self, faults: Faults) -> Iterator[Drawn]:
        if faults.enabled and faults.direction == "both":
            for direction in ("to_client", "to_server"):
                yield f"faults {direction} only", replace(faults, direction=direction)


DELAY: Final = Delay()
SPLIT: Final = Split()
COALESCE: Final = Coalesce()
RESET: Final = Reset()
DIRECTION: Final = Where()
_INJECTED: Final[tuple[FaultKind, ...]] = (DELAY, SPLIT, COALESCE, RESET)  # the faults themselves
# In the command line's order; `direction` last, as it says where the others apply.
_KINDS: Final[tuple[FaultKind, ...]] = (*_INJECTED, DIRECTION)


def fault_kinds() -> tuple[FaultKind, ...]:
    """Every kind of fault, with `direction`, in the command line's order."""
    return _KINDS


def shrink_faults(faults: Faults) -> Iterator[Drawn]:
    """Every one-step smaller Faults, each with a few words saying it: first a kind turned off (the
    last kinds first: a reset hides the most), then a kind narrowed (the faults to one direction,
    then each half of the delay range)."""
    for kind in reversed(_KINDS):
        yield from kind.removals(faults)
    for kind in reversed(_KINDS):
        yield from kind.narrowings(faults)


def faults_to_json(faults: Faults) -> dict[str, Any]:
    """The fields of `faults` as JSON values (a range as a list)."""
    return {f.name: list(v) if isinstance(v := getattr(faults, f.name), tuple) else v for f in fields(faults)}


def faults_from_json(document: Mapping[str, Any]) -> Faults:
    """The Faults `faults_to_json` wrote (a list back to a range); ValueError or TypeError for others."""
    values: dict[str, Any] = {name: tuple(value) if isinstance(value, list) else value
                              for name, value in dict(document).items()}
    return Faults(**values)


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
    in order. Each fault kind draws from a random stream of its own (its plan step, on the kind),
    so that turning one fault on leaves the decisions of the others as they were.
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
        self.reset_at = RESET.point(faults, stream("reset")) if self.active else None

    def calibrate_delays(self, delay_ms: tuple[float, float]) -> None:
        """Draw the delays from now on in `delay_ms`. The delay stream is drawn the same way in any
        range (a uniform draw scaled to it), so the seed decides the same places within the new one;
        the other kinds are untouched."""
        if not DELAY.on(self.faults):
            raise ValueError("delays can be calibrated only where the faults have some")
        self.faults = replace(self.faults, delay_ms=delay_ms)

    def coalesce_target(self) -> int:
        """How many reads the next unit should gather (1: forward each read as it comes)."""
        return COALESCE.target(self.faults, self._coalesce) if self.active else 1

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
        if self.active and DELAY.on(self.faults):
            delay_ms = DELAY.draw(self.faults, self._delay)
            note("delay", ms=round(delay_ms, 3))
        reset = self.reset_at is not None and self.offset + length >= self.reset_at
        forwarded = self.reset_at - self.offset if reset and self.reset_at is not None else length
        fragments, pauses = self._cut(forwarded, note)
        if reset:
            self._decision(decisions, self.offset + forwarded)("reset", after_bytes=self.reset_at)
        self.offset += forwarded
        return Delivery(delay_ms, fragments, pauses, reset, tuple(decisions))

    def _cut(self, length: int, note: _Note) -> tuple[tuple[int, ...], tuple[float, ...]]:
        cut = SPLIT.cut(self.faults, self._split, length) if self.active else None
        if cut is None:
            return ((length,) if length else ()), ()
        fragments, pauses = cut
        note("split", fragments=list(fragments), pauses_ms=[round(p, 3) for p in pauses])
        return fragments, pauses

    def _decision(self, into: list[Decision], offset: int) -> _Note:
        def note(fault: str, **params: Any) -> None:
            into.append(Decision(self.connection, self.direction, offset, fault, params))
        return note
