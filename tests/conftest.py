from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from helpers import ThreadedServer
from sockrace.server import Server, ServerConfig


@pytest.fixture
def anyio_backend() -> str:
    # The server under test is asyncio; anyio drives the independent test clients on the same loop.
    return "asyncio"


@pytest.fixture
async def server(anyio_backend: str) -> AsyncIterator[Server]:
    """A real server on a free loopback port (anyio tests), closed with its connections afterwards."""
    async with Server(ServerConfig(port=0)) as running:
        yield running


@pytest.fixture
def threaded_server() -> Iterator[ThreadedServer]:
    """A real server on a free loopback port, on its own loop in a thread, for tests that call main()
    (which runs an event loop of its own); stopped afterwards."""
    with ThreadedServer() as running:
        yield running
