"""The scenario is a guest: nothing its code raises or does may end a check as if it had passed.

Whatever it raises (SystemExit, KeyboardInterrupt, GeneratorExit, a BaseException of its own) in its
module, set-up, a call or clean-up ends `sockrace check` with exit 5 and one line naming what and
where; a step that swallows its cancellation is abandoned; a guest holding the event loop is ended
by the watchdog; a real Ctrl-C stays 130. The watchdog and Ctrl-C tests run `sockrace check` in a
process of its own (the watchdog ends the process it runs in).
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from helpers import ThreadedServer, sockrace_command
from sockrace.check.hammer import HammerError
from sockrace.check.runner import CheckConfig, run_check
from sockrace.check.scenario import ScenarioError
from sockrace.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_SCENARIO, main
from sockrace.cli.runs import WATCHDOG_GRACE_S

pytestmark = pytest.mark.timeout(60)

RAISED = {
    "sys.exit(0)": "SystemExit: 0",
    "raise SystemExit(3)": "SystemExit: 3",
    "raise KeyboardInterrupt": "KeyboardInterrupt",
    "raise GeneratorExit": "GeneratorExit",
    "raise Aborted('stop here')": "Aborted: stop here",
}

GUEST = '''
import asyncio
import sys

class Aborted(BaseException):
    pass

def fails():
    {raise_it}

async def in_setup(address):
    fails()

async def in_call(address):
    async def call(i):
        await asyncio.sleep(0)
        fails()
    return call, str

async def in_cleanup(address):
    try:
        yield (lambda i: asyncio.sleep(0, str(i))), str
    finally:
        fails()

async def in_a_task_of_its_own(address):
    async def background():
        await asyncio.sleep(0.01)
        fails()
    task = asyncio.ensure_future(background())
    async def call(i):
        await asyncio.sleep(0.02)
        return str(i)
    return call, str
'''


def write(tmp_path: Path, source: str, name: str = "guest.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def check(scenario: str, upstream: str, *options: str) -> list[str]:
    return ["check", scenario, "--upstream", upstream, "--tasks", "2", "--calls", "2", *options]


@pytest.mark.parametrize("raise_it", list(RAISED))
@pytest.mark.parametrize(("function", "where"), [
    ("in_setup", r"scenario \S+:in_setup raised {raised} in its set-up"),
    ("in_call", r"scenario \S+:in_call: call \d raised {raised}, which would end the program: a call must "
                r"return a value or raise an Exception"),
    ("in_cleanup", r"scenario \S+:in_cleanup raised {raised} in its clean-up"),
    ("in_a_task_of_its_own", r"a task the scenario started raised {raised}, which would end the program"),
])
def test_whatever_the_guest_raises_is_exit_5_and_one_line_naming_it(
    threaded_server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    raise_it: str, function: str, where: str,
) -> None:
    guest = write(tmp_path, GUEST.replace("{raise_it}", raise_it))
    code = main(check(f"{guest}:{function}", threaded_server.upstream))
    err = capsys.readouterr().err
    assert code == EXIT_SCENARIO, err
    assert re.fullmatch(f"sockrace: {where.format(raised=re.escape(RAISED[raise_it]))}\n", err), err


@pytest.mark.parametrize("raise_it", list(RAISED))
def test_a_module_that_raises_on_import_is_exit_5(
    threaded_server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], raise_it: str,
) -> None:
    source = f"import sys\nclass Aborted(BaseException):\n    pass\n{raise_it}\n"
    guest = write(tmp_path, source, "on_import.py")
    assert main(check(f"{guest}:f", threaded_server.upstream)) == EXIT_SCENARIO
    err = capsys.readouterr().err
    assert err == f"sockrace: scenario {guest}:f: loading {guest} raised {RAISED[raise_it]}\n"


SWALLOWS = '''
import asyncio

async def forever():
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass

async def setup_swallows(address):
    await forever()

async def cleanup_swallows(address):
    try:
        yield (lambda i: asyncio.sleep(0, str(i))), str
    finally:
        await forever()
'''


@pytest.mark.parametrize(("function", "step"), [("setup_swallows", "set-up"),
                                                 ("cleanup_swallows", "clean-up")])
def test_a_step_that_swallows_its_cancellation_is_abandoned_soon_after_the_deadline(
    threaded_server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    harmless_watchdog: list[str], function: str, step: str,
) -> None:
    guest = write(tmp_path, SWALLOWS)
    started = time.monotonic()
    code = main(check(f"{guest}:{function}", threaded_server.upstream, "--deadline", "1"))
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == EXIT_SCENARIO, err
    assert re.fullmatch(rf"sockrace: scenario \S+:{function} did not finish its {step} within 1 s and "
                        r"ignored cancellation for 1 s more \(abandoned\)\n", err), err
    assert took < 1 + WATCHDOG_GRACE_S  # ended by the cooperative steps, before the watchdog's time
    assert harmless_watchdog == []


def test_the_python_api_turns_a_guest_system_exit_into_errors_never_a_result(
    threaded_server: ThreadedServer, tmp_path: Path,
) -> None:
    guest = write(tmp_path, GUEST.replace("{raise_it}", "sys.exit(0)"))
    upstream = ("127.0.0.1", threaded_server.address[1])

    async def run(function: str) -> object:
        return await run_check(CheckConfig(f"{guest}:{function}", upstream, tasks=2, calls=2, deadline_s=10))

    with pytest.raises(ScenarioError, match=r"raised SystemExit: 0 in its set-up$"):
        asyncio.run(run("in_setup"))
    with pytest.raises(HammerError, match=r"^call \d raised SystemExit: 0, which would end the program"):
        asyncio.run(run("in_call"))
    with pytest.raises(ScenarioError, match=r"raised SystemExit: 0 in its clean-up$"):
        asyncio.run(run("in_cleanup"))


# ------------------------------------------------------------------ in a process of its own


def start(arguments: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*sockrace_command(), *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_guest_holding_the_event_loop_is_ended_by_the_watchdog(
    threaded_server: ThreadedServer, tmp_path: Path,
) -> None:
    guest = write(tmp_path, "async def spins(address):\n    while True:\n        pass\n")
    started = time.monotonic()
    process = start(check(f"{guest}:spins", threaded_server.upstream, "--deadline", "0.5"))
    try:
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    took = time.monotonic() - started
    assert process.returncode == EXIT_SCENARIO, err
    assert err == (f"sockrace: scenario {guest}:spins: the run went on {WATCHDOG_GRACE_S:g} s past "
                   "--deadline 0.5 s (its code holds the event loop or ignores cancellation): ended it\n")
    assert 0.5 + WATCHDOG_GRACE_S <= took < 0.5 + WATCHDOG_GRACE_S + 10  # 10 s: the interpreter's start-up
    assert out == ""


def test_a_sweep_is_watched_run_by_run(threaded_server: ThreadedServer, tmp_path: Path) -> None:
    # Seed 3 spins: the sweep's other seeds took their time, the watchdog counts from seed 3's start.
    guest = write(tmp_path, textwrap.dedent("""
        import asyncio
        async def third(address):
            if address and open(__file__ + ".n", "a").write("x") and len(open(__file__ + ".n").read()) == 3:
                while True:
                    pass
            return (lambda i: asyncio.sleep(0, str(i))), str
    """))
    process = start(check(f"{guest}:third", threaded_server.upstream, "--deadline", "0.5", "--seeds", "1-5",
                          "--all"))
    try:
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == EXIT_SCENARIO, err
    assert err.endswith("past --deadline 0.5 s (its code holds the event loop or ignores cancellation): "
                        "ended it\n")


@pytest.mark.parametrize("setup", ["time.sleep(30)", "await asyncio.sleep(30)"])
def test_a_real_ctrl_c_stays_130_even_inside_the_guests_code(
    threaded_server: ThreadedServer, tmp_path: Path, setup: str,
) -> None:
    marker = tmp_path / "setting-up"
    guest = write(tmp_path, textwrap.dedent(f"""
        import asyncio, time
        async def waits(address):
            open({str(marker)!r}, "w").close()
            {setup}
    """))
    process = start(check(f"{guest}:waits", threaded_server.upstream))
    try:
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), "the scenario's set-up never began"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == EXIT_INTERRUPTED, err
    assert err == "sockrace: interrupted\n"


def test_a_slow_correct_client_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Every call opens a connection whose first reply takes 1.2 s (a slow connect, then a slow call):
    # longer than any fixed stall bound, while the server owes the reply the whole time.
    guest = write(tmp_path, textwrap.dedent("""
        import asyncio
        async def slow(address):
            async def call(i):
                reader, writer = await asyncio.open_connection(*address)
                try:
                    writer.write(f"SLEEP 1200 v{i}\\n".encode())
                    return (await reader.readline()).decode().strip()
                finally:
                    writer.close()
                    await writer.wait_closed()
            return call, (lambda i: f"OK v{i}")
    """))
    with ThreadedServer() as server:
        code = main(check(f"{guest}:slow", server.upstream, "--timeout", "none", "--tasks", "4",
                          "--calls", "2", "--json"))
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err
    assert captured.err == ""
    assert '"correct": 8' in captured.out


def test_real_ctrl_c_handler_is_put_back(threaded_server: ThreadedServer, tmp_path: Path) -> None:
    guest = write(tmp_path, "import asyncio\nasync def ok(address):\n"
                            "    return (lambda i: asyncio.sleep(0, str(i))), str\n")
    before = signal.getsignal(signal.SIGINT)
    assert main(check(f"{guest}:ok", threaded_server.upstream)) == EXIT_OK
    assert signal.getsignal(signal.SIGINT) is before
