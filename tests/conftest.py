from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

import pytest

from helpers import ThreadedServer
from sockrace.server import Server, ServerConfig


def pytest_collection_finish(session: pytest.Session) -> None:
    """Leave out of every later full collection what exists before the first test runs.

    Full collections are frequent here (helpers.LoopErrors.check after every live fuzz example, the
    end of every `check` run), and each one otherwise traverses every module, function and test item
    imported so far. None of those is ever the garbage a test is looking for; what a test creates
    stays collectable, and a leaked task still reports its exception, as before.
    """
    gc.collect()  # so that nothing already unreachable is kept for ever
    gc.freeze()


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


@pytest.fixture(autouse=True)
def harmless_watchdog(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The command line's watchdog ends the process when a run outlives --deadline by its grace: in
    a test that calls main() the process is pytest's. Here it records instead; the tests of the
    watchdog itself run `sockrace check` in a process of its own."""
    from sockrace.cli import runs as cli_runs

    expired: list[str] = []
    monkeypatch.setattr(cli_runs, "WATCHDOG", cli_runs.Watchdog(expire=expired.append))
    return expired
