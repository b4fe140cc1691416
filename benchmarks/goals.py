"""The goals the figures are held against, and the notes that help read them on another machine."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Final

from benchmarks.commands import Timing
from benchmarks.memory import MemoryFigure
from benchmarks.rounds import Measurement, round_ratios
from benchmarks.variants import LOCKSTEP_REQUESTS, PIPELINED_REQUESTS, WINDOWED_REQUESTS, Variant
from sockrace import loop as loops

COMPARE_GOAL_S: Final = 2.0
COUNTER_GOAL_S: Final = 0.5
IDLE_MEMORY_GOAL_KIB: Final = 20
# The figures the goals were set against: these reference clients and servers on a 2-core machine,
# CPython 3.11, client and server in separate processes. This machine's req/s divided by them says
# how it compares, for round trips (lock-step) and for CPU-bound pipelining apart: a goal that sets
# one against the other (multiplexed vs locked) or a wall time (the counter demo) moves with that.
REFERENCE_MACHINE: Final[dict[tuple[str, str, int], float]] = {
    ("reference lock-step", "readline", 1): 9_000,
    ("reference pipelined", "readline", 100): 160_000,
    ("reference pipelined", "bulk", 100): 270_000,
}


@dataclass(frozen=True, slots=True)
class Goal:
    text: str
    value: float | None  # None: could not be measured here
    target: float
    unit: str  # "x" for a ratio (met when >= target), "s" or "KiB" (met when < target)
    per_round: tuple[float, ...] = ()  # for a ratio: its value in each round (the value is their median)

    @property
    def status(self) -> str:
        if self.value is None:
            return "not available"
        met = self.value >= self.target if self.unit == "x" else self.value < self.target
        return "met" if met else "not met"


def server_cpu_notes(results: dict[Variant, Measurement], loop: str) -> list[str]:
    """What each server spent per request under the same pipelined load: unlike req/s, this does
    not depend on which process was the bottleneck (on 2 cores it is often the client)."""
    cpu = {}
    for kind in ("readline", "bulk", "sockrace"):
        m = results.get(Variant("reference windowed", kind, 100, WINDOWED_REQUESTS, loop))
        if m is not None and m.ok and m.median_server_us:
            cpu[kind] = m.median_server_us
    if "sockrace" not in cpu:
        return []
    parts = [f"{kind} {us:.1f} us" for kind, us in cpu.items()]
    ratios = [f"{kind} {cpu[kind] / cpu['sockrace']:.2f}x" for kind in cpu if kind != "sockrace"]
    return [f"server CPU per request under pipelined load: {', '.join(parts)}; relative to sockrace's: "
            f"{', '.join(ratios)} (above 1: sockrace spends less)"]


def machine_notes(results: dict[Variant, Measurement]) -> list[str]:
    """This machine's figures for the reference pairs against the reference machine's (see
    REFERENCE_MACHINE), on the default event loop only: the reference figures are asyncio's."""
    parts = []
    for v, m in results.items():
        expected = REFERENCE_MACHINE.get((v.client, v.server, v.concurrency))
        if expected is not None and v.loop == loops.DEFAULT_LOOP and m.ok:
            parts.append(f"{v.client} c={v.concurrency} -> {v.server} server {m.median_rate:,.0f} req/s "
                         f"against {expected:,.0f} ({m.median_rate / expected:.2f}x)")
    if not parts:
        return []
    return [f"this machine against the one the goals were set on: {'; '.join(parts)}"]


def _wall_time(timing: Timing | None) -> float | None:
    return timing.median_s if timing and timing.seconds and not timing.error else None


def evaluate_goals(
    results: dict[Variant, Measurement], timings: dict[str, Timing], memory: dict[str, MemoryFigure],
    loop: str,
) -> list[Goal]:
    def v(client: str, server: str, concurrency: int = 1, requests: int = LOCKSTEP_REQUESTS,
          variant_loop: str = loop) -> Variant:
        return Variant(client, server, concurrency, requests, variant_loop)

    def ratio_goal(text: str, top: Variant, bottom: Variant, target: float) -> Goal:
        ratios = round_ratios(results, top, bottom)
        value = statistics.median(ratios) if ratios else None
        return Goal(text, value, target, "x", per_round=tuple(ratios))

    windowed = {kind: v("reference windowed", kind, 100, WINDOWED_REQUESTS) for kind in ("readline", "bulk")}
    windowed_sockrace = v("reference windowed", "sockrace", 100, WINDOWED_REQUESTS)
    multiplexed = v("sockrace multiplexed", "sockrace", 100, PIPELINED_REQUESTS)
    sockrace_memory = memory.get("sockrace")
    return [
        ratio_goal("sockrace server, pipelined load: >= 1.5x the readline() reference server",
                   windowed_sockrace, windowed["readline"], 1.5),
        ratio_goal("sockrace server, pipelined load: >= 0.9x the bulk-parsing reference server",
                   windowed_sockrace, windowed["bulk"], 0.9),
        ratio_goal("sockrace server, lock-step: >= 0.95x the reference server",
                   v("reference lock-step", "sockrace"), v("reference lock-step", "readline"), 0.95),
        ratio_goal("multiplexed client, c=100: >= 20x the locked client",
                   multiplexed, v("sockrace locked", "sockrace", 100), 20),
        ratio_goal("multiplexed client, c=100: >= 0.9x the reference pipelined client",
                   multiplexed, v("reference pipelined", "sockrace", 100, PIPELINED_REQUESTS), 0.9),
        Goal("`sockrace compare` with defaults: under 2 s wall time",
             _wall_time(timings.get("compare")), COMPARE_GOAL_S, "s"),
        Goal("counter demo, 10,000 coroutines without and with the lock: under 0.5 s",
             _wall_time(timings.get("counter demo")), COUNTER_GOAL_S, "s"),
        ratio_goal("uvloop: lock-step >= 1.3x the same scenario on asyncio",
                   v("reference lock-step", "sockrace", variant_loop="uvloop"),
                   v("reference lock-step", "sockrace", variant_loop="asyncio"), 1.3),
        Goal("server memory per idle connection (1,000 idle): under 20 KiB",
             sockrace_memory.bytes_per_connection / 1024
             if sockrace_memory and sockrace_memory.error is None else None, IDLE_MEMORY_GOAL_KIB, "KiB"),
    ]
