"""`sockrace proxy` as a user runs it, in a process of its own: a fault log that cannot be written, the
open-file limit, --max-connections, and the warning for a wildcard address. (Forwarding, the log, the
signals and an absent upstream are in test_cli_check.py; the proxy itself in test_proxy.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import pytest

from helpers import SockraceProcess, ThreadedServer
from sockrace.check import proxy as proxy_module
from sockrace.cli import EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, main
from sockrace.cli import proxy as cli_proxy
from sockrace.server import Server

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

DEADLINE_S = 10.0  # every wait on a process or a socket here; each takes milliseconds when all is well


class ProxyProcess(SockraceProcess):
    """`python -m sockrace proxy ...` in a child process; `start()` returns once it listens."""

    def __init__(self, *options: str, open_files: int | None = None) -> None:
        super().__init__(["proxy", *options], open_files=open_files, finish_timeout_s=DEADLINE_S)


def ping(address: tuple[str, int]) -> bytes:
    """One PING through the proxy: the reply, or b"" when the proxy closed the connection first."""
    with socket.create_connection(address, timeout=DEADLINE_S) as connection:
        connection.sendall(b"PING\n")
        reply = b""
        while not reply.endswith(b"\n"):
            try:
                chunk = connection.recv(100)
            except ConnectionResetError:
                return b""
            if not chunk:
                return reply
            reply += chunk
        return reply


# ------------------------------------------------------------------ the command line


def test_the_default_max_connections_is_the_librarys() -> None:
    assert cli_proxy.DEFAULT_MAX_CONNECTIONS == proxy_module.DEFAULT_MAX_CONNECTIONS


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_bad_max_connections_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["proxy", "--upstream", "127.0.0.1:9", "--seed", "1", "--max-connections", value]
    assert main(arguments) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "sockrace proxy: error: argument --max-connections:" in err
    assert "Traceback" not in err


def test_help_names_the_limit_and_what_a_log_write_error_does(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy", "--help"]) == EXIT_OK
    out = " ".join(capsys.readouterr().out.split())
    assert "--max-connections N" in out
    assert "(default: 1024)" in out
    assert "the proxy stops and exits 4" in out


# ------------------------------------------------------------------ the fault log


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_log_that_cannot_be_written_stops_the_proxy_with_exit_4_and_one_line(
    threaded_server: ThreadedServer,
) -> None:
    # It used to print "Exception in callback Endpoint.connection_made" for every connection, forward
    # none, and exit 3 ("cannot listen") on SIGTERM.
    with ProxyProcess("--upstream", threaded_server.upstream, "--seed", "1", "--log", "/dev/full") as proxy:
        assert ping(proxy.address) == b""  # its "open" record failed: closed, not forwarded
        assert proxy.finish(sig=None) == EXIT_OUTPUT  # it stops by itself
    assert proxy.stderr == "sockrace: cannot write --log /dev/full: No space left on device\n"
    assert len(proxy.stdout_lines) == 1  # where it listened; no summary of a run whose log has a hole


# ------------------------------------------------------------------ --max-connections


def test_connections_past_max_connections_are_closed_at_once_logged_and_counted(
    threaded_server: ThreadedServer, tmp_path: Path,
) -> None:
    log = tmp_path / "faults.jsonl"
    with ProxyProcess("--upstream", threaded_server.upstream, "--seed", "1", "--max-connections", "1",
                      "--log", str(log)) as proxy, socket.create_connection(proxy.address) as held:
        held.sendall(b"PING\n")
        assert held.recv(100) == b"OK PONG\n"  # forwarded: the one connection allowed
        assert ping(proxy.address) == b""  # one too many
        assert proxy.finish() == EXIT_OK
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert proxy.stdout_lines[-1] == (
        "sockrace proxy stopped (1 connections open); connections served: 1; "
        f"closed at once, over the limit of 1: 1; fault log records: {len(records)}")
    over = [record for record in records if record["fault"] == "over_limit"]
    assert [(record["connection"], record["params"]["limit"]) for record in over] == [(1, 1)]
    assert proxy.stderr == ""


# ------------------------------------------------------------------ the open-file limit


async def flood(address: tuple[str, int], count: int) -> list[bytes]:
    """`count` clients at once, each sending PING and waiting for its reply, then closing."""

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection(*address)
        try:
            writer.write(b"PING\n")
            return await reader.readline()
        except ConnectionResetError:
            return b""
        finally:
            writer.close()

    async with asyncio.timeout(2 * DEADLINE_S):
        return await asyncio.gather(*(one() for _ in range(count)))


OPEN_FILES = 128  # a low `ulimit -n`: room for about 45 connections (2 descriptors each, less headroom)
FLOOD = 300  # connections at once: several times that, and more than the listening socket's backlog


@pytest.mark.slow
async def test_at_the_open_file_limit_the_proxy_waits_instead_of_failing(server: Server) -> None:
    # Under `ulimit -n 256`, 400 connects at once used to print hundreds of copies of asyncio's
    # "socket.accept() out of system resource" traceback, and connections went unanswered.
    host, port = server.address
    async with ProxyProcess("--upstream", f"{host}:{port}", "--seed", "1", open_files=OPEN_FILES) as proxy:
        replies = await flood(proxy.address, FLOOD)
        assert replies == [b"OK PONG\n"] * FLOOD  # each waited in the backlog for its turn
        assert await asyncio.to_thread(ping, proxy.address) == b"OK PONG\n"
    assert proxy.returncode == EXIT_OK
    assert proxy.stderr == ""
    served = int(proxy.stdout_lines[-1].split("connections served: ")[1].split(";")[0])
    assert served == FLOOD + 1


# ------------------------------------------------------------------ a wildcard address


@pytest.mark.parametrize(("host", "warning"), [("0.0.0.0", "binding 0.0.0.0 exposes"),
                                                ("0", "binding 0 (0.0.0.0) exposes")])
def test_listening_on_every_interface_warns_as_the_server_does(
    threaded_server: ThreadedServer, host: str, warning: str,
) -> None:
    options = ("--upstream", threaded_server.upstream, "--seed", "1", "--listen", f"{host}:0")
    with ProxyProcess(*options) as proxy:
        assert proxy.finish() == EXIT_OK
    assert proxy.stderr == f"sockrace: warning: {warning} the server to the network\n"


def test_listening_on_loopback_is_silent(threaded_server: ThreadedServer) -> None:
    with ProxyProcess("--upstream", threaded_server.upstream, "--seed", "1") as proxy:
        assert proxy.finish() == EXIT_OK
    assert proxy.stderr == ""
