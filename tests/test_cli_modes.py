"""The command line for the modes beyond the lock: counter, --timeout, server --out-of-order."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from test_cli import ServerProcess, sockrace

from sockrace.cli import main

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def in_order_server() -> Iterator[ServerProcess]:
    server = ServerProcess()
    yield server
    server.stop()


@pytest.fixture
def out_of_order_server() -> Iterator[ServerProcess]:
    server = ServerProcess("--out-of-order", "--jitter", "2", "--seed", "3")
    yield server
    server.stop()


@pytest.mark.slow
def test_counter_prints_1_and_10000_and_the_lost_server_updates() -> None:
    result = sockrace("counter", "--check")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "shared memory: 10000 coroutines each read the value, yield, add 1, yield, write it back"
    )
    assert lines[1].split() == ["without", "a", "lock:", "1", "(expected", "10000)"]
    assert lines[2].split() == ["with", "asyncio.Lock:", "10000"]
    assert lines[3] == "server INCR: 50 clients x 20 INCRs of one key, one connection each (expected 1000)"
    assert lines[4].startswith("  --unsafe-incr:")
    assert lines[5].split() == ["atomic", "INCR:", "1000"]


@pytest.mark.slow
def test_counter_json() -> None:
    result = sockrace("counter", "--json", "-n", "500", "--clients", "10", "--increments", "10")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["shared_memory"] == {
        "coroutines": 500, "expected": 500, "without_lock": 1, "with_lock": 500,
    }
    unsafe, atomic = document["server_incr"]["unsafe"], document["server_incr"]["atomic"]
    assert atomic == {"clients": 10, "increments": 10, "expected": 100, "final": 100, "lost": 0}
    assert unsafe["final"] + unsafe["lost"] == unsafe["expected"] == 100


@pytest.mark.slow
def test_compare_prints_the_new_column_scenarios_and_the_throughput_ratio() -> None:
    result = sockrace("compare", "-n", "3")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "scenario timeouts: 10 ms timeout per request" in out
    assert "multiplexed (timeouts): " in out
    assert "throughput, multiplexed / locked (shared connection, 100 coroutines on one connection): " in out
    rows = [line.split() for line in out.splitlines() if line.startswith("out-of-order server")]
    assert [row[2] for row in rows] == ["pipelined", "multiplexed"]


@pytest.mark.slow
def test_compare_json_carries_dropped_timeouts_and_the_ratio() -> None:
    result = sockrace("compare", "--json", "-c", "20", "-n", "3", "--modes", "locked,multiplexed")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [m["mode"] for m in document["modes"]] == ["locked", "multiplexed"]
    assert document["throughput_ratio"]["mode"] == "multiplexed"
    assert document["throughput_ratio"]["baseline"] == "locked"
    assert document["throughput_ratio"]["ratio"] > 0
    scenarios = {s["name"]: s for s in document["scenarios"]}
    timeouts = scenarios["timeouts"]
    assert timeouts["workload"]["concurrency"] == 10
    assert timeouts["workload"]["slow_every"] == 10
    for entry in timeouts["modes"]:
        assert entry["request_timeout_ms"] == 10
        assert {"dropped", "reopened"} <= set(entry)
    assert all(m["request_timeout_ms"] is None for m in document["modes"])


@pytest.mark.slow
def test_client_timeout_counts_timeouts_as_errors(in_order_server: ServerProcess) -> None:
    result = sockrace("client", "--port", in_order_server.port, "--mode", "multiplexed", "--timeout", "20",
                      "--slow-every", "4", "--slow-ms", "300", "-c", "2", "-n", "2", "--trace")
    assert result.returncode == 0, result.stderr
    trace = [line for line in result.stdout.splitlines() if line.startswith("c")]
    assert len(trace) == 4
    slow = [line for line in trace if "SLEEP 300" in line]
    assert len(slow) == 1
    assert slow[0].endswith("\terror (TimeoutError: no reply within 20 ms)")
    # The in-order server holds the others behind the SLEEP too: they time out or succeed, never cross.
    endings = ("\tcorrect", "\terror (TimeoutError: no reply within 20 ms)")
    assert all(line.endswith(endings) for line in trace)


@pytest.mark.slow
def test_pipelined_crosses_against_an_out_of_order_server_and_multiplexed_does_not(
    out_of_order_server: ServerProcess,
) -> None:
    port = out_of_order_server.port
    workload = ("--check", "-c", "50", "-n", "4")
    multiplexed = sockrace("client", "--port", port, "--mode", "multiplexed", *workload)
    assert multiplexed.returncode == 0, multiplexed.stdout + multiplexed.stderr
    pipelined = sockrace("client", "--port", port, "--mode", "pipelined", *workload)
    assert pipelined.returncode == 1
    assert "replies went to a coroutine that had not asked for them" in pipelined.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["client", "--timeout", "0"], "must be more than 0 ms"),
        (["compare", "--timeout", "soon"], "expected a number, got 'soon'"),
        (["client", "--slow-ms", "60001"], "must be from 0 to 60000, got 60001"),
        (["counter", "--clients", "0"], "must be from 1 to 500, got 0"),
        (["counter", "-n", "x"], "expected a whole number, got 'x'"),
        (["server", "--out-of-order=yes"], "ignored explicit argument 'yes'"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err
