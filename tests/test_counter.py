"""`sockrace counter`: the seed tutorial's lost update, in memory and on the server."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import MemoryLink
from sockrace.counter import (
    cycle_collector_paused,
    increment_over,
    read_counter,
    server_incr_race,
    shared_counter,
)
from sockrace.server import Server, ServerConfig


@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_the_seed_tutorial_prints_1_without_a_lock_and_10000_with_one() -> None:
    assert await shared_counter(10_000) == 1
    assert await shared_counter(10_000, asyncio.Lock()) == 10_000


@pytest.mark.asyncio
@pytest.mark.parametrize("coroutines", [1, 2, 37])
async def test_every_coroutine_reads_before_any_writes(coroutines: int) -> None:
    assert await shared_counter(coroutines) == 1
    assert await shared_counter(coroutines, asyncio.Lock()) == coroutines


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generations of the cyclic collections that start while the test runs."""
    started: list[int] = []

    def record(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(record)
    try:
        yield started
    finally:
        gc.callbacks.remove(record)


@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_the_demo_runs_no_cyclic_collection_and_leaves_the_collector_on(collections: list[int]) -> None:
    assert gc.isenabled()
    assert await shared_counter(10_000, asyncio.Lock()) == 10_000
    # With the collector on, about 130. One may follow the block: the objects allocated in it are
    # counted, and the first allocation after it sets off the collection they would have.
    assert len(collections) <= 1
    assert gc.isenabled()


def test_a_collector_turned_off_before_stays_off_after() -> None:
    gc.disable()
    try:
        with cycle_collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collector_comes_back_on_when_the_block_raises() -> None:
    def fail_while_paused() -> None:
        with cycle_collector_paused():
            assert not gc.isenabled()
            raise ValueError("inside the block")

    with pytest.raises(ValueError, match="inside the block"):
        fail_while_paused()
    assert gc.isenabled()


async def _final_count(unsafe_incr: bool, clients: int, increments: int) -> int:
    server = Server(ServerConfig(unsafe_incr=unsafe_incr))
    links = [MemoryLink(server) for _ in range(clients)]
    try:
        await increment_over([link.connection for link in links], increments)
        return await read_counter(links[0].connection)
    finally:
        for link in links:
            await link.close()


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_server_incr_race_exact_in_memory() -> None:
    # In memory the interleaving is fixed: every round of 5 INCRs (one per connection) reads the
    # same value, so each round adds 1 instead of 5.
    assert await _final_count(unsafe_incr=True, clients=5, increments=8) == 8
    assert await _final_count(unsafe_incr=False, clients=5, increments=8) == 40


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.timeout(20)
async def test_server_incr_race_over_tcp_loses_updates_only_when_unsafe() -> None:
    unsafe = await server_incr_race(50, 20, unsafe_incr=True)
    atomic = await server_incr_race(50, 20, unsafe_incr=False)
    assert unsafe.expected == atomic.expected == 1000
    assert 0 < unsafe.final < 1000
    assert unsafe.lost == 1000 - unsafe.final
    assert atomic.final == 1000
    assert atomic.lost == 0
