"""`sockrace check` and `sockrace proxy` as a user runs them: exit codes, one-line errors, real runs
of examples/sockrace_clients.py against a sockrace server through the proxy."""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from helpers import EXAMPLES, NAIVE, RECONNECTING, ThreadedServer, free_port, sockrace_command
from sockrace.check import runner
from sockrace.check.runner import CheckConfig, run_check
from sockrace.check.scenario import Call, Expect, Scenario, ScenarioError, ScenarioNotFound, load
from sockrace.cli import EXIT_CHECK_FAILED, EXIT_CODES, EXIT_NETWORK, EXIT_OK, EXIT_SCENARIO, EXIT_USAGE, main
from sockrace.cli import check as cli_check
from sockrace.cli import faults as cli_faults
from sockrace.cli import options as cli_options
from sockrace.cli import runs as cli_runs
from sockrace.server import Server, ServerConfig

pytestmark = pytest.mark.timeout(60)

# Every reply held 2 ms by the proxy: many calls are in flight at once on any machine. The run's
# deadline stays well inside the test's timeout, so that a client that hangs is reported, not killed.
HELD_REPLIES = ("--delay", "2-2", "--direction", "to_client", "--deadline", "20")

SCENARIOS = '''
import asyncio

def plain(address):
    return None

async def shape(address):
    return 42

async def raises(address):
    raise ValueError("no such table")

async def hangs(address):
    await asyncio.sleep(3600)

async def twice(address):
    yield (lambda i: asyncio.sleep(0, i)), (lambda i: i)
    yield 1

async def never(address):
    if False:
        yield

async def bad_expect(address):
    return (lambda i: asyncio.sleep(0, i)), (lambda i: 1 / 0)

async def echo(address):
    return (lambda i: asyncio.sleep(0, i)), (lambda i: i)

value = 3
'''


@pytest.fixture
def scenarios(tmp_path: Path) -> Path:
    path = tmp_path / "scenarios.py"
    path.write_text(SCENARIOS)
    return path


# ------------------------------------------------------------------ help and usage


@pytest.mark.parametrize("command", ["check", "proxy"])
def test_help_shows_the_options_and_the_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sockrace {command} ")
    assert EXIT_CODES in out
    assert "--upstream HOST:PORT" in out


def test_the_command_lines_copies_of_the_librarys_defaults_agree_with_it() -> None:
    from sockrace.check import faults

    hammer_module = importlib.import_module("sockrace.check.hammer")
    assert (cli_check.DEFAULT_TASKS, cli_check.DEFAULT_CALLS, cli_runs.DEFAULT_DEADLINE_S) == (
        hammer_module.DEFAULT_TASKS, hammer_module.DEFAULT_CALLS, hammer_module.DEFAULT_DEADLINE_S)
    assert cli_faults.DIRECTION_CHOICES == faults.DIRECTION_CHOICES
    assert cli_options.MAX_DELAY_MS == faults.MAX_DELAY_MS


def test_the_command_line_imports_sockrace_check_only_for_check_and_proxy() -> None:
    code = "import sys, sockrace.cli; sys.exit(any(m.startswith('sockrace.check') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=30).returncode == 0


def test_check_help_documents_both_shapes_of_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    main(["check", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "async function returning (call, expect)" in out
    assert "async generator yielding (call, expect) once" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "x.py:f"], "the following arguments are required: --upstream"),
        (["check", "x.py:f", "--upstream", "localhost"], "expected HOST:PORT"),
        (["check", "x.py:f", "--upstream", "h:70000"], "expected HOST:PORT with a port from 1 to 65535"),
        (["check", "x.py:f", "--upstream", "h:1", "--timeout", "0-5"], "LO above 0"),
        (["check", "x.py:f", "--upstream", "h:1", "--timeout", "soon"], "expected LO-HI in ms"),
        (["check", "x.py:f", "--upstream", "h:1", "--delay", "5-1"], "0 <= LO <= HI"),
        (["check", "x.py:f", "--upstream", "h:1", "--split", "2"], "expected a share from 0 to 1"),
        (["check", "x.py:f", "--upstream", "h:1", "--tasks", "0"], "must be from 1 to 10000"),
        (["check", "x.py:f", "--upstream", "h:1", "--deadline", "0"], "must be more than 0 s"),
        (["check", "x.py:f", "--upstream", "h:0"], "expected HOST:PORT with a port from 1 to 65535"),
        (["check", "x.py:f", "--upstream", "h:1", "--tasks", "10000", "--calls", "1000"],
         "sockrace: check: tasks x calls must be at most 1,000,000, got 10,000 x 1,000\n"),
        (["proxy", "--upstream", "h:1"], "the following arguments are required: --seed"),
        (["proxy", "--upstream", "h:1", "--seed", "1", "--reset", "-1"], "expected a share from 0 to 1"),
        (["proxy", "--upstream", "h:1", "--seed", "1", "--direction", "up"], "invalid choice: 'up'"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


# ------------------------------------------------------------------ the user's scenario gone wrong


@pytest.mark.parametrize(
    ("name", "code", "message"),
    [
        ("missing.py:f", EXIT_USAGE, "no such file"),
        ("{file}:nothing", EXIT_USAGE, "has no function nothing"),
        ("{file}:plain", EXIT_USAGE, "plain is a plain function, not an async function"),
        ("{file}:value", EXIT_USAGE, "value is int 3, not an async function"),
        ("no_such_module_here:f", EXIT_USAGE, "no module named no_such_module_here"),
        ("{file}", EXIT_USAGE, "expected FILE.py:FUNC or module:FUNC"),
        ("{file}:shape", EXIT_SCENARIO, "shape returned 42, not (call, expect)"),
        ("{file}:raises", EXIT_SCENARIO, "raises raised ValueError: no such table in its set-up"),
        ("{file}:twice", EXIT_SCENARIO, "twice yielded more than once"),
        ("{file}:never", EXIT_SCENARIO, "never ended without yielding (call, expect)"),
        ("{file}:bad_expect", EXIT_SCENARIO, "expect(0) raised ZeroDivisionError: division by zero"),
    ],
)
def test_a_scenario_gone_wrong_is_one_line(
    threaded_server: ThreadedServer, scenarios: Path, tmp_path: Path, name: str, code: int, message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scenario = name.format(file=scenarios).replace("missing.py", str(tmp_path / "missing.py"))
    assert main(["check", scenario, "--upstream", threaded_server.upstream]) == code
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert err.startswith("sockrace: ")


def test_a_scenario_that_fails_to_import_is_its_own_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_dependency_here\n")
    loading = r"loading .*broken.py raised ModuleNotFoundError: No module named"
    with pytest.raises(ScenarioError, match=loading):
        load(f"{broken}:f")
    with pytest.raises(ScenarioNotFound, match="has no function f"):
        load(f"{EXAMPLES}:f")


def test_debug_shows_the_scenarios_traceback(
    threaded_server: ThreadedServer, scenarios: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["check", f"{scenarios}:raises", "--upstream", threaded_server.upstream, "--debug"]
    assert main(args) == EXIT_SCENARIO
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert 'raise ValueError("no such table")' in err
    assert err.endswith(f"{scenarios}:raises raised ValueError: no such table in its set-up\n")


def test_a_scenario_that_hangs_is_ended_by_the_deadline(
    threaded_server: ThreadedServer, scenarios: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["check", f"{scenarios}:hangs", "--upstream", threaded_server.upstream, "--deadline", "0.2"]
    before = set(threading.enumerate())
    assert main(args) == EXIT_SCENARIO
    assert "hangs did not finish its set-up within 0.2 s" in capsys.readouterr().err
    assert set(threading.enumerate()) <= before  # nothing of the run is left running


def test_calls_that_hang_while_the_server_owes_nothing_are_stuck_and_fail_the_check(
    threaded_server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The calls wait on nothing the server owes (as callers whose replies another call took): the
    # client is stuck, a failure of the client, found long before --deadline.
    stuck = tmp_path / "stuck.py"
    stuck.write_text(textwrap.dedent("""
        import asyncio
        async def stuck(address):
            async def call(i):
                await asyncio.sleep(3600)
            return call, str
    """))
    args = ["check", f"{stuck}:stuck", "--upstream", threaded_server.upstream, "--deadline", "20",
            "--tasks", "2", "--calls", "2", "--timeout", "none"]
    assert main(args) == EXIT_CHECK_FAILED
    captured = capsys.readouterr()
    assert "was stuck: it started " in captured.out
    assert "when no byte had moved and the server owed no reply for 250 ms" in captured.out
    assert captured.err == ""


def test_a_slow_server_is_waited_for_until_the_deadline_which_is_the_scenarios_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The server owes every reply for longer than the run may last: nobody is stuck, the run is cut
    # by --deadline (exit 5, as a scenario that could not be judged in time).
    with ThreadedServer() as slow:
        slow_client = tmp_path / "slow_client.py"
        slow_client.write_text(textwrap.dedent("""
            import asyncio
            async def slow_client(address):
                reader, writer = await asyncio.open_connection(*address)
                lock = asyncio.Lock()
                async def call(i):
                    async with lock:
                        writer.write(b"SLEEP 5000 x\\n")
                        await writer.drain()
                        return (await reader.readline()).decode().strip()
                try:
                    yield call, (lambda i: "OK x")
                finally:
                    writer.close()
        """))
        args = ["check", f"{slow_client}:slow_client", "--upstream", slow.upstream, "--deadline", "1.5",
                "--tasks", "2", "--calls", "1", "--timeout", "none"]
        assert main(args) == EXIT_SCENARIO
    captured = capsys.readouterr()
    assert captured.err.endswith(
        "sockrace: the run did not finish within --deadline 1.5 s: 2 calls unfinished\n")
    assert ") was stuck: it started" not in captured.out
    assert "slow_client: no call crossed, none returned a wrong value, none was stuck: 0 of 2 correct; " \
        "2 unfinished." in captured.out


def test_a_run_whose_calls_stop_finishing_is_stuck_in_well_under_a_second(
    threaded_server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The first call returns, every later one waits for ever (as a call whose reply another call
    # took): stuck at the wire's quiet bound, long before --deadline, and a failure of the client.
    stalls = tmp_path / "stalls.py"
    stalls.write_text(textwrap.dedent("""
        import asyncio
        async def stalls(address):
            async def call(i):
                if i:
                    await asyncio.sleep(3600)
                return str(i)
            return call, str
    """))
    args = ["check", f"{stalls}:stalls", "--upstream", threaded_server.upstream, "--deadline", "20",
            "--tasks", "1", "--calls", "3", "--timeout", "none", "--json"]
    assert main(args) == EXIT_CHECK_FAILED
    document = json.loads(capsys.readouterr().out)
    assert document["counts"]["stuck"] == 1
    assert document["counts"]["correct"] == 1
    assert document["counts"]["unfinished"] == 1
    assert document["verdict"] == "stuck"
    assert document["stuck_after_s"] == 0.25  # the wire's quiet bound, not a second
    assert document["elapsed_s"] < 10  # half the run's --deadline: the stuck bound ended it


def test_calls_that_ignore_cancellation_are_abandoned_not_waited_for(
    threaded_server: ThreadedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # sockrace.check.hammer is the function there; the module holds the constant the run reads.
    monkeypatch.setattr(importlib.import_module("sockrace.check.hammer"), "CANCEL_GRACE_S", 0.1)
    monkeypatch.setattr(cli_runs, "LEFTOVER_GRACE_S", 0.1)
    stubborn = tmp_path / "stubborn.py"
    stubborn.write_text(textwrap.dedent("""
        import asyncio
        async def stubborn(address):
            async def call(i):
                while True:
                    try:
                        await asyncio.sleep(1)
                    except asyncio.CancelledError:
                        pass
            return call, str
    """))
    args = ["check", f"{stubborn}:stubborn", "--upstream", threaded_server.upstream, "--deadline", "0.2",
            "--tasks", "2", "--calls", "1"]
    assert main(args) == EXIT_SCENARIO
    captured = capsys.readouterr()
    assert "2 calls ignored cancellation and were still running (first: call 0)." in captured.out
    assert captured.err == ("sockrace: 2 tasks of the scenario ignored cancellation for 0.1 s and were "
                            "abandoned\nsockrace: the run did not finish within --deadline 0.2 s: "
                            "2 calls unfinished\n")


def test_a_refused_upstream_is_one_line_and_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["check", NAIVE, "--upstream", f"127.0.0.1:{port}"]) == EXIT_NETWORK
    assert capsys.readouterr().err == (f"sockrace: cannot connect to 127.0.0.1:{port}: Connection refused "
                                       "(is the server running there?)\n")


def test_an_upstream_that_stops_during_the_run_is_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with ThreadedServer() as stopping:

        async def stops(address: tuple[str, int]) -> tuple[Call, Expect]:
            async def call(i: int) -> object:
                if i == 1:
                    stopping.stop()  # the server goes away after the first call
                reader, writer = await asyncio.open_connection(*address)
                try:
                    writer.write(f"ECHO {i}\n".encode())
                    line = await reader.readline()
                finally:
                    writer.close()
                    await writer.wait_closed()
                if not line:
                    raise ConnectionError("closed without a reply")
                return line.decode().strip()

            return call, lambda i: f"OK {i}"

        monkeypatch.setattr(runner, "load", lambda name: Scenario(name, stops))
        args = ["check", "stops:stops", "--upstream", stopping.upstream, "--tasks", "1", "--calls", "4",
                "--timeout", "none"]
        assert main(args) == EXIT_NETWORK
    captured = capsys.readouterr()
    assert "stops: no call crossed, none returned a wrong value, none was stuck: 1 of 4 correct; 3 raised " \
        "errors (first: ConnectionError: closed without a reply)." in captured.out
    assert captured.err == (f"sockrace: the upstream {stopping.upstream} refused 3 of the proxy's "
                            "connections during the run (Connection refused): did it stop?\n")


# ------------------------------------------------------------------ real runs


def test_the_naive_client_crosses_and_the_output_says_how_to_replay(
    threaded_server: ThreadedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["check", NAIVE, "--upstream", threaded_server.upstream, "--tasks", "4", "--calls", "5",
            "--seed", "3", "--timeout", "none", *HELD_REPLIES]
    assert main(args) == EXIT_CHECK_FAILED
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"sockrace check {NAIVE}: 4 tasks x 5 calls, seed 3, through a proxy on ")
    assert out[0].endswith(f"to {threaded_server.upstream} (faults: delay 2-2 ms, to_client only)")
    assert out[2].split() == ["client", "tasks", "calls", "correct", "crossed", "wrong", "stuck", "errors",
                              "timeouts", "cancelled", "unfinished", "calls/s"]
    assert out[4].split()[:3] == ["naive", "4", "20"]
    first = r"naive: \d+ of 20 calls returned another call's value, the first \d+\.\d ms into the run; "
    assert re.match(first, out[6])
    explanation = next(line for line in out if line.startswith("call "))
    assert " was returned to call " in explanation
    replay = out[-1]
    assert replay == ("replay: sockrace check " + shlex.quote(NAIVE)
                      + f" --upstream {threaded_server.upstream} --tasks 4 --calls 5 --timeout none "
                      "--delay 2-2 --direction to_client --seed 3 --deadline 20")
    assert main(shlex.split(replay)[2:]) == EXIT_CHECK_FAILED  # the replay crosses too


def test_the_reconnecting_client_never_crosses(
    threaded_server: ThreadedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    for seed in range(3):
        args = ["check", RECONNECTING, "--upstream", threaded_server.upstream, "--tasks", "4", "--calls", "5",
                "--seed", str(seed), "--timeout", "1-4", *HELD_REPLIES]
        assert main(args) == EXIT_OK
        out = capsys.readouterr().out
        assert "no call returned another call's value" in out
        assert " crossed " not in out.split("\n\n")[-2]


def test_json_is_one_document_with_the_counts_and_the_replay(
    threaded_server: ThreadedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["check", NAIVE, "--upstream", threaded_server.upstream, "--tasks", "3", "--calls", "4", "--json",
            "--timeline", "--timeout", "none", *HELD_REPLIES]
    assert main(args) == EXIT_CHECK_FAILED
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["ok"] is False
    assert document["counts"]["crossed"] > 0
    assert document["verdict"] == "crossed"
    assert sum(document["counts"].values()) == 12
    assert document["replay"].startswith("sockrace check ")
    assert " was returned to call " in document["explanation"]
    assert "t0.0" in captured.err  # the timeline went to stderr


def test_html_report(
    threaded_server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "check.html"
    args = ["check", NAIVE, "--upstream", threaded_server.upstream, "--tasks", "3", "--calls", "4",
            "--html", str(page), "--timeout", "none", *HELD_REPLIES]
    assert main(args) == EXIT_CHECK_FAILED
    text = page.read_text()
    assert 'data-verdict="crossed"' in text
    assert "replay: sockrace check" not in text  # the command is shown on its own, not as a log line
    assert "--tasks 3 --calls 4 --timeout none" in text  # the replay command
    assert "throughput" not in text.lower()
    assert "coroutines x" not in text  # compare's words (asyncio's own messages may say coroutine)
    assert f"wrote the HTML report to {page}" in capsys.readouterr().err
    assert main([*args[:-8], "--html", str(tmp_path / "no" / "dir.html")]) == EXIT_USAGE


@pytest.mark.anyio
async def test_run_check_from_python(anyio_backend: str) -> None:
    async with Server(ServerConfig(port=0)) as running:
        config = CheckConfig(RECONNECTING, running.address, tasks=2, calls=3, timeout_ms=None, seed=1)
        run = await run_check(config)
    assert (run.result.correct, run.result.ok, run.upstream_failed) == (6, True, False)
    assert run.connections >= 2  # the keys' connection and the client's


# ------------------------------------------------------------------ sockrace proxy


def _start_proxy(upstream: str, *options: str) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    process = subprocess.Popen([*sockrace_command(), "proxy", "--upstream", upstream, *options],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("sockrace proxy listening on 127.0.0.1:"), line
    host, _, port = line.split()[4].rstrip(",").rpartition(":")
    return process, (host, int(port))


def _echo_through(address: tuple[str, int], text: str) -> bytes:
    with socket.create_connection(address, timeout=10) as connection:
        connection.sendall(f"ECHO {text}\n".encode())
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = connection.recv(100)
            assert chunk, "closed before the reply"
            reply += chunk
        return reply


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_proxy_forwards_logs_and_stops_cleanly(
    threaded_server: ThreadedServer, tmp_path: Path, stop: int
) -> None:
    log = tmp_path / "faults.jsonl"
    process, address = _start_proxy(threaded_server.upstream, "--seed", "5", "--split", "--log", str(log))
    try:
        assert _echo_through(address, "hello there") == b"OK hello there\n"
    finally:
        process.send_signal(stop)
        out, err = process.communicate(timeout=10)
    assert process.returncode == EXIT_OK
    assert "sockrace proxy stopped" in out
    assert "Traceback" not in err
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"open", "split", "close"} <= {record["fault"] for record in records}


def test_proxy_with_an_unwritable_log_is_one_line(threaded_server: ThreadedServer, tmp_path: Path) -> None:
    result = subprocess.run([*sockrace_command(), "proxy", "--upstream", threaded_server.upstream,
                             "--seed", "1", "--log", str(tmp_path / "no" / "log")],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == EXIT_USAGE
    assert result.stderr == f"sockrace: cannot write --log {tmp_path / 'no' / 'log'}: no such directory\n"


def test_proxy_warns_when_the_upstream_is_not_there_yet() -> None:
    port = free_port()
    process, address = _start_proxy(f"127.0.0.1:{port}", "--seed", "1")
    try:
        with socket.create_connection(address, timeout=10) as connection:
            assert connection.recv(100) == b""  # refused upstream: the client is closed at once
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
    assert process.returncode == EXIT_OK
    assert f"warning: cannot connect to 127.0.0.1:{port}: Connection refused" in err


def test_faults_begin_with_the_first_call_unless_asked_for_in_the_set_up(
    threaded_server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The set-up makes 20 round trips through the proxy, every reply held 100 ms by --delay: at least
    # 2 s when the faults apply to it, milliseconds when they begin with the first call.
    took = tmp_path / "setup.took"
    loads = tmp_path / "loads.py"
    loads.write_text(textwrap.dedent(f"""
        import asyncio, time
        async def loads(address):
            reader, writer = await asyncio.open_connection(*address)
            began = time.monotonic()
            for i in range(20):
                writer.write(b"SET k%d v%d\\n" % (i, i))
                await reader.readline()
            with open({str(took)!r}, "w") as out:
                out.write(str(time.monotonic() - began))
            try:
                yield (lambda i: asyncio.sleep(0, i)), (lambda i: i)
            finally:
                writer.close()
    """))
    args = ["check", f"{loads}:loads", "--upstream", threaded_server.upstream, "--tasks", "1", "--calls", "1",
            "--delay", "100-100", "--direction", "to_client"]
    assert main(args) == EXIT_OK
    assert float(took.read_text()) < 1.0
    assert main([*args, "--faults-in-setup"]) == EXIT_OK
    assert float(took.read_text()) >= 2.0
    assert capsys.readouterr().out.rstrip().endswith("--seed 0 --faults-in-setup")
