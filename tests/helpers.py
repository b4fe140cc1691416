"""Test helpers: in-memory streams that make races fully deterministic, and a real server fixture.

Over `memory_connection`, bytes written by one side are fed to the other side's StreamReader in
the same call, so everything that happens is ordered by the event loop's FIFO of ready callbacks:
the same seed gives the same interleaving, and the tests can pin exact verdict counts.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sockrace.client import STRATEGIES, SharedConnection
from sockrace.events import Recorder
from sockrace.race import RunResult, race
from sockrace.server import Server, ServerConfig
from sockrace.workload import Plan, WorkloadConfig


class MemoryWriter:
    """The parts of asyncio.StreamWriter the client and the server use, writing into a peer reader."""

    def __init__(self, peer: asyncio.StreamReader) -> None:
        self.peer = peer
        self.closed = False
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("memory stream closed")
        self.written += data
        self.peer.feed_data(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("memory stream closed")

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.peer.feed_eof()

    def write_eof(self) -> None:
        self.peer.feed_eof()

    def can_write_eof(self) -> bool:
        return True

    async def wait_closed(self) -> None:
        return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("memory", 0)}.get(name, default)


class MemoryLink:
    """A client connection wired straight into `server.handle_connection`, with no socket.

    `connection.reopen()` wires a fresh pair into the same server (as reconnecting over TCP would).
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.server_tasks: list[asyncio.Task[None]] = []
        client_reader, self.client_writer, self.server_writer = self._open_pair()
        self.server_task = self.server_tasks[0]
        self.connection = SharedConnection(client_reader, self.client_writer, opener=self._reopen)

    def _open_pair(self) -> tuple[asyncio.StreamReader, MemoryWriter, MemoryWriter]:
        client_reader = asyncio.StreamReader()
        server_reader = asyncio.StreamReader()
        client_writer = MemoryWriter(server_reader)
        server_writer = MemoryWriter(client_reader)
        self.server_tasks.append(asyncio.create_task(
            self.server.handle_connection(server_reader, server_writer)  # type: ignore[arg-type]
        ))
        return client_reader, client_writer, server_writer

    async def _reopen(self) -> tuple[asyncio.StreamReader, MemoryWriter]:
        client_reader, self.client_writer, self.server_writer = self._open_pair()
        return client_reader, self.client_writer

    async def close(self) -> None:
        self.client_writer.close()
        await asyncio.wait_for(asyncio.gather(*self.server_tasks), 5)


async def race_in_memory(
    mode: str,
    config: WorkloadConfig,
    *,
    recorder: Recorder | None = None,
    scenario: str = "shared connection",
    stall_timeout: float = 0.2,
) -> RunResult:
    """Race `config` in `mode` over a MemoryLink: the same seed always gives the same interleaving.

    The stall timeout only ends runs in which some coroutine waits for a reply that will never come;
    it decides no count, since an in-memory run never pauses for anything but such a wait.
    """
    link = MemoryLink(Server(ServerConfig()))
    strategy = STRATEGIES[mode](link.connection)
    try:
        return await race(
            strategy, Plan.build(config), scenario=scenario, stall_timeout=stall_timeout, recorder=recorder
        )
    finally:
        await strategy.aclose()
        await link.close()
