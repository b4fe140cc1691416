"""The exact order a seeded loop runs a small workload in, pinned for each perturbation.

The seeded loop's machinery can be made cheaper in many ways that change nothing a test of its
properties sees (batches stay batches, units stay whole) but that would still change which order a
given seed means, and so break every replay command printed before. These tests pin the order
itself: the log of what ran, the number of decisions and their digest, under three seeds of each
perturbation, on one workload that has every kind of unit (task steps, a future's done-callbacks,
callbacks scheduled in a row, a lock handing over, an event waking many) and on a counter of many
tasks, the workload the loop's cost is measured on. The figures were taken on CPython 3.11, 3.12
and 3.13, which agree.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from sockrace.check.schedule import Perturbation, SeededEventLoop, seeded_loop_factory

# (perturbation, seed) -> (log, decisions, digest), as the loop ran them before any optimisation.
SMALL_ORDERS: dict[tuple[Perturbation, int], tuple[str, int, str]] = {
    ("shuffle", 1): (
        "c0 b0 a0 e0 d0 d1 c1 e1 a1 set b1 row0 row1 row2 eL done-x done-y done-z eE e=S dL dE d=S "
        "cL cE c=S aL aE a=S bL bE b=S", 7, "6610050c64b55cccfdb6def6e0d2eb49"),
    ("shuffle", 2): (
        "b0 d0 e0 c0 a0 row0 row1 row2 c1 set e1 d1 b1 a1 done-x done-y done-z cL cE c=S bL bE b=S "
        "eL eE e=S aL aE a=S dL dE d=S", 7, "139f89354e86e6d8dc5a03e84b091d71"),
    ("shuffle", 3): (
        "c0 e0 b0 a0 d0 d1 a1 set row0 row1 row2 c1 b1 e1 bL done-x done-y done-z bE b=S aL aE a=S "
        "cL cE c=S eL eE e=S dL dE d=S", 7, "b583e2b85732bec3b09ec2baeb33c5f3"),
    ("reverse", 1): (
        "a0 b0 c0 d0 e0 a1 b1 c1 d1 e1 row0 row1 row2 set done-x done-y done-z eL eE e=S dL dE d=S "
        "cL cE c=S bL bE b=S aL aE a=S", 7, "8e2dc29f5e4edf5e8c33633aadef7feb"),
    ("reverse", 2): (
        "e0 d0 c0 b0 a0 row0 row1 row2 set e1 d1 c1 b1 a1 done-x done-y done-z eL eE e=S dL dE d=S "
        "cL cE c=S bL bE b=S aL aE a=S", 7, "3428c6241cefb1ac311f2702248f997f"),
    ("reverse", 3): (
        "e0 d0 c0 b0 a0 row0 row1 row2 set e1 d1 c1 b1 a1 done-x done-y done-z eL eE e=S dL dE d=S "
        "cL cE c=S bL bE b=S aL aE a=S", 7, "20c0d0e7cb952ab75369e1acd0462080"),
}
PLAIN_SMALL_ORDER = (
    "a0 b0 c0 d0 e0 a1 b1 c1 d1 e1 row0 row1 row2 set aL done-x done-y done-z aE a=S bL bE b=S "
    "cL cE c=S dL dE d=S eL eE e=S"
)
COUNTER_TASKS = 60
# (perturbation, seed) -> (digest of the counter's log, decisions, digest of the schedule).
COUNTER_ORDERS: dict[tuple[Perturbation, int], tuple[str, int, str]] = {
    ("shuffle", 1): ("dd3e089402a08671511815c989cdad86", 64, "973cc010db3d4981ce82181670a2623e"),
    ("shuffle", 2): ("8922c05295244099b863651aa389d3bf", 64, "22627b48cc08b1b82e0d969896909491"),
    ("shuffle", 3): ("020e5cba02bf688c1f11fb68e5259fc3", 64, "5d94247afa998739290ab3de5ed886cd"),
    ("reverse", 1): ("e693335fd3e4a6f479b67c89b693032b", 64, "5d0a346293dcf4a74953553884ffea78"),
    ("reverse", 2): ("8e9674c9c08d4d92480bf5c87e4ca336", 64, "09f2dd838a74dd2adb0ae7176eb7ea34"),
    ("reverse", 3): ("8e9674c9c08d4d92480bf5c87e4ca336", 64, "e06f16c51646de1bde8b4838b6126da3"),
}


async def every_kind_of_unit(log: list[str]) -> None:
    loop = asyncio.get_running_loop()
    lock = asyncio.Lock()
    event = asyncio.Event()
    shared: asyncio.Future[str] = loop.create_future()

    def logs_done(name: str) -> Callable[[asyncio.Future[str]], None]:
        return lambda _future: log.append(f"done-{name}")

    for name in "xyz":
        shared.add_done_callback(logs_done(name))

    async def worker(name: str) -> None:
        for step in range(2):
            log.append(f"{name}{step}")
            await asyncio.sleep(0)
        async with lock:
            log.append(f"{name}L")
            await asyncio.sleep(0)
        await event.wait()
        log.append(f"{name}E")
        log.append(f"{name}={await shared}")

    async def setter() -> None:
        for number in range(3):
            loop.call_soon(log.append, f"row{number}")
        await asyncio.sleep(0)
        event.set()
        shared.set_result("S")
        log.append("set")

    await asyncio.gather(*(worker(name) for name in "abcde"), setter())


async def counter(log: list[str]) -> None:
    """The seed tutorial's counter, unlocked then locked, each step logged."""
    value = 0  # read and written by the tasks
    lock = asyncio.Lock()

    async def task(number: int, locked: bool) -> None:
        nonlocal value
        if locked:
            await lock.acquire()
        try:
            read = value
            log.append(f"{number}r")
            await asyncio.sleep(0)
            log.append(f"{number}s")
            await asyncio.sleep(0)
            value = read + 1
        finally:
            if locked:
                lock.release()

    for locked in (False, True):
        value = 0
        await asyncio.gather(*(task(number, locked) for number in range(COUNTER_TASKS)))
        log.append(f"value {value}")


Workload = Callable[[list[str]], Coroutine[Any, Any, None]]  # appends what runs to the log it is given


def run_logged(workload: Workload, seed: int, perturbation: Perturbation) -> tuple[str, int, str]:
    log: list[str] = []
    with asyncio.Runner(loop_factory=seeded_loop_factory(seed, perturbation)) as runner:
        runner.run(asyncio.wait_for(workload(log), 5))
        loop = runner.get_loop()
        assert isinstance(loop, SeededEventLoop)
        return " ".join(log), loop.decisions, loop.digest()


def test_the_small_workload_runs_in_fifo_order_on_the_plain_loop() -> None:
    log: list[str] = []
    asyncio.run(asyncio.wait_for(every_kind_of_unit(log), 5))
    assert " ".join(log) == PLAIN_SMALL_ORDER


@pytest.mark.parametrize(("perturbation", "seed"), list(SMALL_ORDERS))
def test_a_seed_runs_the_small_workload_in_its_pinned_order(perturbation: Perturbation, seed: int) -> None:
    assert run_logged(every_kind_of_unit, seed, perturbation) == SMALL_ORDERS[perturbation, seed]


@pytest.mark.parametrize(("perturbation", "seed"), list(COUNTER_ORDERS))
def test_a_seed_runs_the_counter_in_its_pinned_order(perturbation: Perturbation, seed: int) -> None:
    log, decisions, digest = run_logged(counter, seed, perturbation)
    assert (hashlib.blake2b(log.encode(), digest_size=16).hexdigest(), decisions, digest) == (
        COUNTER_ORDERS[perturbation, seed]
    )


def test_what_a_keyboard_interrupt_leaves_of_a_batch_runs_first_on_the_next_pass() -> None:
    ran: list[str] = []

    def interrupt() -> None:
        ran.append("interrupt")
        raise KeyboardInterrupt

    loop = SeededEventLoop(1)
    try:
        for callback in (lambda: ran.append("before"), interrupt, lambda: ran.append("after")):
            loop.call_soon(callback)
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        loop.call_soon(ran.append, "next")
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    assert ran == ["before", "interrupt", "after", "next"]
