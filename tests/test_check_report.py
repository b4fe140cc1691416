"""check_report.py: a check run in the check's own words; one definition of every count."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from helpers import ThreadedServer, check_args, value, write_scenario
from sockrace import check_report
from sockrace.check import hammer
from sockrace.check.decisions import draw
from sockrace.cli import EXIT_CHECK_FAILED, EXIT_OK, main

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_the_counts_add_up_and_the_table_uses_the_checks_words() -> None:
    async def call(i: int) -> str:
        if i == 0:
            return "nobody's"  # wrong
        if i == 1:
            return value(2)  # crossed
        if i == 3:
            raise ConnectionError("gone")
        return value(i)

    result = await hammer(call, value, tasks=2, calls=3, timeout_ms=None)
    counts = check_report.counts(result)
    assert counts == {"correct": 3, "crossed": 1, "wrong": 1, "stuck": 0, "errors": 1, "timeouts": 0,
                      "cancelled": 0, "unfinished": 0}
    assert sum(counts.values()) == result.calls
    assert check_report.verdict(result) == "crossed"
    table = check_report.format_table(result).splitlines()
    assert table[0].split() == list(check_report.COLUMNS)
    assert table[2].split()[:11] == ["hammer", "2", "6", "3", "1", "1", "0", "1", "0", "0", "0"]
    for word in ("coroutine", "request", "garbled", "corrupted", "lost", "dropped"):
        assert word not in "\n".join(table)


async def test_the_sentence_says_when_the_first_crossing_came_and_quotes_wrong_values() -> None:
    async def call(i: int) -> str:
        return {0: value(1), 1: "ERR <no such key>\nsecond line"}.get(i, value(i))

    result = await hammer(call, value, tasks=1, calls=3, timeout_ms=None)
    sentence = check_report.sentence(result)
    assert sentence.startswith("hammer: 1 of 3 calls returned another call's value, the first ")
    assert " ms into the run; 1 correct; 1 returned a value no call expects." in sentence
    assert check_report.wrong_lines(result) == [
        r"wrong: call 1 (expects 'v1') returned 'ERR <no such key>\nsecond line'"]
    assert check_report.wrong_values(result) == [
        {"call": 1, "expects": "'v1'", "value": r"'ERR <no such key>\nsecond line'"}]


async def test_deadlines_are_called_cuts_with_the_range_drawn_not_failures() -> None:
    async def call(i: int) -> str:
        await asyncio.sleep(1)
        return value(i)

    result = await hammer(call, value, replay=draw(0, 2, 2, (2, 6), 0.0))
    sentence = check_report.sentence(result)
    assert "4 cut by their deadlines (deadlines drawn " in sentence
    assert " after the call started)." in sentence
    assert "failed" not in sentence
    low, high = check_report.cut_range(result, result.decisions.lanes[0][0].interrupt) or (0, 0)
    assert 2 <= low <= high <= 6


async def test_auto_deadlines_are_calibrated_on_calls_that_returned_and_say_when_none_did() -> None:
    # A client that fails fast: every call raises at once. Its instant errors must not calibrate
    # the deadlines (they would be drawn around microseconds); the result says none returned.
    async def fails_fast(i: int) -> str:
        raise ConnectionRefusedError("no")

    result = await hammer(fails_fast, value, tasks=2, calls=10, timeout_ms="auto")
    assert result.errors == 20
    assert result.uncalibrated > 0
    note = check_report.calibration_note(result)
    assert note is not None
    assert note.startswith("auto deadlines: ")
    assert "drawn before any call had returned, at 1 ms" in note

    async def answers(i: int) -> str:
        await asyncio.sleep(0.002)
        return value(i)

    calibrated = await hammer(answers, value, tasks=2, calls=10, timeout_ms="auto")
    assert (calibrated.uncalibrated, check_report.calibration_note(calibrated)) == (0, None)


def test_a_sweeps_json_has_one_record_per_seed(
    threaded_server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = write_scenario(tmp_path, "fine", '''
        import asyncio
        async def fine(address):
            return (lambda i: asyncio.sleep(0, i)), (lambda i: i)
    ''')
    args = check_args(scenario, threaded_server.upstream, "--tasks", "2", "--calls", "2", "--seeds", "4-6",
                      "--all", "--json")
    assert main(args) == EXIT_OK
    document = json.loads(capsys.readouterr().out)
    assert [run["seed"] for run in document["runs"]] == [4, 5, 6]
    assert all(run["verdict"] == "ok" and run["counts"]["correct"] == 4 and run["seconds"] > 0
               for run in document["runs"])
    assert document["failing"] == []


def test_a_sweep_counts_a_stuck_seed_as_failing_with_its_kind(
    threaded_server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The seed decides nothing here but the order: call 1 hangs in every seed, the server owing nothing.
    scenario = write_scenario(tmp_path, "hangs", '''
        import asyncio
        async def hangs(address):
            async def call(i):
                if i == 1:
                    await asyncio.Event().wait()
                return i
            return call, (lambda i: i)
    ''')
    args = check_args(scenario, threaded_server.upstream, "--tasks", "1", "--calls", "2", "--timeout", "none",
                      "--seeds", "3-5", "--all")
    assert main([*args, "--json"]) == EXIT_CHECK_FAILED
    document = json.loads(capsys.readouterr().out)
    assert document["failing_seeds"] == [3, 4, 5]
    assert document["failing"] == [{"seed": s, "verdict": "stuck"} for s in (3, 4, 5)]
    assert [run["counts"]["stuck"] for run in document["runs"]] == [1, 1, 1]
    assert main(args) == EXIT_CHECK_FAILED
    assert "3 seeds tried, 3 failing (100%): seeds 3 (stuck), 4 (stuck), 5 (stuck)" in capsys.readouterr().out
