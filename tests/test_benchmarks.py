"""The benchmark's pieces work, so that it cannot silently rot.

Structure only: no speed is judged here.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import ab, commands, counter_demo, end_to_end, goals, output, reference, results, rounds
from benchmarks import run as run_script
from benchmarks.commands import Timing
from benchmarks.processes import ProcessPool, Worker, cpu_seconds, environment
from benchmarks.variants import PIPELINED_REQUESTS, THIS_TREE, Settings, Tree, Variant, build_groups


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"ECHO a b\n", b"OK a b\n"),
        (b"ping\r\n", b"OK PONG\n"),
        (b"#t7 ECHO x\n", b"#t7 OK x\n"),
        (b"GET k\n", b"ERR UNKNOWN the reference server knows ECHO and PING only\n"),
    ],
)
def test_reference_answer(line: bytes, reply: bytes) -> None:
    assert reference.answer(line) == reply


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    settings = Settings(
        runs=2, scale=0.002, inproc=True, end_to_end=False, memory=False,
        sections=("lock-step server", "pipelined server", "locked client", "pipelining clients c=100"),
    )
    return results.run_suite(settings)


@pytest.mark.timeout(60)
def test_every_selected_variant_is_measured(document: dict[str, Any]) -> None:
    groups = document["groups"]
    assert [g["name"] for g in groups] == [  # names are matched as substrings: c=100 selects c=1000 too
        "lock-step server", "pipelined server", "locked client", "pipelining clients c=100",
        "pipelining clients c=1000",
    ]
    assert document["failed"] == []
    assert document["commands"] == document["memory"] == []
    for group in groups:
        assert group["rows"][0]["reference"]
        assert group["rows"][0]["ratio"] == 1.0
        for row in group["rows"]:
            assert row["error"] is None, row
            assert row["wrong_replies"] == 0
            assert len(row["runs_req_per_s"]) == 2
            assert row["req_per_s"] > 0
            assert row["ratio"] > 0
            assert 0 < row["p50_ms"] <= row["p99_ms"]


@pytest.mark.timeout(60)
def test_goals_table_and_markdown(document: dict[str, Any], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    measured_goals = document["goals"]
    assert len(measured_goals) == 11
    assert {g["status"] for g in measured_goals} <= {"met", "not met", "tie within noise", "not available"}
    # The lock-step goal is judged on its own short rounds, at least 21 of them.
    assert len(measured_goals[2]["per_round"]) >= goals.LOCKSTEP_GOAL_ROUNDS
    # Measured in this run: the two server goals that need only the reference clients.
    assert measured_goals[0]["value"] is not None
    assert measured_goals[2]["value"] is not None
    table = output.format_table(document)
    assert "pipelined server" in table
    assert "reference windowed c=100 -> bulk server" in table
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(document))
    assert run_script.main(["--markdown", str(results_file)]) == 0
    markdown = capsys.readouterr().out
    assert markdown.startswith("Measured ")
    assert "| goal | measured | status |" in markdown
    assert "| locked client | sockrace locked c=1000 -> sockrace server |" in markdown


def test_markdown_of_a_missing_or_foreign_file_is_one_line(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert run_script.main(["--markdown", str(tmp_path / "none.json")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("run.py: cannot read results from ")
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"name": "not a results document"}')
    assert run_script.main(["--markdown", str(foreign)]) == 2
    assert capsys.readouterr().err == (f"run.py: {foreign} is not a results document of run.py "
                                       "(KeyError: 'machine')\n")


def test_only_that_selects_nothing_is_refused_before_measuring(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_script.main(["--only", "no such group"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("run.py: --only 'no such group' selects nothing; choose words from: ")
    assert "lock-step server, pipelined server," in line
    assert line.endswith(", end to end, idle memory, check speed, verbs")


def test_an_unwritable_output_is_refused_before_measuring(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "missing" / "results.json"
    assert run_script.main(["--output", str(target)]) == 2
    assert capsys.readouterr().err == f"run.py: cannot write results to {target}: no such directory\n"


@pytest.mark.timeout(30)
def test_separate_server_and_client_processes_answer_and_report_cpu() -> None:
    pool = ProcessPool(Settings().trees)
    try:
        variant = Variant("reference pipelined", "bulk", concurrency=5)
        outcome = rounds.Measurement(variant)
        rounds.measure_run(variant, 4, Settings(), pool, outcome, keep=True)
        assert outcome.error is None
        assert (len(outcome.latencies), outcome.wrong, len(outcome.rates)) == (20, 0, 1)
        assert outcome.client_cpu_us[0] > 0
        server_pid, _ = pool.server(THIS_TREE, "bulk", "asyncio")
        assert cpu_seconds(server_pid) is not None or not sys.platform.startswith("linux")
    finally:
        pool.close()
    assert not pool.servers
    assert not pool.workers


@pytest.mark.timeout(30)
def test_a_failing_job_is_reported_and_the_worker_goes_on() -> None:
    worker = Worker(Settings().trees[0])
    try:
        assert worker.ask({"job": "counter", "program": "no such program", "coroutines": 1,
                           "loop": "asyncio"}) == {"error": "KeyError: 'no such program'"}
        assert "seconds" in worker.ask({"job": "counter", "program": "seed", "coroutines": 10,
                                        "loop": "asyncio"})
    finally:
        worker.close()
    assert worker.process.returncode == 0


def test_run_script_refuses_missing_uvloop(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert run_script.main(["--loop", "uvloop", "--no-output"]) == 2
    assert "uvloop is not installed" in capsys.readouterr().err


def test_ratios_pair_the_runs_of_the_same_round() -> None:
    # A machine that halves its speed between rounds slows both sides of each pair alike.
    top = Variant("sockrace locked", "sockrace")
    bottom = Variant("reference lock-step", "readline")
    measured = {top: rounds.Measurement(top, rates=[10.0, 5.0, 8.0]),
                bottom: rounds.Measurement(bottom, rates=[5.0, 10.0, 4.0])}
    assert rounds.round_ratios(measured, top, bottom) == [2.0, 0.5, 2.0]
    assert rounds.median_ratio(measured, top, bottom) == 2.0  # not the ratio of the medians (8 / 5)
    goal = {"goal": "g", "value": 2.0, "per_round": [2.0, 0.5, 2.0], "unit": "x", "status": "met"}
    assert output.goal_value(goal) == "2.00x (rounds: 0.50 to 2.00)"


def test_seed_program_loses_updates_without_the_lock_and_counts_them_with_it() -> None:
    assert asyncio.run(reference.seed_counter(100)) == 1
    assert asyncio.run(reference.seed_counter(100, asyncio.Lock())) == 100


@pytest.mark.timeout(30)
def test_end_to_end_times_the_counter_demo_next_to_the_seed_program(monkeypatch: pytest.MonkeyPatch) -> None:
    commands_run: list[list[str]] = []

    def fake_command(timing: Timing, args: list[str], tree: Tree) -> None:
        commands_run.append(args)
        timing.seconds.append(1.0)

    monkeypatch.setattr(commands, "time_once", fake_command)
    monkeypatch.setattr(counter_demo, "COUNTER_COROUTINES", 200)
    (timings,) = end_to_end.time_end_to_end(Settings().trees, "asyncio", 3, lambda _: None, seed_program=True)
    assert list(timings) == ["compare", "counter demo", "seed program", "counter"]
    assert commands_run == [["compare"], ["counter"]] * 3
    demo, seed = timings["counter demo"], timings["seed program"]
    assert (demo.error, seed.error) == (None, None)
    assert len(demo.seconds) == len(seed.seconds) == 3
    (note,) = counter_demo.counter_notes(timings)
    assert note.startswith(f"counter demo {round(demo.median_s, 3):.2f} s, the seed tutorial's program")
    ratios = sorted(d / s for d, s in zip(demo.seconds, seed.seconds, strict=True))
    assert f"{ratios[1]:.2f}x (runs: {ratios[0]:.2f} to {ratios[2]:.2f};" in note


def test_machine_note_divides_this_machine_by_the_reference_one() -> None:
    lockstep = Variant("reference lock-step", "readline")
    bulk = Variant("reference pipelined", "bulk", 100, PIPELINED_REQUESTS)
    measured = {lockstep: rounds.Measurement(lockstep, rates=[8_000.0, 9_000.0, 10_000.0]),
                bulk: rounds.Measurement(bulk, rates=[135_000.0])}
    (note,) = goals.machine_notes(measured)
    assert note == ("this machine against the one the goals were set on: "
                    "reference lock-step c=1 -> readline server 9,000 req/s against 9,000 (1.00x); "
                    "reference pipelined c=100 -> bulk server 135,000 req/s against 270,000 (0.50x)")
    on_uvloop = Variant("reference lock-step", "readline", loop="uvloop")
    assert goals.machine_notes({on_uvloop: rounds.Measurement(on_uvloop, rates=[15_000.0])}) == []
    assert goals.machine_notes({}) == []


def test_the_reference_machine_figures_are_measured_as_a_group() -> None:
    (group,) = [g for g in build_groups("asyncio", False) if g.name == "reference machine"]
    measured = {(v.client, v.server, v.concurrency) for v in group.variants}
    assert measured == set(goals.REFERENCE_MACHINE)


def test_only_strategies_selects_the_strategy_comparison_alone() -> None:
    settings = Settings(sections=("strategies",))
    (group,) = results.selected_groups(settings)
    assert [v.mode for v in group.variants] == ["locked", "locked-cancel-safe", "pipelined", "multiplexed"]
    assert {v.concurrency for v in group.variants} == {100}
    assert not settings.selects(results.END_TO_END)
    assert not settings.selects(results.IDLE_MEMORY)
    assert Settings().selects(results.END_TO_END)


# ------------------------------------------------------------------------------------------------ A/B


def test_export_tree_extracts_the_refs_src(tmp_path: Path) -> None:
    tree = ab.export_tree("HEAD", tmp_path)
    assert tree.src == tmp_path / "src"
    assert (tree.src / "sockrace" / "__init__.py").is_file()
    assert not (tmp_path / "benchmarks").exists()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).parent).stdout.strip()
    assert tree.name == head


def test_a_tree_is_what_its_processes_import(tmp_path: Path) -> None:
    tree = ab.export_tree("HEAD", tmp_path)
    imported = subprocess.run([sys.executable, "-c", "import sockrace; print(sockrace.__file__)"],
                              capture_output=True, text=True, check=True, env=environment(tree),
                              timeout=30).stdout.strip()
    assert Path(imported) == tree.src / "sockrace" / "__init__.py"
    # Every benchmark process gets the same malloc behaviour, whatever it imported before measuring.
    assert environment(tree)["MALLOC_MMAP_THRESHOLD_"] == str(128 * 1024)


def test_a_bad_ref_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ab.ExportError, match=r"^'no-such-ref' is not a commit of this repository$"):
        ab.export_tree("no-such-ref", Path("."))
    assert run_script.main(["--against", "no-such-ref"]) == 2
    assert capsys.readouterr().err == "run.py: --against: 'no-such-ref' is not a commit of this repository\n"


@pytest.mark.timeout(60)
def test_ab_measures_the_sockrace_rows_on_both_trees(tmp_path: Path) -> None:
    other = ab.export_tree("HEAD", tmp_path)
    settings = Settings(runs=2, scale=0.002, inproc=True, end_to_end=False, memory=False,
                        sections=("lock-step server",))
    document = ab.run_ab(settings, other)
    (row,) = document["rows"]  # the readline() row runs no sockrace code: left out
    assert row["measured"] == "reference lock-step c=1 -> sockrace server [asyncio]"
    assert row["error"] is None
    assert row["this"] > 0
    assert row["other"] > 0
    assert len(row["rounds"]) == 2
    assert row["cpu_ratio"] is None  # inproc: client and server CPU cannot be told apart
    assert document["other"] == other.name
    assert document["failed"] == []


def test_ab_table_names_the_rows_below_the_threshold() -> None:
    document = {
        "this": "abc1234", "other": "e952412", "threshold": 0.95, "settings": {"runs": 3},
        "rows": [
            {"measured": "fast row", "unit": "req/s", "this": 2000.0, "other": 1000.0, "ratio": 2.0,
             "rounds": [1.5, 2.0, 2.5], "cpu_ratio": 1.25, "error": None},
            {"measured": "python -m sockrace compare", "unit": "s", "this": 1.5, "other": 1.2, "ratio": 0.8,
             "rounds": [0.7, 0.8, 0.9], "cpu_ratio": None, "error": None},
        ],
        "below": ["python -m sockrace compare"],
    }
    table = ab.format_ab(document)
    lines = table.splitlines()
    assert lines[0].split() == ["measured", "this", "tree", "(abc1234)", "e952412", "ratio", "rounds",
                                "CPU/req", "ratio"]
    assert lines[2].split() == ["fast", "row", "2,000", "req/s", "1,000", "req/s", "2.00x",
                                "1.50", "to", "2.50", "1.25x"]
    assert "1.50 s" in lines[3]
    assert "0.80x" in lines[3]
    assert lines[-1] == "rows below 0.95x: python -m sockrace compare"
