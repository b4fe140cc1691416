"""The Python driver on every CPython from 3.7 to 3.13 that pyenv has here (issue #22's acceptance):
the in-repo naive and locked clients get the same verdicts as in sockrace's own process for the same
seeds, and a client that catches `Exception` around its read crosses from 3.8 on (CancelledError is a
BaseException there) in 5 of 5 seeds, never on 3.7. An interpreter pyenv does not have is skipped,
saying so; one it has is never skipped (CI=true included)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import EXAMPLES, NAIVE, RECONNECTING, ThreadedServer
from sockrace.check.decisions import Timeout
from sockrace.check.driver_commands import driver_command
from sockrace.check.faults import Faults
from sockrace.check.result import HammerResult
from sockrace.check.runner import CheckConfig, run_check

pytestmark = pytest.mark.timeout(120)

CATCHING = f"{EXAMPLES.parent / 'catching_client.py'}:catching"
SEEDS = (1, 2, 3, 4, 5)
# Every reply held 2 ms by the proxy: the cuts land while replies are owed on any machine, however
# loaded (as in test_cli_check).
HELD_REPLIES = Faults(delay_ms=(2.0, 2.0), direction="to_client")
CUT_WHILE_HELD = (0.5, 1.5)
MINORS = range(7, 14)


def _pyenv_root() -> Path | None:
    if root := os.environ.get("PYENV_ROOT"):
        return Path(root)
    if shutil.which("pyenv"):
        found = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30, check=False)
        if found.returncode == 0 and found.stdout.strip():
            return Path(found.stdout.strip())
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def _interpreters() -> list[object]:
    root = _pyenv_root()
    params: list[object] = []
    for minor in MINORS:
        version = f"3.{minor}"
        found = sorted((root / "versions").glob(f"{version}.*/bin/python{version}")) if root else []
        if found:
            params.append(pytest.param(str(found[-1]), id=version))
        else:
            where = "pyenv is not installed" if root is None else f"pyenv ({root}) has no {version}"
            params.append(pytest.param(None, id=version, marks=pytest.mark.skip(reason=where)))
    return params


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer() as threaded:
        yield threaded


def _run(server: ThreadedServer, scenario: str, seed: int, python: str | None = None,
         timeout_ms: Timeout = "auto", tasks: int = 10) -> HammerResult:
    driver = None if python is None else driver_command(python=python)
    config = CheckConfig(scenario, server.address, seed=seed, deadline_s=30, driver=driver,
                         faults=HELD_REPLIES, timeout_ms=timeout_ms, tasks=tasks)
    return asyncio.run(run_check(config)).result


@pytest.fixture(scope="module")
def in_process(server: ThreadedServer) -> dict[tuple[str, int], bool]:
    """Whether each client passed in sockrace's own process, by seed: what every driver run must match."""
    return {(scenario, seed): _run(server, scenario, seed).ok
            for scenario in (NAIVE, RECONNECTING) for seed in (1, 2)}


@pytest.mark.parametrize("python", _interpreters())
def test_the_naive_and_locked_clients_get_the_in_process_verdicts(
        server: ThreadedServer, in_process: dict[tuple[str, int], bool], python: str) -> None:
    assert in_process == {(NAIVE, 1): False, (NAIVE, 2): False,
                          (RECONNECTING, 1): True, (RECONNECTING, 2): True}
    for (scenario, seed), ok in in_process.items():
        result = _run(server, scenario, seed, python)
        assert result.ok == ok, (scenario, seed, result.summary())
        assert result.crossed > 0 if not ok else result.crossed == 0


@pytest.mark.parametrize("python", _interpreters())
def test_a_client_catching_exception_around_its_read_crosses_from_3_8_on(
        server: ThreadedServer, python: str) -> None:
    version = subprocess.run([python, "-c", "import sys; print(sys.version_info[1])"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.strip()
    # One task, so that no call waits for the client's lock, and deadlines shorter than the 2 ms every
    # reply is held: each one cuts a read with its reply owed, however loaded the machine. (Ten tasks
    # with auto deadlines, or with these short ones that mostly fire while a call waits for the lock,
    # left a seed without a cut read now and then: 4 of 5 seeds crossed in two loaded full-suite runs.)
    crossing = [seed for seed in SEEDS
                if _run(server, CATCHING, seed, python, timeout_ms=CUT_WHILE_HELD, tasks=1).crossed]
    assert crossing == ([] if version == "7" else list(SEEDS))
