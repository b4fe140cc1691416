"""`sockrace check --seeds LO-HI --jobs N`: seeds in worker processes (check/workers.py), with the
verdicts of one process: the same seeds tried, the same failing seeds, the lowest failing seed first
however the workers race; a worker that dies is an error, never a clean verdict; Ctrl-C stops every
worker at once and leaves none running."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import NAIVE, ThreadedServer, write_scenario
from sockrace.check import hammer
from sockrace.check.explore import Setting
from sockrace.check.result import HammerResult
from sockrace.check.scenario import ScenarioError
from sockrace.check.workers import Shown, WorkerCrashed, portable, sweep_in_workers
from sockrace.cli import EXIT_CHECK_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SCENARIO, EXIT_USAGE, main

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------ the engine, with a fake run per seed


def fake_seeds(plan: dict[str, list[int]], next_seed: Callable[[], int | None],
               send: Callable[[int, HammerResult, float], None]) -> None:
    """A worker's entry: seed s fails when in plan["failing"], after 0.4 s when in plan["slow"]; a
    seed in plan["crash"] ends the worker's process, one in plan["raises"] raises."""

    async def run(seed: int) -> HammerResult:
        if seed in plan["slow"]:
            await asyncio.sleep(0.4)
        if seed in plan["crash"]:
            os._exit(9)
        if seed in plan["raises"]:
            raise ValueError(f"seed {seed} raised")
        wrong = seed in plan["failing"]
        return await hammer(lambda i: asyncio.sleep(0, i + 1 if wrong else i), lambda i: i, tasks=1, calls=2,
                            timeout_ms=None)

    while (seed := next_seed()) is not None:
        send(seed, asyncio.run(run(seed)), 0.0)


def plan(**seeds: list[int]) -> dict[str, list[int]]:
    return {"failing": [], "slow": [], "crash": [], "raises": [], **seeds}


def test_the_lowest_failing_seed_is_first_even_when_a_higher_one_fails_sooner() -> None:
    # Seed 2 fails slowly in one worker while the other finds seeds 3 and 5 failing at once: a
    # sweep in one process stops at seed 2, having tried 1 and 2, and so must this one.
    found = sweep_in_workers(fake_seeds, plan(failing=[2, 3, 5], slow=[2]), Setting(), range(1, 9), jobs=2)
    assert found.tried == (1, 2)
    assert found.failing_seeds == (2,)
    assert found.first is not None
    assert found.first.setting.seed == 2


def test_with_all_every_seed_is_tried_once_in_order() -> None:
    found = sweep_in_workers(fake_seeds, plan(failing=[2, 3, 5], slow=[2, 6]), Setting(), range(1, 9),
                             jobs=3, keep_going=True)
    assert found.tried == tuple(range(1, 9))
    assert found.failing_seeds == (2, 3, 5)
    assert [record.seed for record in found.records] == list(range(1, 9))


def test_a_worker_that_dies_is_an_error_in_its_seeds_turn() -> None:
    with pytest.raises(WorkerCrashed, match=r"worker \d \(pid \d+\) exited with code 9 while it ran seed 4"):
        sweep_in_workers(fake_seeds, plan(crash=[4]), Setting(), range(1, 9), jobs=2, keep_going=True)


def test_a_worker_that_dies_past_the_first_failure_changes_nothing() -> None:
    # One process would have stopped at seed 2 and never run seed 3.
    found = sweep_in_workers(fake_seeds, plan(failing=[2], slow=[2], crash=[3]), Setting(), range(1, 9),
                             jobs=2)
    assert found.tried == (1, 2)
    assert found.failing_seeds == (2,)


def test_what_a_run_raises_is_raised_in_its_seeds_turn() -> None:
    with pytest.raises(ValueError, match="seed 5 raised"):
        sweep_in_workers(fake_seeds, plan(raises=[5]), Setting(), range(1, 9), jobs=2, keep_going=True)
    found = sweep_in_workers(fake_seeds, plan(failing=[2], slow=[2], raises=[3]), Setting(), range(1, 9),
                             jobs=2)
    assert found.failing_seeds == (2,)


def test_progress_is_one_count_over_every_worker() -> None:
    seen: list[int] = []
    sweep_in_workers(fake_seeds, plan(), Setting(), range(1, 7), jobs=2, keep_going=True,
                     on_progress=lambda progress: seen.append(progress.done))
    assert seen == [1, 2, 3, 4, 5, 6]


class Opaque:
    """A value of a class the parent process might not be able to import."""

    def __repr__(self) -> str:
        return "Opaque()"


def test_a_result_crosses_without_exceptions_and_with_values_as_they_repr() -> None:
    async def call(i: int) -> object:
        if i == 0:
            raise RuntimeError("boom")
        return Opaque() if i == 1 else [i, b"x"]

    result = asyncio.run(hammer(call, lambda i: i, tasks=1, calls=3, timeout_ms=None))
    crossed = portable(result)
    assert [o.verdict for o in crossed.outcomes] == [o.verdict for o in result.outcomes]
    assert crossed.outcomes[0].record.exception is None
    assert crossed.outcomes[0].record.error == result.outcomes[0].record.error
    assert isinstance(crossed.outcomes[1].value, Shown)
    assert repr(crossed.outcomes[1].value) == "Opaque()"
    assert crossed.outcomes[2].value == [2, b"x"]
    assert crossed.explain() == result.explain()


# ------------------------------------------------------------------ the command


# Call i returns i, except in a run whose first call made is odd (the seed decides which call a run
# makes first): there every call returns i + 1. Deterministic by seed, different from seed to seed.
BY_SEED = '''
import asyncio

async def by_seed(address):
    first = []

    async def call(i):
        if not first:
            first.append(i)
        await asyncio.sleep(0)
        return i + 1 if first[0] % 2 else i

    return call, (lambda i: i)
'''
SMALL = ("--tasks", "3", "--calls", "4", "--timeout", "none", "--deadline", "20")


def sweep_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(list(args))
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("keep_going", [True, False])
def test_jobs_2_finds_what_jobs_1_finds(tmp_path: Path, threaded_server: ThreadedServer,
                                       capsys: pytest.CaptureFixture[str], keep_going: bool) -> None:
    scenario = write_scenario(tmp_path, "by_seed", BY_SEED)
    args = ["check", scenario, "--upstream", threaded_server.upstream, *SMALL, "--seeds", "1-16", "--json",
            *(["--all"] if keep_going else [])]
    code_1, one = sweep_json(capsys, *args)
    code_2, two = sweep_json(capsys, *args, "--jobs", "2")
    assert one["failing_seeds"], "the scenario fails under some seeds"
    if keep_going:
        assert len(one["failing_seeds"]) < 16, "and passes under others"
    assert code_1 == code_2 == EXIT_CHECK_FAILED
    for key in ("tried", "failing_seeds", "failing", "replay", "first_failure"):
        if key == "first_failure":
            assert isinstance(one[key], dict)
            assert isinstance(two[key], dict)
            assert (two[key]["seed"], two[key]["failure"]) == (one[key]["seed"], one[key]["failure"])
        else:
            assert two[key] == one[key], key
    assert [(r["seed"], r["counts"]) for r in two["runs"]] == [
        (r["seed"], r["counts"]) for r in one["runs"]]


def test_jobs_2_saves_the_same_failure(tmp_path: Path, threaded_server: ThreadedServer,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    scenario = write_scenario(tmp_path, "by_seed", BY_SEED)
    saved = []
    for jobs in ("1", "2"):
        path = tmp_path / f"failure-{jobs}.json"
        code = main(["check", scenario, "--upstream", threaded_server.upstream, *SMALL, "--seeds", "1-16",
                     "--save", str(path), "--jobs", jobs])
        assert code == EXIT_CHECK_FAILED
        record = json.loads(path.read_text())
        saved.append({key: record[key] for key in ("setting", "failure")} if "setting" in record
                     else {key: value for key, value in record.items() if key not in ("counts", "sockrace")})
    out = capsys.readouterr().out
    replays = [line for line in out.splitlines() if line.startswith("replay: ")]
    assert len(replays) == 2
    assert replays[0] == replays[1]
    assert saved[0].keys() == saved[1].keys()


def test_the_naive_client_fails_the_same_under_jobs(threaded_server: ThreadedServer,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    args = ["check", NAIVE, "--upstream", threaded_server.upstream, "--seeds", "1-6", "--json"]
    code_1, one = sweep_json(capsys, *args)
    code_2, two = sweep_json(capsys, *args, "--jobs", "auto")
    assert code_1 == code_2 == EXIT_CHECK_FAILED
    assert two["tried"] == one["tried"] == 1
    assert two["failing_seeds"] == one["failing_seeds"] == [1]


@pytest.mark.parametrize("jobs", ["0", "-1", "x", "1.5"])
def test_a_bad_number_of_jobs_is_a_usage_error(jobs: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", NAIVE, "--upstream", "127.0.0.1:1", "--seeds", "1-3", "--jobs", jobs]) == EXIT_USAGE
    assert "--jobs: must be a whole number of 1 or more, or auto" in capsys.readouterr().err


def test_jobs_needs_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", NAIVE, "--upstream", "127.0.0.1:1", "--jobs", "2"]) == EXIT_USAGE
    assert "--jobs" in capsys.readouterr().err


def test_a_scenario_that_ends_its_worker_is_reported_in_one_line(
        tmp_path: Path, threaded_server: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    # SIGKILL: nothing of the worker's own can turn it into an error it reports (os._exit is refused
    # while a scenario runs: test_guest_process.py).
    scenario = write_scenario(tmp_path, "exits", '''
        import os, signal

        async def exits(address):
            os.kill(os.getpid(), signal.SIGKILL)
    ''')
    code = main(["check", scenario, "--upstream", threaded_server.upstream, *SMALL, "--seeds", "1-4",
                 "--jobs", "2"])
    err = capsys.readouterr().err
    assert code == EXIT_SCENARIO
    lines = [line for line in err.splitlines() if "worker" in line]
    assert len(lines) == 1
    assert "was killed by SIGKILL while it ran seed 1" in lines[0]


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(word) for word in path.read_text().split()} if path.exists() else set()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads a process's children in /proc")
@pytest.mark.parametrize(("stop", "exit_code"), [(signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, 143),
                                                 (signal.SIGKILL, -signal.SIGKILL)])
def test_ctrl_c_or_an_end_stops_every_worker_and_leaves_none_running(
        tmp_path: Path, threaded_server: ThreadedServer, stop: signal.Signals, exit_code: int) -> None:
    scenario = write_scenario(tmp_path, "slow", '''
        import asyncio

        async def slow(address):
            return (lambda i: asyncio.sleep(0.05, i)), (lambda i: i)
    ''')
    command = subprocess.Popen(
        [sys.executable, "-m", "sockrace", "check", scenario, "--upstream", threaded_server.upstream, *SMALL,
         "--seeds", "1-100000", "--all", "--jobs", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        workers: set[int] = set()
        waited = time.monotonic() + 30
        while len(workers) < 2 and time.monotonic() < waited:
            workers = _children(command.pid)
            time.sleep(0.05)
        assert len(workers) == 2, "the command started two workers"
        time.sleep(1.0)  # well into the sweep: each worker is running a seed
        command.send_signal(stop)
        _, err = command.communicate(timeout=20)
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
    assert command.returncode == exit_code, err
    if stop == signal.SIGINT:
        assert err.strip().splitlines()[-1] == "sockrace: interrupted"
    # SIGKILL gives the command no chance: the kernel ends its workers (a moment later).
    waited = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < waited:
        time.sleep(0.05)
    assert [pid for pid in workers if _alive(pid)] == []


def test_one_job_or_one_seed_runs_in_this_process(threaded_server: ThreadedServer,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from sockrace.check import workers

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("no worker process for a single seed")

    monkeypatch.setattr(workers, "sweep_in_workers", refused)
    code = main(["check", NAIVE, "--upstream", threaded_server.upstream, "--seeds", "3", "--jobs", "4"])
    assert code == EXIT_CHECK_FAILED
    assert "1 seeds tried, 1 failing" in capsys.readouterr().out


def test_an_error_that_cannot_cross_processes_becomes_a_scenario_error() -> None:
    from sockrace.check.workers import _portable_error

    class Local(Exception):
        pass

    crossed = _portable_error(Local("no pickle for a local class"))
    assert isinstance(crossed, ScenarioError)
    assert str(crossed) == "Local: no pickle for a local class"
    assert EXIT_OK == 0


def test_each_worker_starts_its_own_driver(threaded_server: ThreadedServer,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    args = ["check", NAIVE, "--upstream", threaded_server.upstream, "--seeds", "1-4", "--json",
            "--python", sys.executable]
    code_1, one = sweep_json(capsys, *args)
    code_2, two = sweep_json(capsys, *args, "--jobs", "2")
    assert code_1 == code_2 == EXIT_CHECK_FAILED
    assert two["failing_seeds"] == one["failing_seeds"] == [1]
    assert two["replay"] == one["replay"]
    assert "--python" in str(two["replay"])
