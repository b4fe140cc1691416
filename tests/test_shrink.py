"""Shrink (check/shrink.py): a failing run's record cut down, every cut kept only when the record it
makes fails in all its replays. In-process and exact on the clients of clients.py, the search itself
on clients whose failure is a rule of the decisions, and cutting a record (pure)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from inprocess import InProcessServer, VirtualClockLoop, in_process_client

from helpers import value
from sockrace.check import hammer
from sockrace.check.decisions import CallDecision, Decisions, Interrupt, check_timeout
from sockrace.check.explore import Attempt, Failure, Setting, replay
from sockrace.check.faults import Direction, Faults
from sockrace.check.oracle import CallVerdict
from sockrace.check.result import HammerResult
from sockrace.check.shrink import NotFailing, candidates, cut, described, shrink
from sockrace.check.tape import Arrival, Cut, Piece, Tape

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
# Replies held 5-20 ms on their way back and deadlines of 1-40 ms: a good share of the deadlines
# fire while a reply is out, and others outlast it and pick up what was left behind.
SETTING = Setting(tasks=4, calls=5, timeout_ms=(1.0, 40.0),
                  faults=Faults(delay_ms=(5.0, 20.0), direction="to_client"))


def in_process(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on a fresh virtual-clock loop: every run of the same coroutine does the same things."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(coroutine)


def decided_attempt(name: str) -> Attempt:
    """The client `name` against a fresh in-process server, making a record's decisions when the
    setting has them (a shrink's candidates): call i is GET k<i>, which must return v<i>."""

    async def attempt(setting: Setting) -> HammerResult:
        server = InProcessServer(setting.faults, setting.seed)
        total = setting.tasks * setting.calls if setting.decisions is None else setting.decisions.total
        await server.load(total)
        client = in_process_client(name, server)
        try:
            return await hammer(lambda i: client.get(f"k{i}"), value, tasks=setting.tasks,
                                calls=setting.calls, timeout_ms=setting.timeout_ms, seed=setting.seed,
                                label=name, replay=setting.decisions)
        finally:
            await client.aclose()
            await server.close()

    return attempt


# ------------------------------------------------------------------ the buggy clients, in-process


@pytest.mark.parametrize("name", ["naive", "locked"])
def test_a_client_that_is_not_cancel_safe_shrinks_to_one_task_and_two_calls(name: str) -> None:
    shrunk = in_process(shrink(decided_attempt(name), SETTING, replays=2))
    minimal = shrunk.minimal
    assert (minimal.tasks, minimal.calls) == (1, 2)
    assert minimal.decisions is not None
    assert minimal.decisions.total == 2
    assert shrunk.steps[:2] == ("1 task", "2 calls")
    assert shrunk.failure is not None
    assert shrunk.failure.verdict is CallVerdict.CROSSED
    # The record handed over is the run that was judged: its decisions, and its failure comes back.
    assert minimal.decisions == shrunk.result.decisions
    again = in_process(replay(decided_attempt(name), minimal, repeat=10, failure=shrunk.failure))
    assert (again.same, again.failed) == (10, 10)
    assert "was cancelled by its" in shrunk.story()
    assert shrunk.summary().startswith("shrunk to seed 0, 1 task x 2 calls, deadlines ")


def test_a_setting_that_does_not_fail_cannot_be_shrunk() -> None:
    with pytest.raises(NotFailing, match=r"^seed 0, 4 tasks x 5 calls, deadlines 1-40 ms, faults: delay "
                                         r"5-20 ms, to_client only did not fail and come back in 2 of 2 "
                                         r"replays in 3 tries: nothing to shrink$"):
        in_process(shrink(decided_attempt("disconnect-on-cancel"), SETTING, replays=2))


# ------------------------------------------------------------------ the search, on a rule


class Rule:
    """An attempt whose run crosses (call 0 gets call 1's value) when `fails(setting, run)` says so,
    `run` counting the runs of the same tape from 0 (the recording run); every recording run gets a
    tape of its own (one Arrival naming the run), and every run is kept in `given`."""

    def __init__(self, fails: Callable[[Setting, int], bool]) -> None:
        self.fails = fails
        self.given: list[Setting] = []
        self.followed: dict[Tape, int] = {}

    async def __call__(self, setting: Setting) -> HammerResult:
        self.given.append(setting)
        if setting.record:
            tape, run = Tape((Arrival(0, len(self.given), 0.0),)), 0
        else:
            assert setting.tape is not None
            tape = setting.tape
            run = self.followed[tape] = self.followed.get(tape, 0) + 1
        fails = self.fails(setting, run)

        async def call(i: int) -> str:
            await asyncio.sleep(0)
            return value(1 if i == 0 and fails else i)

        result = await hammer(call, value, tasks=setting.tasks, calls=setting.calls, timeout_ms=None,
                              seed=setting.seed, replay=setting.decisions)
        return dataclasses.replace(result, tape=tape)


@pytest.mark.anyio
async def test_the_record_handed_over_is_the_last_cut_kept_and_its_replays_followed_it() -> None:
    rule = Rule(lambda setting, run: True)
    kept: list[tuple[str, Setting]] = []
    shrunk = await shrink(rule, Setting(seed=3, tasks=3, calls=4, timeout_ms=None), replays=3,
                          on_step=lambda words, setting: kept.append((words, setting)))
    minimal = shrunk.minimal
    assert minimal.decisions is not None
    assert (minimal.tasks, minimal.calls, minimal.decisions.total) == (1, 1, 1)
    assert shrunk.steps == ("1 task", "1 call")
    assert kept[-1] == (shrunk.steps[-1], minimal)
    # The record is the recording run of the last cut kept: its decisions and its tape ...
    assert (minimal.decisions, minimal.tape) == (shrunk.result.decisions, shrunk.result.tape)
    recording = next(i for i, given in enumerate(rule.given) if given.record
                     and Tape((Arrival(0, i + 1, 0.0),)) == minimal.tape)
    # ... and the three runs after it made those decisions again and followed that tape.
    assert [(g.decisions, g.tape, g.record) for g in rule.given[recording + 1:recording + 4]] == [
        (minimal.decisions, minimal.tape, False)] * 3
    assert shrunk.failure == Failure(CallVerdict.WRONG, 0, None)


@pytest.mark.anyio
async def test_a_cut_is_kept_only_when_every_replay_of_its_record_fails() -> None:
    # Fewer than 3 tasks fail when recording and in the replays but the last: never reliably.
    rule = Rule(lambda setting, run: setting.tasks >= 3 or run < 4)
    shrunk = await shrink(rule, Setting(tasks=5, calls=2, timeout_ms=None), replays=4)
    assert shrunk.minimal.tasks == 3
    assert "1 task" not in shrunk.steps
    assert "2 tasks" not in shrunk.steps
    # With a replay fewer, the last replay is never made, and 1 task is kept.
    loose = await shrink(Rule(lambda setting, run: setting.tasks >= 3 or run < 4),
                         Setting(tasks=5, calls=2, timeout_ms=None), replays=3)
    assert loose.minimal.tasks == 1


@pytest.mark.anyio
async def test_a_run_that_fails_only_when_recording_is_not_failing() -> None:
    rule = Rule(lambda setting, run: run == 0)
    with pytest.raises(NotFailing, match=r"did not fail and come back in 2 of 2 replays in 3 tries"):
        await shrink(rule, Setting(tasks=2, calls=2, timeout_ms=None), replays=2)
    assert sum(given.record for given in rule.given) == 3


@pytest.mark.anyio
async def test_shrink_stops_at_its_run_budget() -> None:
    shrunk = await shrink(Rule(lambda setting, run: True), Setting(tasks=8, calls=8, timeout_ms=None),
                          replays=1, max_runs=4)
    assert (shrunk.runs, shrunk.budget_spent) == (4, True)
    assert shrunk.summary().endswith("(run budget spent); steps: 1 task")


@pytest.mark.anyio
@pytest.mark.parametrize(("arguments", "message"), [
    ({"replays": 0}, r"^replays must be an integer >= 1, got 0$"),
    ({"tries": 1.5}, r"^tries must be an integer >= 1, got 1\.5$"),
    ({"max_runs": None}, r"^max_runs must be an integer >= 1, got None$"),
])
async def test_bad_shrink_arguments_are_one_clear_line(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await shrink(Rule(lambda setting, run: True), Setting(), **arguments)


# ------------------------------------------------------------------ cutting a record


def _decisions() -> Decisions:
    """Two tasks: task 0 makes calls 2 (cut by its deadline at 3 ms) and 0; task 1 calls 1 and 3
    (call 3 cancelled at 4 ms)."""
    d = CallDecision
    return Decisions(9, ((d(2, 0, 0, 1, Interrupt.DEADLINE, 0.5, 3.0), d(0, 0, 1, 0, Interrupt.NONE, 0.1)),
                         (d(1, 1, 0, 2, Interrupt.NONE, 0.2), d(3, 1, 1, 0, Interrupt.CANCEL, 0.9, 4.0))),
                     calibrate=True)


TAPE = Tape((Piece(0, Direction.TO_SERVER, 7, 1, 0.0), Cut(2, 0.001),
             Piece(0, Direction.TO_CLIENT, 4, 2, 0.002), Cut(3, 0.003)))


def test_a_cut_drops_calls_renumbers_the_rest_and_takes_their_cuts_off_the_tape() -> None:
    made = cut(_decisions(), TAPE, drop={1})
    assert made is not None
    decisions, tape = made
    d = CallDecision
    # Calls 0, 2, 3 become 0, 1, 2; task 1 keeps only old call 3, now its first.
    assert decisions == Decisions(9, ((d(1, 0, 0, 1, Interrupt.DEADLINE, 0.5, 3.0),
                                       d(0, 0, 1, 0, Interrupt.NONE, 0.1)),
                                      (d(2, 1, 0, 0, Interrupt.CANCEL, 0.9, 4.0),)), calibrate=True)
    assert tape == Tape((TAPE.entries[0], Cut(1, 0.001), TAPE.entries[2], Cut(2, 0.003)))


def test_a_freed_call_runs_without_a_cut_and_a_task_left_empty_goes() -> None:
    made = cut(_decisions(), TAPE, drop={1, 3}, free={2})
    assert made is not None
    decisions, tape = made
    assert decisions.tasks == 1
    assert [(x.index, x.interrupt, x.at_ms) for x in decisions.lanes[0]] == [(1, Interrupt.NONE, None),
                                                                            (0, Interrupt.NONE, None)]
    assert tape == Tape((TAPE.entries[0], TAPE.entries[2]))
    assert cut(_decisions(), None, drop={0, 1, 2, 3}) is None


def test_candidates_go_from_the_biggest_cut_to_the_smallest() -> None:
    setting = Setting(tasks=2, calls=2, timeout_ms=(1.0, 5.0), faults=Faults(delay_ms=(2.0, 2.5), split=1.0),
                      decisions=_decisions(), tape=TAPE)
    # Call 3 got call 2's reply: the failure names tasks 0 and 1.
    words = [words for words, _ in candidates(setting, Failure(CallVerdict.CROSSED, 3, 2))]
    assert words == [
        "1 task", "1 task",  # task 0 alone, task 1 alone
        "1 call", "1 call", "2 calls",  # call 2 alone, call 3 alone, both
        "3 calls", "3 calls", "3 calls", "3 calls",  # one less: 0 (after 2 in its task), 1, then 2 and 3
        "1 call cut short", "1 call cut short",  # call 3's cut taken away, then call 2's
        "no calibration round",  # every moment is resolved
        "no split", "no delay", "faults to_client only", "faults to_server only"]
    by_words = dict(candidates(setting, Failure(CallVerdict.CROSSED, 3, 2)))
    # A cut of the decisions keeps the (cut) tape; a cut of the faults records afresh.
    assert by_words["2 calls"].tape == Tape((TAPE.entries[0], Cut(0, 0.001), TAPE.entries[2], Cut(1, 0.003)))
    assert by_words["no split"].tape is None
    assert by_words["no split"].decisions == setting.decisions
    assert by_words["2 calls"].describe() == ("seed 0, 2 tasks x 1 call, deadlines 3-3 ms, faults: "
                                              "delay 2-2.5 ms, split")


def test_the_naive_client_crosses_without_any_deadline_and_shrinks_to_two_tasks() -> None:
    # Two tasks: the second's read is refused while the first waits, and its reply goes to the first.
    setting = Setting(tasks=4, calls=5, timeout_ms=None, faults=Faults(delay_ms=(5.0, 20.0)))
    shrunk = in_process(shrink(decided_attempt("naive"), setting, replays=2))
    assert (shrunk.minimal.tasks, shrunk.minimal.timeout_ms) == (2, None)
    assert shrunk.minimal.decisions is not None
    assert shrunk.minimal.decisions.total == 3  # from 20: one call less and it no longer crosses
    assert shrunk.failure is not None
    assert shrunk.failure.verdict is CallVerdict.CROSSED


def test_a_record_says_its_deadlines_as_the_range_they_fell_in_a_range_a_run_accepts() -> None:
    d = CallDecision
    decisions = Decisions(1, ((d(0, 0, 0, 0, Interrupt.DEADLINE, 0.1, 0.04), d(1, 0, 1, 0, Interrupt.DEADLINE,
                                                                               0.2, 1.23)),), calibrate=False)
    setting = described(Setting(tasks=5, calls=9, timeout_ms="auto", decisions=decisions))
    assert (setting.tasks, setting.calls, setting.timeout_ms) == (1, 2, (0.1, 1.3))
    assert check_timeout(setting.timeout_ms) == (0.1, 1.3)
    freed = cut(decisions, None, free={0, 1})
    assert freed is not None
    assert described(Setting(timeout_ms="auto", decisions=freed[0])).timeout_ms is None


def test_the_other_calls_go_by_halves_quarters_and_eighths_before_one_by_one() -> None:
    from sockrace.check.decisions import draw

    decisions = draw(3, 1, 16, None, 0.0)  # one task of 16 calls, none cut short
    failure = Failure(CallVerdict.WRONG, 0, None)
    dropped = [16 - made.decisions.total for words, made in candidates(Setting(decisions=decisions), failure)
               if made.decisions is not None]
    # Call 0 alone, the 12 calls after it (it is the task's fourth), then halves, quarters and eighths
    # of the 15 others, then each of the 16 alone, call 0 last (the one that was an eighth already is
    # not tried again).
    assert dropped[:16] == [15, 12, 8, 7, 4, 4, 3, 4, 2, 2, 2, 2, 1, 2, 2, 2]
    assert dropped[16:] == [1] * 15
