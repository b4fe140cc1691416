"""What a scenario does to sockrace's own process cannot end a check as if it had passed: os._exit(0) in a
call, in its set-up or in a thread of its own, and loop.stop(), each end the check with exit 5 and one line
(guest.os_exit_refused, cli/runs.run_to_end); a child it forks still exits as it asks. Each check runs in a
process of its own: were os._exit let through here, it would end the test session with exit 0."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import ThreadedServer, sockrace_command, write_scenario
from sockrace.cli import EXIT_OK, EXIT_SCENARIO

pytestmark = pytest.mark.timeout(60)

SCENARIOS = '''
import asyncio, multiprocessing, os, threading

def calls(bad):
    async def call(i):
        if i == 3:
            await bad()
        return i
    return call, (lambda i: i)

async def exits_in_a_call(address):
    async def bad():
        os._exit(0)
    return calls(bad)

async def exits_in_a_thread(address):
    async def bad():
        await asyncio.get_running_loop().run_in_executor(None, os._exit, 0)
    return calls(bad)

def exits_in_the_background(start):
    """Calls whose call 3 has `start(exit_then_say_so)` run os._exit(0) on another thread and waits
    until it was tried, without awaiting its outcome."""
    tried = threading.Event()

    def exit_then_say_so():
        try:
            os._exit(0)
        finally:
            tried.set()

    async def bad():
        start(exit_then_say_so)
        await asyncio.get_running_loop().run_in_executor(None, tried.wait)
    return calls(bad)

async def exits_in_a_thread_nobody_waits_for(address):
    loop = asyncio.get_running_loop()
    return exits_in_the_background(lambda exit: loop.run_in_executor(None, exit))  # never awaited

async def exits_in_a_thread_of_its_own(address):
    # Its exception goes to threading's hook, not to asyncio.
    return exits_in_the_background(lambda exit: threading.Thread(target=exit).start())

async def exits_in_its_set_up(address):
    os._exit(0)

async def stops_the_loop(address):
    async def bad():
        asyncio.get_running_loop().stop()
        await asyncio.sleep(0)
    return calls(bad)

async def forks_a_child(address):
    child = multiprocessing.get_context("fork").Process(target=os._exit, args=(7,))
    child.start()
    child.join()
    assert child.exitcode == 7, child.exitcode
    async def call(i):
        return i
    return call, (lambda i: i)
'''


def check(tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    scenario = write_scenario(tmp_path, "scenarios", SCENARIOS).replace(":scenarios", f":{name}")
    with ThreadedServer() as server:
        # No deadlines: call 3 runs to its end (a deadline could cut it before a thread's os._exit).
        return subprocess.run([*sockrace_command(), "check", scenario, "--upstream", server.upstream,
                               "--tasks", "2", "--calls", "4", "--timeout", "none"],
                              capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("name", "said"), [
    ("exits_in_a_call", "call 3 raised OsExitCalled: 0, which would end the program"),
    ("exits_in_a_thread", "call 3 raised OsExitCalled: 0, which would end the program"),
    ("exits_in_a_thread_nobody_waits_for", "a task the scenario started raised OsExitCalled: 0, which would"),
    ("exits_in_a_thread_of_its_own", "the scenario called os._exit(0), which would end the program"),
    ("exits_in_its_set_up", "raised OsExitCalled: 0 in its set-up"),
    ("stops_the_loop", "the scenario stopped the event loop (loop.stop()) before the check had ended"),
])
def test_what_would_end_the_process_ends_the_check_with_exit_5(tmp_path: Path, name: str, said: str) -> None:
    done = check(tmp_path, name)
    assert done.returncode == EXIT_SCENARIO, done.stdout + done.stderr
    assert said in done.stderr
    if name != "exits_in_a_thread_of_its_own":  # there Python's threading hook prints the thread's traceback
        assert "Traceback" not in done.stderr


def test_a_child_the_scenario_forks_still_exits_as_it_asks(tmp_path: Path) -> None:
    done = check(tmp_path, "forks_a_child")
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
