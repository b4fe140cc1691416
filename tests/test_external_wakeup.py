"""A call waiting on a service the proxy does not see is not stuck by whose turn it is: its socket (or
a pipe) is watched by the event loop, and the peer may answer at any moment (hammer.nothing_can_wake,
only_the_wire_is_watched). A false "stuck" here would fail a correct client."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ThreadedServer, line_service, service_process, write_scenario
from sockrace.check.hammer import only_the_wire_is_watched
from sockrace.check.oracle import CallVerdict
from sockrace.check.proxy import FaultProxy
from sockrace.check.runner import CheckConfig, run_check

pytestmark = pytest.mark.timeout(60)

# A service in a process of its own (no thread of this process at work while it thinks): it answers
# each line 50 ms after it came, well inside the stuck bound's quarter of a second (and past the few ms in
# which whose turn it is decides).
SLOW_SERVICE = line_service("""
    time.sleep(0.05)
    stream.write(line)
""")

EXTERNAL = """
import asyncio, os

async def external(address):
    port = int(os.environ["SOCKRACE_TEST_SLOW_PORT"])

    async def call(i):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"%d\\n" % i)
            await writer.drain()
            return int(await reader.readline())
        finally:
            writer.close()
            await writer.wait_closed()

    return call, lambda i: i
"""


@pytest.fixture
def slow_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    with service_process(SLOW_SERVICE) as port:
        monkeypatch.setenv("SOCKRACE_TEST_SLOW_PORT", str(port))
        yield port


def test_a_call_waiting_on_a_service_outside_the_proxy_is_not_stuck(
        slow_service: int, tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, "external", EXTERNAL)
    with ThreadedServer() as upstream:
        config = CheckConfig(scenario, upstream.address, seed=1, tasks=1, calls=3, timeout_ms=None,
                             deadline_s=20)
        result = asyncio.run(run_check(config)).result
    assert [o.verdict for o in result.outcomes] == [CallVerdict.CORRECT] * 3, result.explain()
    assert result.ok


async def _watched(fds: list[int]) -> bool | None:
    """only_the_wire_is_watched, with a proxy in front of a listening socket and `fds` watched."""
    loop = asyncio.get_running_loop()
    for fd in fds:
        loop.add_reader(fd, lambda: None)
    try:
        return only_the_wire_is_watched(loop, None)
    finally:
        for fd in fds:
            loop.remove_reader(fd)


def test_the_loops_own_descriptors_and_the_wires_are_all_it_may_watch() -> None:
    async def main(upstream: tuple[str, int]) -> tuple[bool | None, bool | None, bool | None]:
        loop = asyncio.get_running_loop()
        async with FaultProxy(upstream, 0) as proxy:
            _reader, writer = await asyncio.open_connection(*proxy.address)  # the client's, to the proxy
            try:
                for _ in range(500):  # until the proxy holds both ends (accepted, connected upstream)
                    if len(proxy.own_sockets()[0]) >= 3:
                        break
                    await asyncio.sleep(0.01)
                through_the_proxy = only_the_wire_is_watched(loop, proxy)
                read_end, write_end = os.pipe()
                try:
                    loop.add_reader(read_end, lambda: None)  # a child's pipe, say
                    with_a_pipe = only_the_wire_is_watched(loop, proxy)
                    loop.remove_reader(read_end)
                finally:
                    os.close(read_end)
                    os.close(write_end)
                unknown_wire = only_the_wire_is_watched(loop, None)  # the client's socket: whose?
            finally:
                writer.close()
                await writer.wait_closed()
        return through_the_proxy, with_a_pipe, unknown_wire

    with ThreadedServer() as upstream:  # its own thread and loop: none of its sockets in this loop
        assert asyncio.run(main(upstream.address)) == (True, False, False)
    assert asyncio.run(_watched([])) is True  # the loop's own self-pipe alone
