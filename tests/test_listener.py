"""The accept loop: at most `limit` sockets held, paused at the limit or when descriptors run out."""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from helpers import LoopErrors, settle, wait_until
from sockrace import listener as listener_module
from sockrace.listener import FD_HEADROOM, Listener, bind, fd_budget, open_fd_count

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


class Accepted:
    """What the listener hands over, kept until the test releases it."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def __call__(self, sock: socket.socket) -> None:
        self.sockets.append(sock)

    def release_one(self, listener: Listener) -> None:
        self.sockets.pop(0).close()
        listener.release()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@asynccontextmanager
async def listening(limit: int, sockets: list[socket.socket] | None = None) -> AsyncIterator[
        tuple[Listener, Accepted]]:
    accepted = Accepted()
    listener = Listener(sockets or await bind("127.0.0.1", 0), accepted, limit)
    listener.start()
    try:
        yield listener, accepted
    finally:
        listener.close()
        accepted.close()


async def connect(listener: Listener) -> socket.socket:
    """A client connection; the kernel completes it from the backlog, accepted or not."""
    client = socket.socket()
    client.setblocking(False)
    await asyncio.get_running_loop().sock_connect(client, listener.sockets[0].getsockname())
    return client


async def test_nothing_past_the_limit_is_accepted_until_a_socket_is_released() -> None:
    async with listening(limit=2) as (listener, accepted):
        clients = [await connect(listener) for _ in range(2)]
        try:
            await wait_until(lambda: len(accepted.sockets) == 2)
            clients.append(await connect(listener))  # in the backlog once connect() returns
            await settle()  # loop passes in which a wrong accept would happen
            assert (len(accepted.sockets), listener.held) == (2, 2)
            accepted.release_one(listener)
            await wait_until(lambda: len(accepted.sockets) == 2)  # the third, from the backlog
            assert listener.held == 2
        finally:
            for client in clients:
                client.close()


class Starved(socket.socket):
    """A listening socket whose accept() fails as it does when the process has no descriptor left."""

    attempts = 0

    def accept(self) -> tuple[socket.socket, object]:
        Starved.attempts += 1
        raise OSError(errno.EMFILE, "Too many open files")


async def test_running_out_of_descriptors_pauses_quietly_and_tries_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(listener_module, "RETRY_AFTER_SHORTAGE_S", 0.05)
    errors = LoopErrors().install()
    starved = Starved()
    starved.bind(("127.0.0.1", 0))
    starved.listen()
    starved.setblocking(False)
    Starved.attempts = 0
    async with listening(limit=10, sockets=[starved]) as (listener, accepted):
        loop = asyncio.get_running_loop()
        started = loop.time()  # before the first attempt, which the connect below may already cause
        client = await connect(listener)
        try:
            await wait_until(lambda: Starved.attempts >= 3)
            # One attempt per retry, not a busy loop on a socket that stays readable: the third
            # attempt cannot come before two retry delays.
            assert loop.time() - started >= 2 * 0.05
            assert accepted.sockets == []
        finally:
            client.close()
    errors.check()
    assert [r for r in caplog.records if r.levelname != "DEBUG"] == []


async def test_a_closed_listener_refuses_connections() -> None:
    async with listening(limit=1) as (listener, _):
        address = listener.sockets[0].getsockname()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()


async def test_a_busy_address_cannot_be_bound_and_nothing_is_left_open() -> None:
    before = open_fd_count()
    async with listening(limit=1) as (listener, _):
        port = listener.sockets[0].getsockname()[1]
        with pytest.raises(OSError, match="Address already in use"):
            await bind("127.0.0.1", port)
    assert open_fd_count() == before


def test_the_budget_is_what_the_open_file_limit_leaves() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = open_fd_count()
    assert in_use is not None
    budget = fd_budget()
    if soft == resource.RLIM_INFINITY:
        assert budget is None
    else:
        assert budget == max(1, soft - in_use - FD_HEADROOM)


@pytest.mark.parametrize(("host", "resolved"), [("127.0.0.1", False), ("", False), ("::1", False),
                                                ("localhost", True)])
async def test_only_a_name_goes_to_the_resolver(host: str, resolved: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # A numeric address is bound without the loop's getaddrinfo (a thread of its pool, the idna codec).
    loop = asyncio.get_running_loop()
    asked: list[object] = []
    real = loop.getaddrinfo

    async def getaddrinfo(*args: object, **kwargs: object) -> object:
        asked.append(args[0])
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    try:
        sockets = await bind(host, 0)
    except OSError as exc:  # no IPv6 on this machine, say
        pytest.skip(f"cannot bind {host!r} here: {exc}")
    for sock in sockets:
        sock.close()
    assert sockets
    assert asked == ([host] if resolved else [])
