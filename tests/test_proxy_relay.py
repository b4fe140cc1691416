"""The relay of a direction without faults (Endpoint.relay_to), on real sockets: what it forwards, what it
tells the flow, and how it ends when the destination is gone."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from sockrace.check.endpoint import Arrivals, Buffers, End, Endpoint

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

DEADLINE_S = 5.0


@dataclass
class Pair:
    """A relay from `source` to `destination`: bytes sent on `into` arrive at `source`; what
    `destination` writes comes out of `out`."""

    source: Endpoint
    destination: Endpoint
    into: socket.socket
    out: socket.socket


@pytest.fixture
async def pair(anyio_backend: str) -> AsyncIterator[Pair]:
    loop = asyncio.get_running_loop()
    into, source_socket = socket.socketpair()
    destination_socket, out = socket.socketpair()
    arrivals, buffers = Arrivals(), Buffers()

    def endpoint() -> Endpoint:
        return Endpoint(arrivals=arrivals, buffers=buffers)

    _, source = await loop.connect_accepted_socket(endpoint, source_socket)
    _, destination = await loop.connect_accepted_socket(endpoint, destination_socket)
    for raw in (into, out):
        raw.setblocking(False)
    yield Pair(source, destination, into, out)
    for end in (source, destination):
        end.abort()
    into.close()
    out.close()


async def received(sock: socket.socket, count: int) -> bytes:
    loop, data = asyncio.get_running_loop(), b""
    async with asyncio.timeout(DEADLINE_S):
        while len(data) < count:
            more = await loop.sock_recv(sock, 65536)
            if not more:
                break
            data += more
    return data


async def test_a_relay_forwards_every_read_and_tells_each_write(pair: Pair) -> None:
    told: list[bytes] = []
    end = pair.source.relay_to(pair.destination, told.append)
    for index in range(3):
        message = b"line %d\n" % index
        pair.into.send(message)
        assert await received(pair.out, len(message)) == message
    assert told == [b"line 0\n", b"line 1\n", b"line 2\n"]
    assert all(type(data) is bytes for data in told)  # a copy, not a view of the reused buffer
    assert pair.source.last_in == 3
    assert not end.done()


async def test_a_relay_to_a_closing_destination_ends_and_writes_nothing(pair: Pair) -> None:
    told: list[bytes] = []
    end = pair.source.relay_to(pair.destination, told.append)
    pair.destination.close()  # closing: connection_lost not called yet
    pair.into.send(b"too late\n")
    async with asyncio.timeout(DEADLINE_S):
        assert await end is End.DESTINATION_LOST
    assert told == []
    assert await received(pair.out, 1) == b""  # the FIN of the close, nothing before it


async def test_a_relay_to_a_lost_destination_ends_and_writes_nothing(pair: Pair) -> None:
    told: list[bytes] = []
    end = pair.source.relay_to(pair.destination, told.append)
    pair.destination.abort()
    async with asyncio.timeout(DEADLINE_S):
        await pair.destination.closed
    pair.into.send(b"too late\n")
    async with asyncio.timeout(DEADLINE_S):
        assert await end is End.DESTINATION_LOST
    assert told == []


async def test_a_relay_ends_with_the_source_eof(pair: Pair) -> None:
    end = pair.source.relay_to(pair.destination, lambda data: None)
    pair.into.send(b"last\n")
    pair.into.shutdown(socket.SHUT_WR)
    async with asyncio.timeout(DEADLINE_S):
        assert await end is End.EOF
    assert await received(pair.out, 5) == b"last\n"
