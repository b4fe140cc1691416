"""record.py and the commands around it: a failing run saved as a file, brought back by `sockrace replay`."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from pathlib import Path

import pytest

from helpers import NAIVE, RECONNECTING, ThreadedServer
from sockrace.check.decisions import draw
from sockrace.check.explore import Failure, Setting
from sockrace.check.faults import Direction, Faults
from sockrace.check.oracle import CallVerdict
from sockrace.check.record import FORMAT, VERSION, RunRecord, from_dict, load, save, to_dict
from sockrace.check.tape import Arrival, Cut, Piece, Reset, Tape
from sockrace.cli import EXIT_CHECK_FAILED, EXIT_NETWORK, EXIT_OK, EXIT_USAGE, main
from sockrace.errors import RecordError

pytestmark = pytest.mark.timeout(60)


def a_record() -> RunRecord:
    tape = Tape((Piece(0, Direction.TO_SERVER, 12, 0xDEADBEEF, 0.001, 3), Arrival(0, 12, 0.0005, 2),
                 Cut(4, 0.002, 5), Reset(1, Direction.TO_CLIENT, 0.003, None)))
    decisions = draw(7, 2, 3, "auto", 0.5)
    setting = Setting(7, 2, 3, "auto", Faults(delay_ms=(1, 2), split=0.5, direction="to_client"),
                      decisions=decisions, tape=tape)
    return RunRecord("examples/x.py:naive", ("127.0.0.1", 7777), setting, Failure(CallVerdict.CROSSED, 4, 1),
                     20.0, None, True, {"seed": 3, "perturbation": "reverse"}, "asyncio",
                     {"correct": 5, "crossed": 1}, "call 1 ... was returned to call 4", "0.1.0", "3.11.7")


def test_a_record_goes_through_a_file_unchanged(tmp_path: Path) -> None:
    record = a_record()
    path = tmp_path / "failure.json"
    save(record, path)
    again = load(path)
    assert to_dict(again) == to_dict(record)
    assert again.setting.decisions == record.setting.decisions
    assert again.setting.tape == record.setting.tape
    assert again.failure == record.failure
    assert again.setting.faults == record.setting.faults
    document = json.loads(path.read_text())
    assert (document["format"], document["version"]) == (FORMAT, VERSION)


@pytest.mark.parametrize(("text", "message"), [
    ("not json", r"^\S+ is not a sockrace run record: not JSON \("),
    ("[1, 2]", r"^\S+ is not a valid sockrace run record: not a JSON object$"),
    ('{"format": "something-else", "version": 1}',
     r"^\S+ is not a sockrace run record \(its format is 'something-else'\)$"),
    (json.dumps({"format": FORMAT, "version": VERSION + 1}),
     rf"^\S+ is a run record of version {VERSION + 1}; this sockrace reads version {VERSION} \(upgrade"),
    (json.dumps({"format": FORMAT, "version": VERSION}),
     r"^\S+ is not a valid sockrace run record: KeyError"),
])
def test_a_file_that_is_not_a_record_is_refused_in_one_sentence(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(RecordError, match=message) as caught:
        load(path)
    assert "\n" not in str(caught.value)


def test_fields_that_do_not_hold_together_are_refused() -> None:
    document = to_dict(a_record())
    document["decisions"]["lanes"][0][0][4] = "sometimes"  # not an interrupt kind
    with pytest.raises(RecordError, match="is not a valid sockrace run record: ValueError: 'sometimes'"):
        from_dict(document)


def test_a_failing_check_saved_comes_back_in_another_command(
    threaded_server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "naive.json"
    args = ["check", NAIVE, "--upstream", threaded_server.upstream, "--tasks", "4", "--calls", "5",
            "--seed", "1"]
    assert main([*args, "--save", str(saved)]) == EXIT_CHECK_FAILED
    captured = capsys.readouterr()
    assert captured.err.endswith(f"sockrace: saved the failing run to {saved} (sockrace replay {saved})\n")
    record = load(saved)
    assert record.failure is not None
    assert record.setting.tape is not None
    assert len(record.setting.tape) > 0
    assert main(["replay", str(saved), "--repeat", "3", "--json"]) == EXIT_CHECK_FAILED
    document = json.loads(capsys.readouterr().out)
    assert document["repeat"] == 3
    assert 1 <= document["came_back"] <= 3
    assert document["failure"] == record.failure.describe()
    assert len(document["followed"]) == 3
    # Where each run drifted from the tape: an entry of it, or null for a run that followed all of it.
    assert len(document["misaligned_at"]) == 3
    for share, drifted_at in zip(document["followed"], document["misaligned_at"], strict=True):
        if drifted_at is None:
            assert share == 1.0
        else:
            assert 0 <= drifted_at < len(record.setting.tape)
    assert main(["replay", str(saved), "--repeat", "2"]) == EXIT_CHECK_FAILED
    out = capsys.readouterr().out
    assert out.splitlines()[1] == f"recorded: {record.story}"
    assert f"seed 1: {record.failure.describe()} in " in out
    assert re.search(r"The one that kept to it least followed \d+ of \d+ entries of the tape \(\d+%\)", out)


def test_replay_points_at_another_server_with_upstream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "naive.json"
    with ThreadedServer() as first:
        args = ["check", NAIVE, "--upstream", first.upstream, "--tasks", "4", "--calls", "5", "--seed", "2",
                "--save", str(saved)]
        assert main(args) == EXIT_CHECK_FAILED
    capsys.readouterr()
    assert main(["replay", str(saved)]) == EXIT_NETWORK  # the server it was saved against is gone
    assert "(is the server running there? --upstream points elsewhere)" in capsys.readouterr().err
    with ThreadedServer() as second:
        replayed = ["replay", str(saved), "--upstream", second.upstream, "--repeat", "2"]
        assert main(replayed) == EXIT_CHECK_FAILED


def test_nothing_is_saved_when_nothing_failed(
    threaded_server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "none.json"
    args = ["check", RECONNECTING, "--upstream", threaded_server.upstream, "--tasks", "2", "--calls", "2",
            "--save", str(saved)]
    assert main(args) == EXIT_OK
    assert capsys.readouterr().err == f"sockrace: nothing failed: --save {saved} not written\n"
    assert not saved.exists()


def test_a_sweeps_first_failing_seed_is_saved_with_a_tape(
    threaded_server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Seeds 3 to 5 each cross (call 1 gets call 0's value whatever the order): the sweep stops at 3,
    # runs it once more recording its tape, and saves that run.
    scenario = tmp_path / "off_by_one.py"
    scenario.write_text(textwrap.dedent("""
        import asyncio
        async def off_by_one(address):
            return (lambda i: asyncio.sleep(0, max(i - 1, 0))), (lambda i: i)
    """))
    saved = tmp_path / "sweep.json"
    args = ["check", f"{scenario}:off_by_one", "--upstream", threaded_server.upstream, "--tasks", "1",
            "--calls", "2", "--timeout", "none", "--seeds", "3-5", "--save", str(saved)]
    assert main(args) == EXIT_CHECK_FAILED
    capsys.readouterr()
    record = load(saved)
    assert record.setting.seed == 3
    assert record.failure == Failure(CallVerdict.CROSSED, 1, 0)
    assert record.setting.tape is not None
    assert main(["replay", str(saved), "--repeat", "2", "--json"]) == EXIT_CHECK_FAILED
    assert json.loads(capsys.readouterr().out)["came_back"] == 2


def test_a_shrunk_run_is_saved_as_the_record_the_shrink_ended_with_and_comes_back(
    threaded_server: ThreadedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The naive client as docs/when-a-check-fails.md shrinks it: every reply held 5 ms, deadlines 1-20 ms.
    saved = tmp_path / "shrunk.json"
    args = ["check", NAIVE, "--upstream", threaded_server.upstream, "--tasks", "4", "--calls", "5",
            "--timeout", "1-20", "--delay", "5-5", "--direction", "to_client", "--deadline", "5",
            "--seed", "1", "--shrink", "--save", str(saved), "--json"]
    assert main(args) == EXIT_CHECK_FAILED
    shrunk = json.loads(capsys.readouterr().out)["shrink"]
    assert shrunk["replay"] == f"sockrace replay {saved} --repeat 10"
    record = load(saved)
    decisions = record.setting.decisions
    assert decisions is not None
    assert record.setting.tape is not None
    # The file holds the shrunk run: its size, counts and failure, not the 4 x 5 the shrink started from.
    assert record.setting.describe() == shrunk["minimal"]
    assert record.counts == shrunk["result"]["counts"]
    assert decisions.total < 20
    assert record.failure is not None
    assert record.failure.describe() == shrunk["failure"]
    assert record.story == shrunk["story"]
    assert main(["replay", str(saved), "--repeat", "5", "--json"]) == EXIT_CHECK_FAILED
    assert json.loads(capsys.readouterr().out)["came_back"] >= 4


def test_replay_of_a_file_that_is_not_a_record_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["replay", str(bad)]) == EXIT_USAGE
    assert capsys.readouterr().err == f"sockrace: {bad} is not a sockrace run record (its format is None)\n"
    assert main(["replay", str(tmp_path / "missing.json")]) == EXIT_USAGE
    assert "No such file or directory" in capsys.readouterr().err


def test_the_cancellations_and_the_stuck_bound_are_the_settings_and_go_through_a_file(tmp_path: Path) -> None:
    setting = dataclasses.replace(a_record().setting, cancel_fraction=0.25)
    record = dataclasses.replace(a_record(), setting=setting, stall_s=2.5)
    assert record.setting.stall_s == 2.5  # given as the file spells it, the setting has it too
    path = tmp_path / "failure.json"
    save(record, path)
    again = load(path)
    assert (again.setting.cancel_fraction, again.setting.stall_s, again.stall_s) == (0.25, 2.5, 2.5)
    assert again.setting == record.setting


def test_a_record_written_before_cancellations_were_an_input_reads_as_none() -> None:
    document = to_dict(a_record())
    del document["cancel_fraction"]
    assert from_dict(document).setting.cancel_fraction == 0.0


def test_where_the_recorded_run_left_the_tape_it_followed_goes_through_a_file(tmp_path: Path) -> None:
    record = dataclasses.replace(a_record(), misaligned_at=3)
    path = tmp_path / "failure.json"
    save(record, path)
    assert load(path).misaligned_at == 3
    document = to_dict(a_record())
    assert document["misaligned_at"] is None
    del document["misaligned_at"]  # as records made before it was kept
    assert from_dict(document).misaligned_at is None
