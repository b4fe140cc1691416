"""The pytest plugin the seeded loop's cost benchmark times the tests with (structure, no speed)."""

from __future__ import annotations

import pytest

from benchmarks.schedule_tests import SeededPolicy, parse
from sockrace.check.schedule import SeededEventLoop


def test_the_setting_names_asyncios_loop_or_a_perturbation_and_its_first_seed() -> None:
    assert parse("") is None
    assert parse("plain") is None
    assert parse("shuffle:7") == ("shuffle", 7)
    assert parse("reverse:0") == ("reverse", 0)


@pytest.mark.parametrize("setting", ["fifo:1", "shuffle", "shuffle:", "shuffle:-1", "reverse:x"])
def test_a_bad_setting_is_one_clear_error(setting: str) -> None:
    with pytest.raises(ValueError, match=r"^SOCKRACE_SCHEDULE_COST must be plain or PERTURBATION:SEED "
                       r"\(shuffle, reverse\), got '"):
        parse(setting)


def test_the_policy_makes_seeded_loops_with_seeds_counting_up() -> None:
    policy = SeededPolicy("reverse", 5)
    loops = [policy.new_event_loop() for _ in range(3)]
    try:
        assert all(isinstance(loop, SeededEventLoop) for loop in loops)
        seeded = [loop for loop in loops if isinstance(loop, SeededEventLoop)]
        assert [(loop.schedule.seed, loop.schedule.perturbation) for loop in seeded] == [
            (5, "reverse"), (6, "reverse"), (7, "reverse")]
    finally:
        for loop in loops:
            loop.close()
