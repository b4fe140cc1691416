"""A replay against a server whose bytes differ on every connection (examples/greeting_server.py):
a salt of random size in its greeting, a proof of it from the client, a session id of random size.
What MySQL/MariaDB salts, PostgreSQL nonces and HTTP `Date` headers do to a replay, in the repository.

The replay runs against the server in a process of its own, as a real server runs: in the checking
process it would compete with the replay for the interpreter (an in-process thread answers at other
moments than a real server, and on the checking loop itself it could not answer while a replay holds
that loop for its reply)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from examples.greeting_server import SALT_CHARACTERS, GreetingServer, correct, crossing, proof
from sockrace.check.explore import Failure, Replay, check_attempt, setting_of
from sockrace.check.explore import replay as replay_setting
from sockrace.check.oracle import CallVerdict
from sockrace.check.passes import counting_loop
from sockrace.check.result import HammerResult
from sockrace.check.runner import CheckConfig, run_check
from sockrace.check.scenario import Scenario
from sockrace.check.tape import Piece, Tape

pytestmark = pytest.mark.timeout(120)
T = TypeVar("T")
SEED = 1
REPEAT = 10
SERVER = Path(__file__).resolve().parent.parent / "examples" / "greeting_server.py"
CROSSING = Scenario("examples/greeting_server.py:crossing", crossing)
CORRECT = Scenario("examples/greeting_server.py:correct", correct)


@pytest.fixture
def greeting_process() -> Iterator[tuple[str, int]]:
    """`python examples/greeting_server.py --port 0 --seed 1` in a child process: its address."""
    process = subprocess.Popen([sys.executable, str(SERVER), "--port", "0", "--seed", str(SEED)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "greeting server listening on HOST:PORT"
        host, _, port = line.rpartition(" ")[2].strip().rpartition(":")
        assert port.isdigit(), f"the greeting server did not start: {line!r}"
        yield host, int(port)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
async def greeting_server(anyio_backend: str) -> AsyncIterator[GreetingServer]:
    async with GreetingServer() as running:
        yield running


def run(main: Coroutine[Any, Any, T]) -> T:
    """On the loop `sockrace check` runs: asyncio's own, its passes counted."""
    with asyncio.Runner(loop_factory=counting_loop) as runner:
        return runner.run(asyncio.wait_for(main, 120))


@pytest.mark.anyio
async def test_every_connection_is_greeted_with_a_salt_of_its_own(greeting_server: GreetingServer) -> None:
    replies = []
    for _ in range(8):
        reader, writer = await asyncio.open_connection(*greeting_server.address)
        salt = (await reader.readline()).decode().removeprefix("HELLO ").rstrip("\n")
        writer.write(f"AUTH {proof(salt)}\nGET k7\n".encode())
        replies += [await reader.readline(), await reader.readline()]
        writer.close()
        await writer.wait_closed()
    greetings = greeting_server.greetings
    assert len(set(greetings)) == len(greetings) == 8
    assert len({len(greeting) for greeting in greetings}) > 1  # their sizes differ too
    assert all(SALT_CHARACTERS[0] <= len(greeting) - len(b"HELLO \n") <= SALT_CHARACTERS[1]
               for greeting in greetings)
    assert all(reply.startswith(b"OK session ") for reply in replies[::2])
    assert replies[1::2] == [b"OK v7\n"] * 8


def test_the_correct_client_never_hands_a_reply_to_another_call(greeting_process: tuple[str, int]) -> None:
    config = CheckConfig(CORRECT.name, greeting_process, seed=SEED, deadline_s=30)
    result = run(run_check(config, scenario=CORRECT)).result
    assert result.ok, result.summary()
    verdicts = result.tally.verdicts
    assert verdicts[CallVerdict.TIMEOUT] + verdicts[CallVerdict.CANCELLED] > 0  # it was cut, and reconnected


def greeting(tape: Tape | None) -> Piece:
    """The first piece of a run's tape: the server's greeting."""
    assert tape is not None
    first = tape.entries[0]
    assert isinstance(first, Piece)
    return first


def test_a_replay_follows_a_recorded_run_whose_server_bytes_it_cannot_write_again(
        greeting_process: tuple[str, int]) -> None:
    """The recorded greeting, proof and session id never come again. A replay that followed the
    tape's bytes stopped at its first entry: 0% of it in every run, the call pair back in 0-2 of 10.
    Followed by its structure, measured fifteen times: every run followed 96-100% of the tape, and
    the call pair came back in 10 of 10."""
    config = CheckConfig(CROSSING.name, greeting_process, seed=SEED, deadline_s=30)

    async def main() -> tuple[HammerResult, Replay]:
        recording = config.with_setting(replace(config.setting, record=True))
        recorded = (await run_check(recording, scenario=CROSSING)).result
        failure = Failure.first_of(recorded)
        assert failure is not None, recorded.summary()
        setting = replace(setting_of(config), decisions=recorded.decisions, tape=recorded.tape)
        again = await replay_setting(check_attempt(config, CROSSING), setting, repeat=REPEAT, failure=failure)
        return recorded, again

    recorded, again = run(main())
    # Every run had a greeting of its own: a replay could never write the recorded one again.
    crcs = {greeting(recorded.tape).crc} | {greeting(run.result.tape).crc for run in again.runs}
    assert len(crcs) == 1 + REPEAT
    assert len(again.followed) == REPEAT
    assert min(again.followed) >= 0.8, again.followed
    assert again.same >= REPEAT - 1, again.summary()

