"""The command line, exercised the way a user runs it: `python -m sockrace` in a subprocess."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from sockrace.cli import main

pytestmark = pytest.mark.timeout(60)

VERDICT_KEYS = ("correct", "crossed", "corrupted", "errors", "lost")
VERDICT_COLUMNS = list(VERDICT_KEYS)


def sockrace(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sockrace", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


class ServerProcess:
    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sockrace", "server", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        self.banner = self.process.stdout.readline().strip()
        assert self.banner.startswith("sockrace server listening on 127.0.0.1:"), self.banner
        self.port = self.banner.rsplit(":", 1)[1]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        self.process.send_signal(sig)
        out, err = self.process.communicate(timeout=15)
        return self.process.returncode, out, err


@pytest.fixture
def server_process() -> Iterator[ServerProcess]:
    server = ServerProcess()
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.communicate()


def test_help_documents_commands_and_exit_codes() -> None:
    result = sockrace("--help")
    assert result.returncode == 0
    for word in ("compare", "server", "client", "exit codes", "--check"):
        assert word in result.stdout


def test_compare_json_shows_the_race_and_the_fix() -> None:
    result = sockrace("compare", "--json", "-c", "30", "-n", "5", "--seed", "4")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    modes = {m["mode"]: m for m in document["modes"]}
    assert {"unsafe", "locked"} <= set(modes)
    for scenario in document["scenarios"]:
        workload = scenario["workload"]  # a scenario may cap the concurrency (timeouts does)
        assert workload["requests_per_coroutine"] == 5
        for entry in scenario["modes"]:
            total = workload["concurrency"] * 5
            assert sum(entry[k] for k in VERDICT_KEYS) == entry["requests"] == total
            assert entry["req_per_s"] > 0
    assert modes["locked"]["correct"] == 150
    # 30 coroutines start in one loop pass, so at least two meet on the reader before any reply exists.
    assert modes["unsafe"]["correct"] < 150
    workload = {"seed": 4, "concurrency": 30, "requests_per_coroutine": 5, "max_yields": 3}
    assert document["workload"] == workload


def test_compare_table_with_defaults() -> None:
    result = sockrace("compare", "--check")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[2].split()
    assert header == ["scenario", "mode", "requests", *VERDICT_COLUMNS, "dropped", "req/s"]
    assert "locked (shared connection): all 1000 replies reached the coroutine that sent the request." in (
        result.stdout
    )
    assert "unsafe (shared connection): only " in result.stdout


def test_client_against_a_server_process(server_process: ServerProcess) -> None:
    locked = sockrace("client", "--port", server_process.port, "--mode", "locked", "--check", "-c", "20")
    assert locked.returncode == 0, locked.stderr
    assert "locked (shared connection): all 200 replies" in locked.stdout

    unsafe = sockrace("client", "--port", server_process.port, "--mode", "unsafe", "--check", "-c", "20")
    assert unsafe.returncode == 1
    assert "unsafe (shared connection): only " in unsafe.stdout

    code, out, err = server_process.stop(signal.SIGTERM)
    assert code == 0
    assert err == ""
    assert out.strip().startswith("sockrace server shutting down")


def test_trace_is_one_line_per_request_in_plan_order(server_process: ServerProcess) -> None:
    port = server_process.port
    result = sockrace("client", "--port", port, "--mode", "locked", "--trace", "-c", "3", "-n", "2")
    assert result.returncode == 0, result.stderr
    trace = [line for line in result.stdout.splitlines() if line.startswith("c")]
    assert [line.split("\t")[0] for line in trace] == ["c0.0", "c0.1", "c1.0", "c1.1", "c2.0", "c2.1"]
    assert all(line.endswith("\tcorrect") for line in trace)


def test_trace_with_json_keeps_stdout_one_document(server_process: ServerProcess) -> None:
    result = sockrace("client", "--port", server_process.port, "--trace", "--json", "-c", "4", "-n", "2")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["modes"][0]["requests"] == 8
    assert len(result.stderr.splitlines()) == 8


def test_server_stops_cleanly_on_ctrl_c(server_process: ServerProcess) -> None:
    code, out, err = server_process.stop(signal.SIGINT)
    assert (code, err) == (0, "")
    assert "shutting down" in out


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_client_without_server_is_a_one_line_error() -> None:
    result = sockrace("client", "--port", str(_free_port()))
    assert result.returncode == 3
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("sockrace: cannot connect to 127.0.0.1:")


def test_server_on_a_busy_port_is_a_one_line_error(server_process: ServerProcess) -> None:
    result = sockrace("server", "--port", server_process.port)
    assert result.returncode == 3
    assert len(result.stderr.splitlines()) == 1
    assert f"cannot listen on 127.0.0.1:{server_process.port}" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["client", "-c", "0"], "must be from 1 to 100000, got 0"),
        (["client", "--port", "http"], "expected a whole number, got 'http'"),
        (["server", "--delay", "-1"], "must be a finite number >= 0"),
        (["compare", "--modes", "unsafe,nope"], "unknown mode 'nope'"),
        (["client", "--mode", "nope"], "invalid choice: 'nope'"),
        ([], "required: COMMAND"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_output_reader_gone_is_quiet() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "sockrace", "compare", "--modes", "unsafe,locked"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.close()  # like `| head` that has already quit: every write now fails with EPIPE
    _, err = process.communicate(timeout=30)
    assert process.returncode == 141
    assert err == b""
