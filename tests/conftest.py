from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

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
