"""The counter demo's wall time, next to the seed tutorial's program that it retells, in the same runs.

The demo (sockrace.counter.shared_counter): 10,000 coroutines race on a shared counter, first without
a lock, then with one. The tutorial's program as written there (reference.seed_counter) is timed
alternately with it, so that the demo's own cost can be told apart from what asyncio itself costs.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Final

from benchmarks import reference
from benchmarks.commands import Timing
from benchmarks.processes import Worker
from sockrace.counter import shared_counter

COUNTER_COROUTINES: Final = 10_000  # as in the seed tutorial

Counter = Callable[[int, asyncio.Lock | None], Awaitable[int]]
PROGRAMS: Final[dict[str, Counter]] = {"demo": shared_counter, "seed": reference.seed_counter}


async def timed(counter: Counter, coroutines: int) -> float:
    """Wall seconds of `counter` without, then with the lock. Raises RuntimeError on a wrong count."""
    started = time.perf_counter()
    await counter(coroutines, None)
    counted = await counter(coroutines, asyncio.Lock())
    if counted != coroutines:
        raise RuntimeError(f"the locked counter reached {counted}, not {coroutines}")
    return time.perf_counter() - started


def new_timings() -> tuple[Timing, Timing]:
    return (
        Timing("counter demo", ["shared_counter(10_000) without, then with asyncio.Lock (in process)"]),
        Timing("seed program", ["the seed tutorial's program, without then with the lock (reference.py)"]),
    )


def time_once(timing: Timing, program: str, worker: Worker, loop: str) -> None:
    """Time `program` ("demo" or "seed") once in `worker`, on a fresh loop; or set the error."""
    if timing.error is not None:
        return
    job = {"job": "counter", "program": program, "coroutines": COUNTER_COROUTINES, "loop": loop}
    answer = worker.ask(job)
    if "error" in answer:
        timing.error = answer["error"]
    else:
        timing.seconds.append(answer["seconds"])


def counter_notes(timings: dict[str, Timing]) -> list[str]:
    """The counter demo next to the tutorial's own program: the median of the run-by-run ratios (each
    pair timed back to back), as for the req/s ratios."""
    demo, seed = timings.get("counter demo"), timings.get("seed program")
    if demo is None or seed is None or not demo.seconds or not seed.seconds or demo.error or seed.error:
        return []
    ratios = [d / s for d, s in zip(demo.seconds, seed.seconds, strict=False) if s > 0]
    # Rounded as the results document stores them, so that the note and the table show the same figure.
    demo_s, seed_s = round(demo.median_s, 3), round(seed.median_s, 3)
    return [f"counter demo {demo_s:.2f} s, the seed tutorial's program as written there "
            f"{seed_s:.2f} s in the same runs: {statistics.median(ratios):.2f}x (runs: "
            f"{min(ratios):.2f} to {max(ratios):.2f}; above 1: the demo costs more than the program itself)"]
