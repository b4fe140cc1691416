"""The proxy's delays calibrated around a client's own timeout (check/driver.py DelayCalibration):
the range it draws, the proxy switching to it for connections already open without changing what
the seed decides, and the range travelling with the run's decisions to its replays."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from helpers import ThreadedServer
from sockrace.check.decisions import Decisions
from sockrace.check.driver import DelayCalibration, delays_around
from sockrace.check.driver_commands import driver_command
from sockrace.check.faults import FaultRecord, Faults
from sockrace.check.proxy import FaultProxy
from sockrace.check.record import RunRecord, from_dict, to_dict
from sockrace.check.runner import CheckConfig, Setting, run_check

pytestmark = pytest.mark.timeout(60)

THREADS = "examples/thread_clients.py"


def test_the_round_trip_lands_around_the_timeout_net_of_what_it_takes_without_faults() -> None:
    # Each way gets half of 0.5x-1.5x of 10 ms, less half the 1 ms round trip and the 0.5 ms a hold is late.
    assert delays_around(10, "both", round_trip_ms=1.0, lateness_ms=0.5) == (1.5, 6.5)
    assert delays_around(10, "to_client", round_trip_ms=1.0, lateness_ms=0.5) == (3.5, 13.5)
    assert delays_around(10, "both") == (2.5, 7.5)
    # A round trip already past 1.5x the timeout: every call times out without any delay.
    assert delays_around(10, "both", round_trip_ms=20.0) == (0.0, 0.0)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(100):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def echo(anyio_backend: str) -> AsyncIterator[tuple[str, int]]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        yield str(host), int(port)


async def _delays(upstream: tuple[str, int], faults: Faults,
                  calibrated: tuple[float, float] | None) -> list[float]:
    """The delays the proxy draws for three messages each way on one connection and one on a second,
    the faults started after a first message that goes through without any."""
    records: list[FaultRecord] = []
    async with FaultProxy(upstream, 7, faults=faults, on_record=records.append, faulting=False) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.address)
        writer.write(b"first")
        assert await reader.readexactly(5) == b"first"
        assert not [r for r in records if r.fault == "delay"]  # no faults before they start
        proxy.start_faults(delay_ms=calibrated)
        for message in (b"one", b"two", b"six"):
            writer.write(message)
            assert await reader.readexactly(3) == message
        other_reader, other_writer = await asyncio.open_connection(*proxy.address)
        other_writer.write(b"new")
        assert await other_reader.readexactly(3) == b"new"
        for stream in (writer, other_writer):
            stream.close()
            await stream.wait_closed()
    return [float(r.params["ms"]) for r in records if r.fault == "delay"]


@pytest.mark.anyio
async def test_calibrated_delays_reach_open_connections_and_the_seed_decides_where_in_the_range(
        echo: tuple[str, int]) -> None:
    calibrated = await _delays(echo, Faults(delay_ms=(50.0, 60.0)), (1.0, 2.0))
    assert len(calibrated) == 8
    assert all(1.0 <= ms <= 2.0 for ms in calibrated)
    # As if the proxy had been given that range from the start: the same draws, scaled alike.
    assert calibrated == pytest.approx(await _delays(echo, Faults(delay_ms=(1.0, 2.0)), None))


class _Proxy:
    def __init__(self) -> None:
        self.started: list[tuple[float, float] | None] = []

    def start_faults(self, *, delay_ms: tuple[float, float] | None = None) -> None:
        self.started.append(delay_ms)


def test_the_faults_start_after_the_first_round_with_the_delays_it_measured_or_the_recorded_ones() -> None:
    proxy = _Proxy()
    fresh = DelayCalibration(proxy, 10.0, "both", 0.5, None)  # type: ignore[arg-type]
    fresh.ran([3.0, 1.0, 2.0])  # the shortest round trip: one call alone on the wire
    assert proxy.started == [delays_around(10.0, "both", 1.0, 0.5)]
    assert fresh.delay_ms == proxy.started[0]
    replayed = DelayCalibration(proxy, 0.0, "both", 0.0, (0.25, 0.75))  # type: ignore[arg-type]
    replayed.ran([9.0])
    assert proxy.started[-1] == (0.25, 0.75)


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer() as threaded:
        yield threaded


def _config(server: ThreadedServer, backend: str, replay: Decisions | None = None) -> CheckConfig:
    return CheckConfig(f"{THREADS}:closing", server.address, seed=2, tasks=4, calls=5, timeout_ms=None,
                       faults=Faults(delay_ms=(1.25, 3.75)), client_timeout_ms=5.0, deadline_s=20,
                       driver=driver_command(python=sys.executable, backend=backend), replay=replay)


def test_a_threads_run_records_the_delays_it_calibrated_and_its_replay_makes_them_again(
        server: ThreadedServer) -> None:
    first = asyncio.run(run_check(_config(server, "threads"))).result
    calibrated = first.decisions.delay_ms
    assert calibrated is not None
    assert 0 <= calibrated[0] <= calibrated[1] <= 3.75  # 1.5x the timeout, half each way, less what it takes
    record = RunRecord(f"{THREADS}:closing", server.address, Setting(decisions=first.decisions), None, 20.0,
                       None, False, None, "asyncio", None, "", "0")
    kept = from_dict(to_dict(record)).setting.decisions
    assert kept is not None
    assert kept.delay_ms == calibrated
    again = asyncio.run(run_check(_config(server, "threads", replay=first.decisions))).result
    assert again.decisions.delay_ms == calibrated  # made again as recorded, not calibrated afresh


def test_a_backend_that_cuts_its_calls_has_nothing_to_calibrate(server: ThreadedServer) -> None:
    config = CheckConfig("examples/sockrace_clients.py:reconnecting", server.address, seed=2, tasks=4,
                         calls=5, faults=Faults(delay_ms=(1.25, 3.75)), client_timeout_ms=5.0, deadline_s=20,
                         driver=driver_command(python=sys.executable))
    assert asyncio.run(run_check(config)).result.decisions.delay_ms is None
