"""The seeded workload every client strategy runs, and the verdict on each reply.

The same seed gives the same requests and the same yield schedule, so two strategies (or two
runs) differ only in how they coordinate the shared connection.
"""

from __future__ import annotations

import enum
import random
import string
from dataclasses import dataclass
from typing import Final

from sockrace.protocol import MAX_SLEEP_MS, Echo, Ok, ProtocolError, Sleep, format_request, parse_reply

# Up to this many `await asyncio.sleep(0)` between the steps of a request: enough to let other
# coroutines run between write and read (the seed tutorial uses one), small enough to stay fast.
DEFAULT_MAX_YIELDS: Final = 3
_TOKEN_ALPHABET: Final = string.ascii_lowercase + string.digits
# A plan holds every request and a run as much again in outcomes: at this many requests a run
# needs hundreds of megabytes, and beyond it memory, not the race, is what gets tested.
MAX_TOTAL_REQUESTS: Final = 1_000_000


class Verdict(enum.Enum):
    CORRECT = "correct"  # the reply answers this request
    CROSSED = "crossed"  # the reply answers another request of the run
    CORRUPTED = "corrupted"  # the reply answers nothing anybody sent, or is not a reply at all
    ERROR = "error"  # the request raised (by exception type)
    LOST = "lost"  # no reply ever came


@dataclass(frozen=True, slots=True)
class Step:
    """One planned request of one coroutine and the yields around it."""

    coroutine: int
    index: int
    payload: str
    line: bytes
    pause: int  # yields between the write and the read
    split_at: int  # 0: write the line in one call; else write line[:split_at], yield, the rest
    split_pause: int  # yields between the two parts of a split write


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    concurrency: int = 100
    requests: int = 10  # per coroutine
    seed: int = 1
    split_writes: bool = False
    max_yields: int = DEFAULT_MAX_YIELDS
    # One request in `slow_every` (0: none) is `SLEEP slow_ms <payload>` instead of `ECHO <payload>`:
    # the server answers it late, which is what a timeout needs to cancel a request halfway.
    slow_every: int = 0
    slow_ms: int = 0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.requests < 1:
            raise ValueError("requests must be at least 1")
        if self.total > MAX_TOTAL_REQUESTS:
            raise ValueError(
                f"concurrency x requests must be at most {MAX_TOTAL_REQUESTS:,} in one run, "
                f"got {self.concurrency:,} x {self.requests:,}"
            )
        if self.max_yields < 0:
            raise ValueError("max_yields must not be negative")
        if self.slow_every < 0 or not 0 <= self.slow_ms <= MAX_SLEEP_MS:
            raise ValueError(f"slow_every must not be negative and slow_ms must be 0 to {MAX_SLEEP_MS}")

    @property
    def total(self) -> int:
        return self.concurrency * self.requests


def payload_for(coroutine: int, index: int, token: str) -> str:
    return f"c{coroutine}.{index}.{token}"


@dataclass(frozen=True, slots=True)
class Plan:
    config: WorkloadConfig
    steps: tuple[tuple[Step, ...], ...]  # steps[coroutine][index]
    owners: dict[str, Step]  # payload -> the step that sent it

    @classmethod
    def build(cls, config: WorkloadConfig) -> Plan:
        rng = random.Random(config.seed)
        slow: set[int] = set()
        if config.slow_every:  # drawn from a second generator so the other draws stay as they were
            slow_rng = random.Random(f"slow {config.seed}")
            slow = set(slow_rng.sample(range(config.total), config.total // config.slow_every))
        steps = []
        for c in range(config.concurrency):
            row = []
            for i in range(config.requests):
                token = "".join(rng.choices(_TOKEN_ALPHABET, k=4))
                payload = payload_for(c, i, token)
                if c * config.requests + i in slow:
                    line = format_request(Sleep(ms=config.slow_ms, text=payload))
                else:
                    line = format_request(Echo(text=payload))
                pause = rng.randint(0, config.max_yields)
                split_at = rng.randint(1, len(line) - 1) if config.split_writes else 0
                split_pause = rng.randint(1, max(1, config.max_yields)) if config.split_writes else 0
                row.append(Step(c, i, payload, line, pause, split_at, split_pause))
            steps.append(tuple(row))
        owners = {step.payload: step for row in steps for step in row}
        return cls(config, tuple(steps), owners)

    def judge(self, step: Step, reply: bytes) -> tuple[Verdict, Step | None]:
        """The verdict on `reply` received for `step`, and the step it really answers (if any)."""
        try:
            parsed = parse_reply(reply)
        except ProtocolError:
            return Verdict.CORRUPTED, None
        if not isinstance(parsed, Ok):
            return Verdict.CORRUPTED, None
        owner = self.owners.get(parsed.payload)
        if owner is None:
            return Verdict.CORRUPTED, None
        if owner is step:
            return Verdict.CORRECT, owner
        return Verdict.CROSSED, owner
