"""Shutdown under load: SIGTERM or Ctrl-C while a hundred clients are busy, against a real process."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

import anyio
import pytest

from helpers import LineClient, ServerProcess

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

CLIENTS = 100
WARM_UP = 5  # round trips every client completes before the signal, so that all are truly active

STOPPED = re.compile(
    r"sockrace server shutting down \((\d+) connections open\); "
    r"requests answered: (\d+); connections served: (\d+)"
)


@dataclass
class ClientRecord:
    replies: int = 0
    ended_by: str = ""  # "eof" (clean close) or the exception that ended it


async def busy_client(address: tuple[str, int], number: int, record: ClientRecord, warmed: list[int],
                      all_warm: anyio.Event) -> None:
    """Request, reply, request... until the server closes; every reply must answer its request."""
    async with await anyio.connect_tcp(*address) as stream:
        conn = LineClient(stream)
        while True:
            text = b"%d.%d" % (number, record.replies)
            # Some requests keep the server busy for a while, so shutdown finds connections mid-request.
            line = b"SLEEP 50 " + text if record.replies % 3 == 1 else b"ECHO " + text
            try:
                await conn.send(line + b"\n")
                reply = await conn.read_line()
            except anyio.IncompleteRead:
                record.ended_by = "eof"
                return
            except (anyio.BrokenResourceError, OSError) as exc:
                record.ended_by = repr(exc)
                return
            assert reply == b"OK " + text + b"\n"
            record.replies += 1
            if record.replies == WARM_UP:
                warmed.append(number)
                if len(warmed) == CLIENTS:
                    all_warm.set()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_shutdown_under_load_answers_what_it_read_and_closes_cleanly(sig: signal.Signals) -> None:
    records = [ClientRecord() for _ in range(CLIENTS)]
    warmed: list[int] = []
    all_warm = anyio.Event()
    async with ServerProcess() as server, anyio.create_task_group() as clients:
        for number, record in enumerate(records):
            clients.start_soon(busy_client, server.address, number, record, warmed, all_warm)
        await all_warm.wait()
        code = await server.stop(sig)
    assert code == 0
    assert server.stderr == ""
    assert len(server.stdout_lines) == 2, server.stdout_lines
    assert server.stdout_lines[0].startswith("sockrace server listening on 127.0.0.1:")
    stopped = STOPPED.fullmatch(server.stdout_lines[1])
    assert stopped is not None, server.stdout_lines[1]
    open_at_shutdown, answered, connections = map(int, stopped.groups())
    assert (connections, open_at_shutdown) == (CLIENTS, CLIENTS)
    assert [r.ended_by for r in records] == ["eof"] * CLIENTS  # closed cleanly: no reset, no error
    # Every request the server read was answered, and every answer reached its client.
    print(f"\n{sig.name}: {answered} requests answered on {connections} connections, "
          f"{sum(r.replies for r in records)} replies received, {CLIENTS} clean closes")
    assert sum(r.replies for r in records) == answered
    assert all(r.replies >= WARM_UP for r in records)


async def test_idle_server_stops_at_once_on_sigterm() -> None:
    async with ServerProcess() as server:
        code = await server.stop(signal.SIGTERM)
    assert code == 0
    assert server.stderr == ""
    assert server.stdout_lines == [
        f"sockrace server listening on 127.0.0.1:{server.address[1]}",
        "sockrace server shutting down (0 connections open); requests answered: 0; connections served: 0",
    ]

