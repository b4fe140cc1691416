"""@pytest.mark.sockrace_schedules under pytest-asyncio's auto mode, where pytest-asyncio marks every
`async def` test `asyncio` itself: the schedules run as in strict mode, and only a marker the user wrote is
refused (pytester sessions, as a user's suite runs them)."""

from __future__ import annotations

import pytest

from helpers import RACES, assert_replay_fails_again, plugin_ini

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(60)

# Each run writes the schedule seed of the loop it ran on to runs.txt: a run on pytest-asyncio's loop
# instead of a seeded one has no `schedule` and fails, a schedule not run leaves its seed out.
TESTS = '''
import asyncio
import pathlib

import pytest

RUNS = pathlib.Path(__file__).with_name("runs.txt")


def record(name):
    loop = asyncio.get_running_loop()
    seed = loop.schedule.seed if type(loop).__name__ == "SeededEventLoop" else "plain"
    with RUNS.open("a") as runs:
        runs.write(f"{name} {seed}\\n")
''' + RACES + '''

@pytest.mark.sockrace_schedules(5)
async def test_order_independent(tmp_path):
    await no_race()
    assert tmp_path.is_dir()
    record("independent")


@pytest.mark.sockrace_schedules(2, perturbation="reverse")
@pytest.mark.parametrize("which", ["a", "b"])
async def test_parametrized(which):
    record(which)


class TestInAClass:
    @pytest.mark.sockrace_schedules(3)
    async def test_method(self):
        record("method")


async def test_unmarked_is_pytest_asyncios():
    record("unmarked")


@pytest.mark.sockrace_schedules(50)
async def test_order_dependent():
    await race([])
'''

# Markers the user wrote: in strict and in auto mode they are refused, with advice that can be followed.
EXPLICIT_TESTS = '''
import pytest


@pytest.mark.sockrace_schedules(3)
@pytest.mark.asyncio
async def test_decorated():
    pass


@pytest.mark.asyncio
class TestMarkedClass:
    @pytest.mark.sockrace_schedules(3)
    async def test_in_class(self):
        pass


@pytest.mark.sockrace_schedules(3)
@pytest.mark.parametrize("x", [pytest.param(1, marks=pytest.mark.asyncio)])
async def test_param_marked(x):
    pass
'''


def suite(pytester: pytest.Pytester, mode: str, tests: str) -> pytest.Pytester:
    pytester.makeini(plugin_ini(mode))
    pytester.makepyfile(test_auto=tests)
    return pytester


def runs(pytester: pytest.Pytester) -> list[str]:
    path = pytester.path / "runs.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_auto_mode_runs_every_schedule_on_its_seeded_loop(pytester: pytest.Pytester) -> None:
    result = suite(pytester, "auto", TESTS).runpytest("-k", "not order_dependent")
    result.assert_outcomes(passed=5, deselected=1)
    assert sorted(runs(pytester)) == sorted([
        *(f"independent {seed}" for seed in range(5)),
        "a 0", "a 1", "b 0", "b 1",
        *(f"method {seed}" for seed in range(3)),
        "unmarked plain",  # an unmarked test is still pytest-asyncio's, once on its loop
    ])


def test_auto_mode_names_the_failing_schedule_and_its_replay_replays_it(pytester: pytest.Pytester) -> None:
    result = suite(pytester, "auto", TESTS).runpytest("-k", "order_dependent")
    result.assert_outcomes(failed=1, deselected=5)
    result.stdout.fnmatch_lines(["*failed under schedule seed * (shuffle, * scheduling decisions): "
                                 "AssertionError: the consumer ran before the producer"])
    assert_replay_fails_again(pytester, result, "test_auto.py::test_order_dependent")


def test_auto_mode_runs_one_schedule_seed_alone(pytester: pytest.Pytester) -> None:
    result = suite(pytester, "auto", TESTS).runpytest("-k", "independent", "--sockrace-schedule-seed", "11")
    result.assert_outcomes(passed=1, deselected=5)
    assert runs(pytester) == ["independent 11"]


def test_auto_mode_takes_over_a_test_a_hook_marked_asyncio(pytester: pytest.Pytester) -> None:
    # pytest-asyncio's own recipe for one loop per session: a hook marks every async test, and no test
    # can drop that marker; in auto mode it claims the test with or without it, as sockrace's marker does.
    pytester.makeconftest("""
        import pytest
        from pytest_asyncio import is_async_test

        def pytest_collection_modifyitems(items):
            for item in items:
                if is_async_test(item):
                    item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)
    """)
    result = suite(pytester, "auto", TESTS).runpytest("-k", "independent or unmarked")
    result.assert_outcomes(passed=2, deselected=4)
    assert sorted(runs(pytester)) == [*(f"independent {seed}" for seed in range(5)), "unmarked plain"]


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_an_asyncio_marker_the_user_wrote_is_refused(pytester: pytest.Pytester, mode: str) -> None:
    result = suite(pytester, mode, EXPLICIT_TESTS).runpytest()
    result.assert_outcomes(errors=3)
    refusal = ("@pytest.mark.sockrace_schedules runs the test on its own seeded loops: "
               "drop @pytest.mark.asyncio")
    result.stdout.fnmatch_lines([line for test in ("test_decorated", "TestMarkedClass.test_in_class",
                                                   "test_param_marked[[]1[]]")
                                 for line in (f"*ERROR at setup of {test} *", refusal)])
