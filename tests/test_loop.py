"""Event loop selection: asyncio by default, uvloop when installed, a clear error when it is not."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import sys

import pytest

from sockrace import loop as loops
from sockrace.cli import EXIT_OK, EXIT_USAGE, main

uvloop_missing = importlib.util.find_spec("uvloop") is None
needs_uvloop = pytest.mark.skipif(uvloop_missing, reason="uvloop is not installed (extra 'fast')")


async def loop_name() -> str:
    await asyncio.sleep(0)
    return loops.running_loop_name()


@pytest.fixture
def without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import uvloop` raise ImportError, installed or not.
    monkeypatch.setitem(sys.modules, "uvloop", None)


def test_asyncio_is_the_default_loop() -> None:
    assert loops.loop_factory("asyncio") is None
    assert loops.run(loop_name()) == "asyncio"


def test_unknown_loop_is_refused_before_anything_runs() -> None:
    coroutine = loop_name()
    with pytest.raises(ValueError, match=r"unknown event loop 'trio'; choose from asyncio, uvloop"):
        loops.run(coroutine, "trio")
    # Closed, so that it never warns about not being awaited.
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


@pytest.mark.usefixtures("without_uvloop")
def test_missing_uvloop_is_a_clear_error() -> None:
    coroutine = loop_name()
    with pytest.raises(loops.LoopUnavailable, match=r"uvloop is not installed; install it with: pip install"):
        loops.run(coroutine, "uvloop")
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


@pytest.mark.usefixtures("without_uvloop")
@pytest.mark.parametrize("command", [["compare", "-c", "2", "-n", "1"], ["client", "--port", "9"],
                                     ["server", "--port", "0"], ["counter", "-n", "10"]])
def test_cli_without_uvloop_exits_with_usage_error(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--loop", "uvloop"]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        "sockrace: --loop uvloop: uvloop is not installed; install it with: pip install 'sockrace[fast]'\n"
    )


def test_cli_refuses_an_unknown_loop(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--loop", "tokio"]) == EXIT_USAGE
    assert "invalid choice: 'tokio'" in capsys.readouterr().err


@needs_uvloop
def test_uvloop_runs_when_installed() -> None:
    assert loops.run(loop_name(), "uvloop") == "uvloop"


@needs_uvloop
@pytest.mark.timeout(30)
def test_compare_runs_on_uvloop(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", "-c", "5", "-n", "2", "--loop", "uvloop", "--json", "--modes", "locked"]
    assert main(argv) == EXIT_OK
    document = json.loads(capsys.readouterr().out)
    assert [m["correct"] for m in document["modes"]] == [10]


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_limited_recv_size_still_delivers_a_larger_message_whole() -> None:
    received = asyncio.get_running_loop().create_future()

    async def collect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loops.limit_recv_size(writer.transport, 1000)
        received.set_result((getattr(writer.transport, "max_size", None), await reader.readexactly(50_000)))
        writer.close()

    listener = await asyncio.start_server(collect, "127.0.0.1", 0)
    try:
        _, writer = await asyncio.open_connection(*listener.sockets[0].getsockname()[:2])
        message = bytes(range(256)) * 195 + b"x" * 80
        writer.write(message)
        await writer.drain()
        max_size, data = await received
        assert max_size == 1000
        assert data == message
        writer.close()
    finally:
        listener.close()
        await listener.wait_closed()


def test_limit_recv_size_leaves_a_transport_without_max_size_alone() -> None:
    class Unrelated:
        pass

    class OtherKind:
        max_size = "not a size"

    unrelated, other = Unrelated(), OtherKind()
    loops.limit_recv_size(unrelated, 1000)
    loops.limit_recv_size(other, 1000)
    assert not hasattr(unrelated, "max_size")
    assert other.max_size == "not a size"
