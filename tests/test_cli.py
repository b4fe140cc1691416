"""The command line, exercised the way a user runs it: `python -m sockrace` in a subprocess."""

from __future__ import annotations

import errno
import importlib.metadata
import io
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ServerProcess, free_port, sockrace_command
from sockrace import __version__
from sockrace import cli as sockrace_cli
from sockrace.cli import EXIT_BROKEN_PIPE, EXIT_CODES, EXIT_NETWORK, EXIT_OUTPUT, EXIT_USAGE, main

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent

VERDICT_KEYS = ("correct", "crossed", "corrupted", "errors", "lost")
VERDICT_COLUMNS = list(VERDICT_KEYS)
COMMANDS = ("compare", "server", "client", "counter", "check", "proxy")


def sockrace(
    *args: str, timeout: float = 30, open_files: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*sockrace_command(open_files=open_files), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


@pytest.fixture
def server_process() -> Iterator[ServerProcess]:
    with ServerProcess() as server:
        yield server


@pytest.fixture
def out_of_order_server() -> Iterator[ServerProcess]:
    with ServerProcess("--out-of-order", "--jitter", "2", "--seed", "3") as server:
        yield server


# ------------------------------------------------------------------ help and usage errors


def test_help_documents_commands_and_exit_codes() -> None:
    result = sockrace("--help")
    assert result.returncode == 0
    for word in (*COMMANDS, "exit codes", "could not write the results"):
        assert word in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_its_own_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sockrace {command} ")
    assert EXIT_CODES in out
    assert "--loop" in out


def test_an_option_is_described_the_same_in_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    main(["compare", "--help"])
    compare_help = capsys.readouterr().out
    main(["server", "--help"])
    server_help = capsys.readouterr().out
    for line in ("--delay MS            the server's latency before each reply, in ms",
                 "--jitter MS           plus a seeded random extra of up to this many ms"):
        assert line in compare_help
        assert line in server_help


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["client", "-c", "0"], "must be from 1 to 100000, got 0"),
        (["client", "--port", "http"], "expected a whole number, got 'http'"),
        (["server", "--delay", "-1"], "must be a finite number >= 0"),
        (["compare", "--modes", "unsafe,nope"], "unknown mode 'nope'"),
        (["client", "--mode", "nope"], "invalid choice: 'nope'"),
        ([], "required: COMMAND"),
        (["client", "--timeout", "0"], "must be more than 0 ms"),
        (["compare", "--timeout", "soon"], "expected a number, got 'soon'"),
        (["client", "--slow-ms", "60001"], "must be from 0 to 60000, got 60001"),
        (["counter", "--clients", "0"], "must be from 1 to 500, got 0"),
        (["counter", "-n", "x"], "expected a whole number, got 'x'"),
        (["server", "--out-of-order=yes"], "ignored explicit argument 'yes'"),
        # A stall timeout of 0 would count every request as never answered before any reply could come.
        (["client", "--stall-timeout", "0"], "argument --stall-timeout: must be more than 0 s"),
        (["compare", "--stall-timeout", "nan"], "argument --stall-timeout: must be a finite number >= 0"),
        (["compare", "--stall-timeout", "inf"], "argument --stall-timeout: must be a finite number >= 0"),
        (["server", "--idle-timeout", "4e10"], "argument --idle-timeout: must be at most 3.1536e+07 s"),
        (["server", "--idle-timeout", "1e300"], "argument --idle-timeout: must be at most 3.1536e+07 s"),
        (["server", "--idle-timeout", "nan"], "argument --idle-timeout: must be a finite number >= 0"),
        (["server", "--idle-timeout", "-1"], "argument --idle-timeout: must be a finite number >= 0"),
        (["server", "--jitter", "inf"], "argument --jitter: must be a finite number >= 0"),
        (["compare", "--delay", "NaN"], "argument --delay: must be a finite number >= 0"),
        (["client", "--timeout=-inf"], "argument --timeout: must be a finite number >= 0"),
        (["client", "-c", "100000", "-n", "11"],
         "sockrace: client: -c/--concurrency and -n/--requests: concurrency x requests must be at most "
         "1,000,000 in one run, got 100,000 x 11\n"),
        (["compare", "-c", "2", "-n", "1000000"], "concurrency x requests must be at most 1,000,000"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_the_longest_idle_timeout_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    # Parsed, then refused only by the port: a timeout of a year passes the command line.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["server", "--port", port, "--idle-timeout", "31536000"]) == EXIT_NETWORK
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err


# ------------------------------------------------------------------ compare


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


# ------------------------------------------------------------------ client


def test_client_against_a_server_process(server_process: ServerProcess) -> None:
    port = server_process.port
    locked = sockrace("client", "--port", port, "--mode", "locked", "--check", "-c", "20")
    assert locked.returncode == 0, locked.stderr
    assert "locked (shared connection): all 200 replies" in locked.stdout

    unsafe = sockrace("client", "--port", port, "--mode", "unsafe", "--check", "-c", "20")
    assert unsafe.returncode == 1
    assert "unsafe (shared connection): only " in unsafe.stdout

    assert server_process.finish(signal.SIGTERM) == 0
    assert server_process.stderr == ""
    assert server_process.stdout_lines[-1].startswith("sockrace server shutting down")


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


@pytest.mark.slow
def test_client_timeout_counts_timeouts_as_errors(server_process: ServerProcess) -> None:
    result = sockrace("client", "--port", server_process.port, "--mode", "multiplexed", "--timeout", "20",
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


@pytest.mark.parametrize("workload", [(), ("-c", "1000", "-n", "1000")], ids=["small", "a million requests"])
def test_client_without_server_is_a_one_line_error(workload: tuple[str, ...]) -> None:
    # Connected first, planned after: the size of the workload costs nothing when nobody answers.
    result = sockrace("client", "--port", str(free_port()), *workload, timeout=10)
    assert result.returncode == EXIT_NETWORK
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("sockrace: cannot connect to 127.0.0.1:")


# ------------------------------------------------------------------ counter


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
def test_counter_beyond_the_open_file_limit_is_one_line() -> None:
    result = sockrace("counter", "-n", "10", "--clients", "500", "--increments", "1", open_files=256)
    assert result.returncode == EXIT_NETWORK, result.stderr
    assert result.stdout == ""
    assert result.stderr == (
        "sockrace: cannot run the embedded server: Too many open files (500 clients and the server in "
        "this process need about 1000 file descriptors: raise `ulimit -n` or lower --clients)\n"
    )


# ------------------------------------------------------------------ server


def test_server_stops_cleanly_on_ctrl_c(server_process: ServerProcess) -> None:
    assert server_process.finish(signal.SIGINT) == 0
    assert server_process.stderr == ""
    assert "shutting down" in server_process.stdout_lines[-1]


def test_server_on_a_busy_port_is_a_one_line_error(server_process: ServerProcess) -> None:
    result = sockrace("server", "--port", server_process.port)
    assert result.returncode == EXIT_NETWORK
    assert len(result.stderr.splitlines()) == 1
    assert f"cannot listen on 127.0.0.1:{server_process.port}" in result.stderr


@pytest.mark.parametrize(
    ("host", "warning"),
    [
        ("0.0.0.0", "binding 0.0.0.0 exposes"),
        ("::", "binding :: exposes"),
        ("", "binding all interfaces exposes"),
        ("0", "binding 0 (0.0.0.0) exposes"),
        ("0x0", "binding 0x0 (0.0.0.0) exposes"),
        ("::0", "binding ::0 (::) exposes"),
        ("0:0:0:0:0:0:0:0", "binding 0:0:0:0:0:0:0:0 (::) exposes"),
    ],
)
def test_binding_every_interface_warns_however_it_is_spelled(host: str, warning: str) -> None:
    with ServerProcess("--host", host) as server:
        assert server.finish() == 0
    assert server.stderr == f"sockrace: warning: {warning} the server to the network\n"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_binding_one_interface_is_silent(host: str) -> None:
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with ServerProcess("--host", host) as server:
        assert server.finish() == 0
    assert server.stderr == ""


# ------------------------------------------------------------------ --version, the licence, the changelog


def _console_script() -> str:
    """The `sockrace` script pip installed beside this interpreter."""
    found = shutil.which("sockrace", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"no sockrace script beside {sys.executable}: install the project (pip install -e .)")
    return found


@pytest.mark.parametrize("entry", ["python -m sockrace", "sockrace"])
def test_version_is_one_line_on_stdout_and_exit_0(entry: str) -> None:
    command = sockrace_command() if entry == "python -m sockrace" else [_console_script()]
    result = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (
        0, f"sockrace {importlib.metadata.version('sockrace')}\n", "")
    assert re.fullmatch(r"sockrace \d+\.\d+\.\d+\n", result.stdout)


def test_version_comes_before_any_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version", "compare", "--modes", "nope"]) == 0  # nothing of the command runs
    assert capsys.readouterr() == (f"sockrace {__version__}\n", "")
    assert "--version" in sockrace_cli.build_parser().format_help()


def test_version_is_the_installed_distributions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "7.7.7" if name == "sockrace" else pytest.fail(name))
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == "sockrace 7.7.7\n"


def test_version_without_an_installed_distribution_is_the_packages_own(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    monkeypatch.setattr(sockrace_cli, "__version__", "9.9.9")  # the constant, as cli.py holds it
    assert sockrace_cli.version() == "9.9.9"
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == "sockrace 9.9.9\n"


def test_the_version_is_written_once_and_the_distribution_agrees() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sockrace.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    assert importlib.metadata.version("sockrace") == __version__, (
        "the installed sockrace is not this tree's version: reinstall it (pip install -e .)")


def test_importing_the_cli_does_not_look_the_version_up() -> None:
    # importlib.metadata costs a third of `import sockrace.cli`: only --version may import it.
    program = ("import sys, sockrace.cli\n"
               "print(sorted(m for m in sys.modules if m.startswith('importlib.metadata')))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30,
                            check=True)
    assert result.stdout == "[]\n"


def test_the_licence_is_the_mit_licence_pyproject_declares_and_ships() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the sockrace authors\n")
    assert "Permission is hereby granted, free of charge, to any person obtaining a copy" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert (project["license"], project["license-files"]) == ("MIT", ["LICENSE"])


def test_the_changelog_has_a_section_for_this_version_and_an_unreleased_one() -> None:
    headings = re.findall(r"^## \[([^]]+)\]", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"),
                          re.MULTILINE)
    assert headings[0] == "Unreleased"
    assert __version__ in headings


# ------------------------------------------------------------------ output errors


@pytest.mark.parametrize(
    "args",
    [
        ("compare", "-c", "5", "-n", "2", "--modes", "unsafe,locked"),
        ("compare", "-c", "5", "-n", "2", "--modes", "locked", "--json"),
        ("counter", "-n", "10", "--clients", "2", "--increments", "2"),
        ("server", "--port", "0"),  # its listening line cannot be written: it stops at once
        ("--version",),
    ],
    ids=["compare", "compare --json", "counter", "server", "--version"],
)
def test_a_full_disk_is_one_line_and_its_own_exit_code(args: tuple[str, ...]) -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run([*sockrace_command(), *args], stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=30, check=False)
    assert result.returncode == EXIT_OUTPUT
    assert result.stderr == "sockrace: cannot write the output: No space left on device\n"


@pytest.mark.parametrize("args", [("--version",),
                                  ("counter", "-n", "5", "--clients", "1", "--increments", "1")],
                         ids=["--version", "counter"])
def test_a_closed_stdout_is_one_line_and_its_own_exit_code(args: tuple[str, ...]) -> None:
    # The shell starts sockrace with descriptor 1 closed: Python's sys.stdout is then None, and
    # print() would drop the output without a word.
    result = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *sockrace_command(), *args],
                            stderr=subprocess.PIPE, text=True, timeout=30, check=False)
    assert result.returncode == EXIT_OUTPUT
    assert result.stderr == "sockrace: cannot write the output: the standard output is closed\n"


def test_client_output_to_a_full_disk(server_process: ServerProcess) -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run([*sockrace_command(), "client", "--port", server_process.port, "-c", "3"],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=30, check=False)
    assert result.returncode == EXIT_OUTPUT
    assert result.stderr == "sockrace: cannot write the output: No space left on device\n"


def test_output_reader_gone_is_quiet() -> None:
    process = subprocess.Popen([*sockrace_command(), "compare", "--modes", "unsafe,locked"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.close()  # like `| head` that has already quit: every write now fails with EPIPE
    _, err = process.communicate(timeout=30)
    assert process.returncode == EXIT_BROKEN_PIPE
    assert err == b""


def test_server_whose_reader_has_gone_stops_quietly() -> None:
    # `sockrace server --port 0 | head -1`, then SIGTERM: the shutdown line has nowhere to go.
    with ServerProcess() as server:
        assert server.process is not None
        assert server.process.stdout is not None
        server.process.stdout.close()
        assert server.finish(signal.SIGTERM) == EXIT_BROKEN_PIPE
    assert server.stderr == ""


def test_an_output_error_in_process_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class FullDisk(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sys, "stdout", FullDisk())
    assert main(["counter", "-n", "5", "--clients", "1", "--increments", "1"]) == EXIT_OUTPUT
    assert capsys.readouterr().err == "sockrace: cannot write the output: No space left on device\n"
