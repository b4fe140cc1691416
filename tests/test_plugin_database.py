"""The pytest plugin's database of failures, run the way a user's suite runs it (pytester sessions, one after
the other in one directory, as a developer runs pytest again): a failing test's run record is saved, the next
run replays it first (its seed and its decisions), and a run that passes under it removes it.

No network: the client is a function that, under the seeds listed in failing.txt, returns every call its
neighbour's reply (call 0 gets call 1's), so every call crosses whatever the order; under any other seed
each gets its own. Every run of the test appends the seed and replay it was given to seen.txt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import plugin_ini, saved_failures
from sockrace.check.oracle import CallVerdict

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(60)

NODE = "test_saved_client.py::test_client"
DATABASE = Path(".sockrace", "failures")

CLIENT_TESTS = '''
import asyncio
import json
import pathlib

from sockrace.check import hammer
from sockrace.pytest_plugin import assert_no_crossing

HERE = pathlib.Path(__file__).parent


def run(seed, replay):
    failing = {int(word) for word in (HERE / "failing.txt").read_text().split()}

    async def call(i):
        return f"v{i ^ 1}" if seed in failing else f"v{i}"

    return asyncio.run(hammer(call, lambda i: f"v{i}", tasks=2, calls=3, timeout_ms="auto", seed=seed,
                              replay=replay))


def test_client(sockrace_seed, sockrace_replay):
    result = run(sockrace_seed, sockrace_replay)
    with (HERE / "seen.txt").open("a") as seen:
        seen.write(json.dumps({"seed": sockrace_seed,
                               "replay": None if sockrace_replay is None else sockrace_replay.seed,
                               "replayed": result.decisions == sockrace_replay}) + "\\n")
    assert_no_crossing(result)


def test_without_the_seed_fixture():
    assert_no_crossing(run(5, None))
'''


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(plugin_ini())
    pytester.makepyfile(test_saved_client=CLIENT_TESTS)
    fails_under(pytester, 5)
    return pytester


def fails_under(pytester: pytest.Pytester, *seeds: int) -> None:
    """From now on the client crosses under `seeds` only (none: it passes under every seed)."""
    (pytester.path / "failing.txt").write_text(" ".join(map(str, seeds)))


def seen(pytester: pytest.Pytester) -> list[dict[str, Any]]:
    """What test_client was given, run after run: its seed, its replay's seed, whether it replayed it."""
    lines = (pytester.path / "seen.txt").read_text().splitlines()
    return [json.loads(line) for line in lines]


def client(pytester: pytest.Pytester, *options: str) -> pytest.RunResult:
    return pytester.runpytest(NODE, *options)


def fail_under_5(pytester: pytest.Pytester) -> Path:
    """A first run that fails under seed 5 (not the default 0, so that a later run shows where its seed came
    from) and saves its record; the record's file."""
    client(pytester, "--sockrace-seed", "5").assert_outcomes(failed=1)
    files = list((pytester.path / DATABASE).iterdir())
    assert len(files) == 1
    return files[0]


def test_a_failing_test_saves_its_record_named_after_the_test(suite: pytest.Pytester) -> None:
    result = client(suite, "--sockrace-seed", "5")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*hammer: 6 calls: 0 correct, 6 crossed*",
        "call * was returned to call *",
        f"saved: {DATABASE}/test_saved_client.py_test_client-*.json "
        "(the next run of this test replays it first, until it passes)",
        f"replay: pytest {NODE} --sockrace-seed 5",
    ])
    record = saved_failures(suite.path / DATABASE)[NODE]
    assert record.setting.seed == 5
    assert record.failure is not None
    assert record.failure.verdict is CallVerdict.CROSSED
    assert record.story.startswith("call ")
    assert record.story in result.stdout.str()
    assert record.counts is not None
    assert record.counts["crossed"] == 6
    decisions = record.setting.decisions
    assert decisions is not None
    assert (decisions.seed, decisions.tasks, decisions.calls, decisions.calibrate) == (5, 2, 3, True)
    assert record.setting.timeout_ms == "auto"
    assert record.upstream == ("", 0)  # the test started no proxy


def test_the_next_run_replays_the_saved_failure_first_and_removes_it_once_it_passes(
    suite: pytest.Pytester,
) -> None:
    path = fail_under_5(suite)
    fails_under(suite)  # the client is fixed: it passes under every seed

    result = client(suite)
    result.assert_outcomes(passed=1)
    # The saved seed, not the default 0, and the saved decisions made again ("auto" deadlines included).
    assert seen(suite)[-1] == {"seed": 5, "replay": 5, "replayed": True}
    assert not path.exists()
    result.stdout.fnmatch_lines([f"sockrace: {NODE} passed under its saved seed 5: removed {DATABASE}/*"])

    client(suite).assert_outcomes(passed=1)
    assert seen(suite)[-1] == {"seed": 0, "replay": None, "replayed": False}


def test_a_replay_that_fails_again_keeps_the_record(suite: pytest.Pytester) -> None:
    path = fail_under_5(suite)
    result = client(suite)
    result.assert_outcomes(failed=1)
    assert seen(suite)[-1] == {"seed": 5, "replay": 5, "replayed": True}
    result.stdout.fnmatch_lines([f"saved: {DATABASE}/{path.name} (its replay failed again; the next run *",
                                 f"replay: pytest {NODE} --sockrace-seed 5"])
    assert saved_failures(suite.path / DATABASE)[NODE].setting.seed == 5


def test_an_explicit_seed_overrides_the_saved_one(suite: pytest.Pytester) -> None:
    path = fail_under_5(suite)
    fails_under(suite)
    result = client(suite, "--sockrace-seed", "2")
    result.assert_outcomes(passed=1)
    assert seen(suite)[-1] == {"seed": 2, "replay": None, "replayed": False}
    assert path.exists()  # seed 5 was not run: its failure is not known to be fixed
    assert "removed" not in result.stdout.str()

    # Naming the saved seed is replaying it: its decisions come with it, and passing removes the record.
    client(suite, "--sockrace-seed", "5").assert_outcomes(passed=1)
    assert seen(suite)[-1] == {"seed": 5, "replay": 5, "replayed": True}
    assert not path.exists()


@pytest.mark.parametrize("where", ["option", "ini"])
def test_the_database_turned_off_saves_and_replays_nothing(suite: pytest.Pytester, where: str) -> None:
    options = ["--sockrace-database", "none"] if where == "option" else []
    if where == "ini":
        suite.makeini(plugin_ini() + "sockrace_database = none\n")
    result = client(suite, "--sockrace-seed", "5", *options)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"replay: pytest {NODE} --sockrace-seed 5"])
    assert "saved:" not in result.stdout.str()
    assert not (suite.path / ".sockrace").exists()
    client(suite, *options).assert_outcomes(passed=1)
    assert seen(suite)[-1]["seed"] == 0


def test_the_database_can_be_elsewhere(suite: pytest.Pytester) -> None:
    suite.makeini(plugin_ini() + "sockrace_database = records/of-failures\n")
    client(suite, "--sockrace-seed", "5").assert_outcomes(failed=1)
    assert list(saved_failures(suite.path / "records" / "of-failures")) == [NODE]
    # The command line's directory wins over the ini's; the ini's saved failure is not replayed from it.
    fails_under(suite)
    client(suite, "--sockrace-database", "other").assert_outcomes(passed=1)
    assert seen(suite)[-1]["seed"] == 0
    assert not (suite.path / ".sockrace").exists()


def test_a_test_without_the_seed_fixture_saves_nothing(suite: pytest.Pytester) -> None:
    # Its seed cannot be handed back to it: a record would never be replayed, nor removed.
    test = "test_saved_client.py::test_without_the_seed_fixture"
    result = suite.runpytest(test)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"replay: pytest {test} --sockrace-seed 5"])
    assert "saved:" not in result.stdout.str()
    assert not (suite.path / ".sockrace").exists()


UNREADABLE = {
    "not JSON": ("{not json", "is not a sockrace run record: not JSON"),
    "newer": ('{"format": "sockrace-run-record", "version": 99}', "is a run record of version 99"),
    "incomplete": ('{"format": "sockrace-run-record", "version": 1}', "is not a valid sockrace run record"),
}


@pytest.mark.parametrize("content", ["not JSON", "newer", "incomplete", "another test's"])
def test_an_unreadable_record_is_reported_in_one_line_and_ignored(
    suite: pytest.Pytester, content: str,
) -> None:
    path = fail_under_5(suite)
    if content == "another test's":
        document = json.loads(path.read_text())
        document["scenario"] = "test_saved_client.py::test_other"
        text = json.dumps(document)
        said = (f"ignored {DATABASE}/{path.name}: it holds the failure of test_saved_client.py::test_other, "
                f"not of {NODE}")
    else:
        text, reason = UNREADABLE[content]
        said = f"ignored the saved failure of {NODE}: {DATABASE}/{path.name} {reason}"
    path.write_text(text)
    fails_under(suite)
    result = client(suite)
    result.assert_outcomes(passed=1)  # run as if nothing were saved: under the default seed
    assert seen(suite)[-1] == {"seed": 0, "replay": None, "replayed": False}
    notes = [line for line in result.outlines if line.startswith("sockrace:")]
    assert len(notes) == 1, result.outlines
    assert notes[0].startswith(f"sockrace: {said}")
    assert "Traceback" not in result.stdout.str()
    assert "INTERNALERROR" not in result.stdout.str()
    assert path.read_text() == text  # left for the user: a newer sockrace may read it


def test_a_database_that_cannot_be_written_says_so_and_the_test_still_fails_with_its_story(
    suite: pytest.Pytester,
) -> None:
    (suite.path / "blocker").write_text("a file where the database's directory would be")
    result = client(suite, "--sockrace-seed", "5", "--sockrace-database", "blocker/failures")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "call * was returned to call *",
        "not saved: cannot write blocker/failures/test_saved_client.py_test_client-*.json: *",
        f"replay: pytest {NODE} --sockrace-seed 5",
    ])
