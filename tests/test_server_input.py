"""Bad input and resource limits against a real server, driven by an independent anyio client."""

from __future__ import annotations

import ast
import asyncio
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import pytest

import sockrace.fastpath
import sockrace.protocol
import sockrace.server
import sockrace.serving
import sockrace.session
import sockrace.store
from helpers import LineClient, LoopErrors, ManualSweepers, MemoryLink, settle, wait_until
from sockrace import cli
from sockrace.cli import options as cli_options
from sockrace.cli import server as cli_server
from sockrace.protocol import DEFAULT_MAX_LINE, MAX_SLEEP_MS
from sockrace.server import Server, ServerConfig

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


@asynccontextmanager
async def serving(**options: object) -> AsyncIterator[Server]:
    async with Server(ServerConfig(port=0, **options)) as server:  # type: ignore[arg-type]
        yield server


@asynccontextmanager
async def client(server: Server) -> AsyncIterator[LineClient]:
    conn = await LineClient.connect(server.address)
    try:
        yield conn
    finally:
        await conn.aclose()


BAD_LINES = [
    pytest.param(b"x" * (DEFAULT_MAX_LINE + 1) + b"\n", b"ERR TOOLONG line longer than 65536 bytes\n",
                 id="over-long line"),
    pytest.param(b"ECHO caf\xc3\n", b"ERR BADLINE line is not valid UTF-8\n", id="invalid UTF-8"),
    pytest.param(b"\xff\xfe\n", b"ERR BADLINE line is not valid UTF-8\n", id="binary"),
    pytest.param(b"ECHO a\x00b\n", b"ERR BADLINE line contains control characters\n", id="NUL"),
    pytest.param(b"ECHO a\x1b[2Jb\n", b"ERR BADLINE line contains control characters\n", id="escape"),
    pytest.param(b"ECHO a\rb\n", b"ERR BADLINE line contains control characters\n", id="bare CR"),
    pytest.param(b"\n", b"ERR EMPTY empty request\n", id="empty line"),
    pytest.param(b"\r\n", b"ERR EMPTY empty request\n", id="empty CRLF line"),
    pytest.param(b"FLY away\n", b"ERR UNKNOWN unknown verb 'FLY'\n", id="unknown verb"),
    pytest.param(b"GET a b\n", b"ERR ARITY GET takes 1 argument\n", id="arity: too many"),
    pytest.param(b"SET k\n", b"ERR ARITY usage: SET <key> <value>\n", id="arity: too few"),
    pytest.param(b"PING  \n", b"ERR ARITY PING takes 0 arguments\n", id="arity: stray spaces"),
    pytest.param(b"INCR k ten\n", b"ERR NOTINT amount must be an integer, got 'ten'\n",
                 id="INCR non-numeric"),
    pytest.param(b"INCR k 1e3\n", b"ERR NOTINT amount must be an integer, got '1e3'\n", id="INCR float"),
    pytest.param(b"INCR k 99999999999999999999\n",
                 b"ERR RANGE amount must be between -9223372036854775808 and 9223372036854775807\n",
                 id="INCR beyond int64"),
    pytest.param(b"INCR k " + b"9" * 60_000 + b"\n", b"ERR NOTINT amount must be an integer, got '"
                 + b"9" * 40 + b"'\n", id="INCR 60000 digits"),
    pytest.param(b"SLEEP later x\n", b"ERR NOTINT ms must be an integer, got 'later'\n",
                 id="SLEEP non-numeric"),
    pytest.param(b"SLEEP -1 x\n", f"ERR RANGE ms must be between 0 and {MAX_SLEEP_MS}\n".encode(),
                 id="SLEEP negative"),
    pytest.param(f"SLEEP {MAX_SLEEP_MS + 1} x\n".encode(),
                 f"ERR RANGE ms must be between 0 and {MAX_SLEEP_MS}\n".encode(), id="SLEEP too long"),
    pytest.param(b"#bad/tag PING\n",
                 b"ERR BADTAG tag must be 1-32 letters, digits, '_', '.' or '-'\n", id="bad tag"),
]


@pytest.mark.parametrize(("line", "reply"), BAD_LINES)
async def test_bad_line_gets_one_error_and_the_connection_stays_usable(
    server: Server, line: bytes, reply: bytes
) -> None:
    errors = LoopErrors().install()
    async with client(server) as conn:
        assert await conn.request(b"PING\n") == b"OK PONG\n"
        assert await conn.request(line) == reply
        assert await conn.request(b"ECHO still here\n") == b"OK still here\n"
    errors.check()


async def test_over_long_line_trickled_in_small_writes_resynchronises(server: Server) -> None:
    async with client(server) as conn:
        await conn.send(b"ECHO ")
        for _ in range(200):  # 200 KiB, a kilobyte at a time: no newline for three line limits
            await conn.send(b"y" * 1024)
        await conn.send(b"\nPING\n")
        assert await conn.read_line() == b"ERR TOOLONG line longer than 65536 bytes\n"
        assert await conn.read_line() == b"OK PONG\n"


async def test_line_of_exactly_the_limit_is_accepted(server: Server) -> None:
    text = b"z" * (DEFAULT_MAX_LINE - len(b"ECHO "))
    async with client(server) as conn:
        assert await conn.request(b"ECHO " + text + b"\n") == b"OK " + text + b"\n"


async def test_unterminated_last_line_is_answered_at_eof(server: Server) -> None:
    """Documented: a final line without its newline is still a request once the client half-closes."""
    async with client(server) as conn:
        await conn.send(b"PING\nECHO tail")
        await conn.stream.send_eof()
        assert await conn.read_to_eof() == b"OK PONG\nOK tail\n"


async def test_int64_overflow_is_an_error_not_a_bignum(server: Server) -> None:
    async with client(server) as conn:
        assert await conn.request(b"INCR n 9223372036854775807\n") == b"OK 9223372036854775807\n"
        assert await conn.request(b"INCR n\n") == b"ERR RANGE increment would overflow a 64-bit integer\n"
        assert await conn.request(b"GET n\n") == b"OK 9223372036854775807\n"


async def test_quit_says_bye_then_closes_even_with_requests_pipelined_behind_it(server: Server) -> None:
    async with client(server) as conn:
        await conn.send(b"PING\nQUIT\n" + b"PING\n" * 200_000)  # 1 MB: most of it unread at QUIT
        assert await conn.read_to_eof() == b"OK PONG\nOK BYE\n"


# ----------------------------------------------------------------------------------- resource bounds


async def test_key_and_value_sizes_are_bounded() -> None:
    async with serving(max_key_bytes=8, max_value_bytes=16) as server, client(server) as conn:
        assert await conn.request(b"SET 12345678 " + b"v" * 16 + b"\n") == b"OK\n"
        assert await conn.request(b"SET 123456789 v\n") == b"ERR TOOBIG key longer than 8 bytes\n"
        assert await conn.request(b"SET k " + b"v" * 17 + b"\n") == b"ERR TOOBIG value longer than 16 bytes\n"
        # Sizes are bytes on the wire: four 2-byte characters fill an 8-byte key, five overflow it.
        assert await conn.request("SET \u00e9\u00e9\u00e9\u00e9 v\n".encode()) == b"OK\n"
        assert await conn.request("SET \u00e9\u00e9\u00e9\u00e9\u00e9 v\n".encode()) == (
            b"ERR TOOBIG key longer than 8 bytes\n"
        )
        assert await conn.request(b"INCR 123456789\n") == b"ERR TOOBIG key longer than 8 bytes\n"
        assert await conn.request(b"GET 123456789\n") == b"ERR NOKEY no such key '123456789'\n"


async def test_key_count_is_bounded_but_existing_keys_stay_writable() -> None:
    async with serving(max_keys=2) as server, client(server) as conn:
        assert await conn.request(b"SET a 1\n") == b"OK\n"
        assert await conn.request(b"INCR b\n") == b"OK 1\n"
        assert await conn.request(b"SET c 1\n") == b"ERR FULL the store already holds 2 keys\n"
        assert await conn.request(b"INCR c\n") == b"ERR FULL the store already holds 2 keys\n"
        assert await conn.request(b"SET a 2\n") == b"OK\n"
        assert await conn.request(b"INCR b\n") == b"OK 2\n"
        assert await conn.request(b"STATS\n") == (
            b"OK connections=1 total_connections=1 requests=7 errors=0 keys=2\n"
        )


async def test_connections_beyond_the_limit_get_one_busy_line_then_close() -> None:
    async with serving(max_connections=2) as server:
        first, second = await LineClient.connect(server.address), await LineClient.connect(server.address)
        assert await first.request(b"PING\n") == b"OK PONG\n"
        assert await second.request(b"PING\n") == b"OK PONG\n"
        async with client(server) as third:
            await third.send(b"PING\n")  # sent before the refusal arrives: must not turn it into a reset
            assert await third.read_to_eof() == b"ERR BUSY server is at its limit of 2 connections\n"
        await first.aclose()
        await wait_until(lambda: server.store.counters.connections == 1)
        async with client(server) as fourth:
            assert await fourth.request(b"PING\n") == b"OK PONG\n"
        await second.aclose()


# The idle timeout: sweeps at times the test chooses (ManualSweepers), over in-memory connections
# whose bytes reach the server within a few passes of the loop (settle()), so that nothing sleeps.
IDLE_TIMEOUT_S = 300.0
IDLE_GOODBYE = b"ERR IDLE no complete request in 300 s; closing\n"


async def idle_test_link() -> tuple[Server, MemoryLink]:
    server = Server(ServerConfig(idle_timeout_s=IDLE_TIMEOUT_S), sweeper=ManualSweepers())
    link = MemoryLink(server)
    await settle()
    return server, link


async def test_idle_connection_is_told_and_closed() -> None:
    server, link = await idle_test_link()
    now = asyncio.get_running_loop().time()
    server.sweep_idle(now + IDLE_TIMEOUT_S - 1)
    await settle()
    assert server.store.counters.connections == 1
    server.sweep_idle(now + IDLE_TIMEOUT_S)
    assert await link.connection.read_line() == IDLE_GOODBYE
    await link.close()
    assert server.store.counters.connections == 0


async def test_slowloris_trickling_one_line_is_closed_too() -> None:
    """Bytes without a newline are not activity: a line trickled a byte at a time cannot hold a connection."""
    server, link = await idle_test_link()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await anyio.sleep(0.01)  # a gap: a deadline moved by the trickle would lie past started + timeout
    for byte in b"ECHO never ends":
        link.client_writer.write(bytes([byte]))
        await settle()
    server.sweep_idle(started + IDLE_TIMEOUT_S)
    assert await link.connection.read_line() == IDLE_GOODBYE
    await link.close()


async def test_busy_connection_is_not_idle() -> None:
    server, link = await idle_test_link()
    loop = asyncio.get_running_loop()
    for index in range(5):
        link.client_writer.write(b"ECHO %d\n" % index)
        assert await link.connection.read_line() == b"OK %d\n" % index
        server.sweep_idle(loop.time() + IDLE_TIMEOUT_S - 1)  # idle for less than the timeout
        await settle()
        assert server.store.counters.connections == 1
    server.sweep_idle(loop.time() + IDLE_TIMEOUT_S)
    assert await link.connection.read_line() == IDLE_GOODBYE
    await link.close()


async def test_client_that_never_reads_its_replies_is_cut_off_after_the_idle_timeout() -> None:
    async with serving(idle_timeout_s=0.3) as server, client(server) as conn:
        assert await conn.request(b"SET big " + b"v" * 4096 + b"\n") == b"OK\n"

        async def flood() -> None:
            # Ends when the server cuts the connection (the send fails) or the test has seen it go.
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                while True:
                    await conn.send(b"GET big\n" * 1000)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(flood)
            await wait_until(lambda: server.store.counters.connections == 0)
            tasks.cancel_scope.cancel()
        assert server.store.counters.requests < 1_000_000


def test_cli_maps_every_limit_option_into_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ServerConfig] = []

    async def fake_serve(config: ServerConfig, announce: object) -> None:
        seen.append(config)

    monkeypatch.setattr(cli_server, "serve_until_signalled", fake_serve)
    code = cli.main(["server", "--max-keys", "5", "--max-key-size", "6", "--max-value-size", "7",
                     "--max-connections", "8", "--idle-timeout", "9.5", "--max-line", "100"])
    assert code == cli.EXIT_OK
    assert seen == [ServerConfig(port=cli_options.DEFAULT_PORT, max_keys=5, max_key_bytes=6,
                                 max_value_bytes=7, max_connections=8, idle_timeout_s=9.5, max_line=100)]


@pytest.mark.parametrize("option", ["--max-keys", "--max-key-size", "--max-value-size", "--max-connections"])
def test_cli_refuses_a_zero_limit(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["server", option, "0"]) == cli.EXIT_USAGE
    assert f"{option}: must be at least 1, got 0" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- security


def test_server_binds_loopback_unless_told() -> None:
    assert ServerConfig().host == "127.0.0.1"
    assert cli.build_parser().parse_args(["server"]).host == "127.0.0.1"


FORBIDDEN_CALLS = {"eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "globals"}
FORBIDDEN_MODULES = {"os", "subprocess", "shutil", "pathlib", "pickle", "marshal", "shelve", "importlib"}


@pytest.mark.parametrize("module", [sockrace.protocol, sockrace.fastpath, sockrace.store, sockrace.session,
                                    sockrace.serving, sockrace.server])
def test_nothing_from_the_wire_is_evaluated_or_used_as_a_path(module: object) -> None:
    """The modules that see wire data call nothing that evaluates text or opens files or processes."""
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    calls = {node.func.id for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    imports = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    imports |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)}
    assert not calls & FORBIDDEN_CALLS
    assert not imports & FORBIDDEN_MODULES


async def test_shell_and_path_lookalikes_are_plain_data(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with client(server) as conn:
        tricky = b"$(touch pwned) `id` %s %n {0} ${HOME}"
        assert await conn.request(b"ECHO " + tricky + b"\n") == b"OK " + tricky + b"\n"
        assert await conn.request(b"SET ../../pwned /etc/passwd\n") == b"OK\n"
        assert await conn.request(b"GET ../../pwned\n") == b"OK /etc/passwd\n"
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 - a tiny directory, after the I/O is done
