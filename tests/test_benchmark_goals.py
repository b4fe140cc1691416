"""The goal logic of the benchmark (no timing): directions, ties within noise, the sections' goals."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from benchmarks import check_speed, output, verbs, verbs_goals
from benchmarks.commands import Timing
from benchmarks.goals import Goal, counter_ratios, median_goal
from benchmarks.variants import Settings


def test_a_ratio_is_met_at_or_above_its_target() -> None:
    assert Goal("g", 1.2, 1.2, "x").status == "met"
    assert Goal("g", 1.19, 1.2, "x").status == "not met"
    assert Goal("g", None, 1.2, "x").status == "not available"


def test_a_ratio_at_most_is_met_at_or_below_its_target() -> None:
    assert Goal("g", 1.0, 1.0, "x", at_most=True).status == "met"
    assert Goal("g", 1.01, 1.0, "x", at_most=True).status == "not met"


def test_a_cost_is_met_below_its_target() -> None:
    assert Goal("g", 19.9, 20.0, "us").status == "met"
    assert Goal("g", 20.0, 20.0, "us").status == "not met"


def test_a_miss_whose_upper_quartile_reaches_the_target_is_a_tie_within_noise() -> None:
    rounds = [0.80, 0.85, 0.90, 0.92, 0.93, 0.94, 0.97, 0.99, 1.02]
    tie = median_goal("g", rounds, 0.95, "x", tie_within_noise=True)
    assert tie.value == 0.93
    assert tie.status == "tie within noise"
    assert median_goal("g", rounds, 0.95, "x").status == "not met"
    far = median_goal("g", [0.5, 0.6, 0.7, 0.8, 0.9], 0.95, "x", tie_within_noise=True)
    assert far.status == "not met"


def test_a_tie_needs_enough_rounds_to_have_quartiles() -> None:
    assert median_goal("g", [0.9, 0.94, 2.0], 0.95, "x", tie_within_noise=True).status == "not met"


def test_a_goal_without_figures_keeps_its_reason() -> None:
    goal = median_goal("g", [], 1.0, "s", note="redis-server is not installed")
    assert goal.status == "not available"
    document: dict[str, Any] = {"value": None, "unit": "s", "note": goal.note, "per_round": []}
    assert output.goal_value(document) == "- (redis-server is not installed)"
    assert median_goal("g", [0.5], 1.0, "s", note="unused").note == ""


def test_the_goal_value_shows_the_spread_of_its_rounds() -> None:
    ratio = {"value": 1.1, "unit": "x", "per_round": [0.9, 1.1, 1.3]}
    assert output.goal_value(ratio) == "1.10x (rounds: 0.90 to 1.30)"
    cost = {"value": 9.5, "unit": "us", "per_round": [9.0, 9.5, 12.0]}
    assert output.goal_value(cost) == "9.50 us (rounds: 9.00 to 12.00 us)"


def test_the_counter_demo_is_divided_by_the_seed_program_run_by_run() -> None:
    demo = Timing("counter demo", [], seconds=[0.2, 0.3])
    seed = Timing("seed program", [], seconds=[0.4, 0.3])
    assert counter_ratios({"counter demo": demo, "seed program": seed}) == [0.5, 1.0]
    seed.error = "exit 1"
    assert counter_ratios({"counter demo": demo, "seed program": seed}) == []


def test_the_verb_goals_pair_sockrace_with_redis_round_by_round() -> None:
    def runs(*rates: float) -> list[verbs.Run]:
        return [verbs.Run(rate, None) for rate in rates]

    figures = {"PING": {"sockrace": runs(100, 300), "redis-server": runs(200, 200)},
               "GET": {"sockrace": runs(40, 40), "redis-server": runs(100, 100)}}
    by_mix = {goal.text.split()[0]: goal for goal in verbs_goals.goals_of(figures, "redis-server")}
    assert set(by_mix) == set(verbs.GOALS)
    assert by_mix["PING"].per_round == (0.5, 1.5)
    assert by_mix["PING"].status == "met"  # median 1.0 >= 1.0
    assert by_mix["GET"].status == "not met"
    assert by_mix["SET"].status == "not available"


def test_verb_goals_without_an_anchor_say_why() -> None:
    goals = verbs_goals.unavailable("no C compiler")
    assert len(goals) == len(verbs.GOALS)
    assert {(goal.status, goal.note) for goal in goals} == {("not available", "no C compiler")}


@pytest.mark.parametrize(("values", "shown"), [
    ([0.001, 0.002, 0.003], "2.00 ms (1.00 to 3.00)"),
    ([1000.0, 20000.0, 3000.0], "3,000 calls/s (1,000 to 20,000)"),
])
def test_check_speed_spread(values: list[float], shown: str) -> None:
    unit = "ms" if values[0] < 1 else "calls/s"
    assert check_speed.spread(values, unit, 1000 if unit == "ms" else 1) == shown


def test_redis_py_rows_are_skipped_with_a_note_without_redis_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert check_speed.redis_first_crossed(3, lambda text: None) == ([], "redis-server is not installed")


def test_verb_goals_are_skipped_with_a_note_without_a_c_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verbs, "compile_client", lambda into: None)
    goals, notes = verbs_goals.measure(Settings(), lambda text: None)
    assert notes == []
    assert {(goal.status, goal.note) for goal in goals} == {("not available", "no C compiler")}
