"""errors.py: one exception tree, and the client raising from it with the low-level cause kept."""

from __future__ import annotations

import asyncio

import pytest

from helpers import MemoryWriter, ScriptedPeer, one_step, settle
from sockrace.client import Locked, Multiplexed, Pipelined, Strategy
from sockrace.connection import SharedConnection
from sockrace.errors import ConnectionBrokenError, ConnectionBusyError, ConnectionClosedError, SockraceError
from sockrace.loop import LoopUnavailable
from sockrace.protocol import LineTooLong, ProtocolError


@pytest.mark.parametrize("error", [ConnectionBusyError, ConnectionClosedError, ConnectionBrokenError,
                                   ProtocolError, LineTooLong, LoopUnavailable])
def test_every_error_of_ours_is_a_sockrace_error(error: type[Exception]) -> None:
    assert issubclass(error, SockraceError)


def test_busy_is_also_the_runtime_error_asyncio_raises_for_the_same_misuse() -> None:
    assert issubclass(ConnectionBusyError, RuntimeError)


def test_closed_and_broken_are_not_the_os_errors_they_translate() -> None:
    # `except ConnectionError` must not catch ours by accident: a local close is not a peer's reset.
    for error in (ConnectionClosedError, ConnectionBrokenError):
        assert not issubclass(error, OSError)

LOST_BY_RESET = r"^connection lost: ConnectionResetError: \[Errno 104\] Connection reset by peer$"


def _connection(reader: asyncio.StreamReader) -> SharedConnection:
    return SharedConnection(reader, MemoryWriter(asyncio.StreamReader()), max_line=64)


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_the_peer_hanging_up_is_broken_with_the_incomplete_read_as_cause() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"OK half")
    reader.feed_eof()
    with pytest.raises(ConnectionBrokenError, match=r"^the server closed the connection$") as broken:
        await _connection(reader).read_line()
    assert isinstance(broken.value.__cause__, asyncio.IncompleteReadError)
    assert broken.value.__cause__.partial == b"OK half"


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_a_reset_is_broken_with_the_os_error_as_cause() -> None:
    reset = ConnectionResetError(104, "Connection reset by peer")
    for read in (SharedConnection.read_line, SharedConnection.read_lines):
        reader = asyncio.StreamReader()
        reader.set_exception(reset)
        with pytest.raises(ConnectionBrokenError, match=LOST_BY_RESET) as broken:
            await read(_connection(reader))
        assert broken.value.__cause__ is reset


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_an_over_long_reply_line_is_broken() -> None:
    reader = asyncio.StreamReader(limit=64)
    reader.feed_data(b"x" * 200 + b"\n")
    with pytest.raises(ConnectionBrokenError, match=r"^reply line over the limit") as broken:
        await _connection(reader).read_line()
    assert isinstance(broken.value.__cause__, asyncio.LimitOverrunError)


@pytest.mark.asyncio
@pytest.mark.timeout(5)
async def test_a_connection_closed_here_says_closed_not_broken() -> None:
    connection = _connection(asyncio.StreamReader())
    reading = asyncio.ensure_future(connection.read_line())
    await settle()
    connection.abort()
    connection.reader.feed_eof()  # what the transport does once it is closed
    with pytest.raises(ConnectionClosedError, match=r"^connection closed on this side$"):
        await reading
    with pytest.raises(ConnectionClosedError, match=r"^connection is closed$"):
        connection.write(b"PING\n")


@pytest.mark.asyncio
@pytest.mark.timeout(5)
@pytest.mark.parametrize("strategy_class", [Pipelined, Multiplexed])
async def test_a_reader_task_passes_the_peers_error_on_with_its_cause(strategy_class: type[Strategy]) -> None:
    peer = ScriptedPeer()
    strategy = strategy_class(peer.connection)
    waiting = asyncio.ensure_future(strategy.roundtrip(one_step(0, "a")))
    await settle()
    reset = ConnectionResetError(104, "Connection reset by peer")
    peer.opened[-1][0].set_exception(reset)
    with pytest.raises(ConnectionBrokenError, match=LOST_BY_RESET) as broken:
        await waiting
    assert broken.value.__cause__ is reset
    await strategy.aclose()


class _LostWriter(MemoryWriter):
    """A writer whose transport went away under it: drain() fails as asyncio's does."""

    async def drain(self) -> None:
        raise ConnectionResetError("Connection lost")


@pytest.mark.asyncio
@pytest.mark.timeout(5)
@pytest.mark.parametrize("strategy_class", [Locked, Pipelined])
async def test_a_drain_that_finds_the_connection_lost_is_broken(strategy_class: type[Strategy]) -> None:
    connection = SharedConnection(asyncio.StreamReader(), _LostWriter(asyncio.StreamReader()))
    strategy = strategy_class(connection)
    lost_on_drain = r"^connection lost: ConnectionResetError: Connection lost$"
    with pytest.raises(ConnectionBrokenError, match=lost_on_drain) as lost:
        await strategy.roundtrip(one_step(0, "a"))
    assert isinstance(lost.value.__cause__, ConnectionResetError)
    await strategy.aclose()
