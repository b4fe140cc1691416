"""What a scenario prints while it runs goes to stderr: sockrace's own output on stdout (a --json document a
program parses, the report) stays whole (cli/runs.guest_output_to_stderr)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers import ThreadedServer, sockrace_command, write_scenario
from sockrace.cli import EXIT_OK, main

pytestmark = pytest.mark.timeout(60)

# Prints in its set-up, in every call and in its clean-up, through print() and straight to descriptor 1.
NOISY = '''
import asyncio, os

async def noisy(address):
    print("set-up says hello")
    os.write(1, b"set-up writes to descriptor 1\\n")
    reader, writer = await asyncio.open_connection(*address)
    lock = asyncio.Lock()

    async def call(i):
        print(f"call {i}")
        async with lock:
            writer.write(f"ECHO {i}\\n".encode())
            await writer.drain()
            return (await reader.readline()).decode().strip()

    try:
        yield call, (lambda i: f"OK {i}")
    finally:
        print("clean-up says goodbye")
        writer.close()
'''
SMALL = ("--tasks", "2", "--calls", "3", "--timeout", "none")


@pytest.mark.parametrize("sweep", [(), ("--seeds", "1-2", "--all")])
def test_what_a_scenario_prints_leaves_the_json_document_whole(tmp_path: Path,
                                                               sweep: tuple[str, ...]) -> None:
    scenario = write_scenario(tmp_path, "noisy", NOISY)
    with ThreadedServer() as server:
        done = subprocess.run([*sockrace_command(), "check", scenario, "--upstream", server.upstream, *SMALL,
                               *sweep, "--json"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == EXIT_OK, done.stderr
    document = json.loads(done.stdout)  # nothing but the document
    assert document["tried" if sweep else "verdict"] == (2 if sweep else "ok")
    for said in ("set-up says hello", "set-up writes to descriptor 1", "call 0", "clean-up says goodbye"):
        assert said in done.stderr


def test_in_process_what_a_scenario_prints_goes_to_stderr(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    scenario = write_scenario(tmp_path, "noisy", NOISY)
    with ThreadedServer() as server:
        code = main(["check", scenario, "--upstream", server.upstream, *SMALL, "--json"])
    out, err = capsys.readouterr()
    assert code == EXIT_OK
    assert json.loads(out)["verdict"] == "ok"
    assert "call 0" in err
    assert "clean-up says goodbye" in err
