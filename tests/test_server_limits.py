"""The server's own limits: its configuration, the idle sweeper, and the file descriptors it holds."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from helpers import LineClient, LoopErrors, ManualSweepers, ServerProcess, wait_until
from sockrace.listener import FD_HEADROOM
from sockrace.server import (
    MAX_IDLE_TIMEOUT_S,
    MAX_REFUSALS,
    MIN_SWEEP_PERIOD_S,
    IdleSweeper,
    Server,
    ServerConfig,
)

pytestmark = pytest.mark.timeout(60)

IDLE_GOODBYE = b"ERR IDLE no complete request in 300 s; closing\n"
IDLE_RANGE = r"ServerConfig.idle_timeout_s must be from 0 to 3.1536e\+07"


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("field_values", "message"),
    [
        ({"idle_timeout_s": 4e10}, rf"{IDLE_RANGE}, got 4e\+10"),
        ({"idle_timeout_s": 1e300}, rf"{IDLE_RANGE}, got 1e\+300"),
        ({"idle_timeout_s": math.nan}, rf"{IDLE_RANGE}, got nan"),
        ({"idle_timeout_s": -1.0}, rf"{IDLE_RANGE}, got -1"),
        ({"delay_ms": math.inf}, r"ServerConfig.delay_ms must be a finite number >= 0, got inf"),
        ({"jitter_ms": -0.5}, r"ServerConfig.jitter_ms must be a finite number >= 0, got -0.5"),
        ({"jitter_ms": math.nan}, r"ServerConfig.jitter_ms must be a finite number >= 0, got nan"),
        ({"port": 65536}, r"ServerConfig.port must be from 0 to 65535, got 65536"),
        ({"port": -1}, r"ServerConfig.port must be from 0 to 65535, got -1"),
        ({"max_connections": 0}, r"ServerConfig.max_connections must be a finite number >= 1, got 0"),
        ({"max_line": -5}, r"ServerConfig.max_line must be a finite number >= 1, got -5"),
        ({"max_keys": 0}, r"ServerConfig.max_keys must be a finite number >= 1, got 0"),
    ],
)
def test_a_config_the_server_cannot_run_with_is_refused(field_values: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig(**field_values)  # type: ignore[arg-type]


def test_the_limits_themselves_are_accepted() -> None:
    config = ServerConfig(idle_timeout_s=MAX_IDLE_TIMEOUT_S, port=65535, max_connections=1)
    assert config.idle_timeout_s == MAX_IDLE_TIMEOUT_S
    assert ServerConfig(idle_timeout_s=0).idle_timeout_s == 0


# ------------------------------------------------------------------ the idle sweeper


@contextmanager
def thread_errors() -> Iterator[list[BaseException]]:
    """Exceptions that end any thread while the block runs (a dead sweeper would land here)."""
    caught: list[BaseException] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        caught.append(args.exc_value or RuntimeError("thread ended without an exception value"))

    threading.excepthook = hook
    try:
        yield caught
    finally:
        threading.excepthook = previous


@pytest.mark.asyncio
@pytest.mark.parametrize("period_s", [4e10, 1e300, math.inf, math.nan, 0.0, -1.0])
async def test_the_sweeper_survives_any_period(period_s: float) -> None:
    with thread_errors() as errors:
        sweeps: list[None] = []
        sweeper = IdleSweeper(asyncio.get_running_loop(), period_s, lambda: sweeps.append(None))
        assert MIN_SWEEP_PERIOD_S <= sweeper.period_s <= threading.TIMEOUT_MAX
        await asyncio.sleep(0)
        sweeper.stop()
    assert errors == []


@pytest.mark.asyncio
async def test_the_longest_idle_timeout_keeps_its_sweeper_alive() -> None:
    with thread_errors() as errors:
        async with Server(ServerConfig(port=0, idle_timeout_s=MAX_IDLE_TIMEOUT_S)) as server:
            assert [t.name for t in threading.enumerate()].count("sockrace idle sweeper") == 1
            conn = await LineClient.connect(server.address)
            assert await conn.request(b"PING\n") == b"OK PONG\n"
            await conn.aclose()
    assert errors == []


@pytest.mark.anyio
async def test_idle_connections_are_cut_by_a_sweep_at_a_time_of_the_tests_choosing() -> None:
    errors = LoopErrors().install()
    sweepers = ManualSweepers()
    async with Server(ServerConfig(port=0), sweeper=sweepers) as server:
        (sweeper,) = sweepers.made
        assert sweeper.period_s == 300 / 4
        loop = asyncio.get_running_loop()
        quiet, busy = await LineClient.connect(server.address), await LineClient.connect(server.address)
        assert await quiet.request(b"PING\n") == b"OK PONG\n"
        assert await busy.request(b"PING\n") == b"OK PONG\n"
        await wait_until(lambda: server.store.counters.connections == 2)

        server.sweep_idle(loop.time() + 299)  # neither is idle for the whole timeout yet
        assert await busy.request(b"ECHO still here\n") == b"OK still here\n"
        server.sweep_idle(loop.time() + 300.5)  # past both deadlines: both told, both closed
        assert await quiet.read_to_eof() == IDLE_GOODBYE
        assert await busy.read_to_eof() == IDLE_GOODBYE
        await quiet.aclose()
        await busy.aclose()
    assert sweeper.stopped
    errors.check()


@pytest.mark.anyio
async def test_a_request_moves_the_deadline() -> None:
    sweepers = ManualSweepers()
    async with Server(ServerConfig(port=0), sweeper=sweepers) as server:
        loop = asyncio.get_running_loop()
        conn = await LineClient.connect(server.address)
        assert await conn.request(b"PING\n") == b"OK PONG\n"
        first_request_at = loop.time()
        assert await conn.request(b"PING\n") == b"OK PONG\n"
        server.sweep_idle(first_request_at + 300)  # idle since the second request only: not yet
        assert await conn.request(b"PING\n") == b"OK PONG\n"
        await conn.aclose()


@pytest.mark.anyio
async def test_no_idle_timeout_makes_no_sweeper() -> None:
    sweepers = ManualSweepers()
    async with Server(ServerConfig(port=0, idle_timeout_s=0), sweeper=sweepers):
        assert sweepers.made == []


# ------------------------------------------------------------------ file descriptors


@dataclass
class Flood:
    """Many connections at once, each sending PING and keeping the connection open."""

    address: tuple[str, int]
    size: int
    answers: list[bytes] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def one(self) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*self.address), 5)
        except (OSError, TimeoutError):
            self.answers.append(b"not connected")
            return
        self.writers.append(writer)
        try:
            writer.write(b"PING\n")
            self.answers.append(await asyncio.wait_for(reader.readline(), 5) or b"closed")
        except (OSError, TimeoutError):
            self.answers.append(b"no answer")

    async def run(self) -> None:
        await asyncio.gather(*(self.one() for _ in range(self.size)))

    def count(self, answer: bytes) -> int:
        return sum(1 for a in self.answers if a.startswith(answer))

    def close(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


async def peak_fds(server: ServerProcess, until: asyncio.Task[None]) -> int:
    """The most file descriptors `server` held, looked at every few ms until `until` is done."""
    peak = server.open_fds()
    while not until.done():
        peak = max(peak, server.open_fds())
        await asyncio.sleep(0.002)
    return max(peak, server.open_fds())


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_flood_of_refusals_holds_few_file_descriptors() -> None:
    # 500 connects against a limit of 50 used to hold 507 descriptors at once (1 s linger each).
    async with ServerProcess("--max-connections", "50") as server:
        at_rest = server.open_fds()
        flood = Flood(server.address, 500)
        peak = await peak_fds(server, asyncio.create_task(flood.run()))
        try:
            assert flood.count(b"OK PONG") == 50
            assert flood.count(b"ERR BUSY") == 450
        finally:
            flood.close()
        budget = at_rest + 50 + MAX_REFUSALS
        print(f"\n500 connects, limit 50: peak {peak} file descriptors (at rest {at_rest}, budget {budget})")
        assert peak <= budget
        conn = await LineClient.connect(server.address)
        assert await conn.request(b"PING\n") == b"OK PONG\n"
        await conn.aclose()
    assert server.stderr == ""


@pytest.mark.slow
@pytest.mark.asyncio
async def test_at_the_open_file_limit_the_server_waits_instead_of_failing() -> None:
    # Under `ulimit -n 128`, 300 connects used to make asyncio print a traceback per failed accept().
    async with ServerProcess("--max-connections", "1000", open_files=128) as server:
        at_rest = server.open_fds()
        flood = Flood(server.address, 300)
        flooding = asyncio.create_task(flood.run())
        peak = await peak_fds(server, flooding)
        try:
            served = flood.count(b"OK PONG")
            budget = 128 - FD_HEADROOM
            print(f"\n300 connects under a limit of 128 descriptors: {served} served, peak {peak} "
                  f"(at rest {at_rest}, budget {budget})")
            assert peak <= budget
            assert served == budget - at_rest
            assert flood.count(b"ERR") == 0  # the others wait in the backlog, not refused
        finally:
            flood.close()
        # Once the flood is gone, the server serves again.
        conn = await LineClient.connect(server.address)
        assert await conn.request(b"PING\n") == b"OK PONG\n"
        await conn.aclose()
    assert server.returncode == 0
    assert server.stderr == ""
