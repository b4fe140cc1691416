"""The benchmark suite's pieces work, so that it cannot silently rot.

Structure only: no speed is judged here.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from benchmarks import reference, suite
from benchmarks import run as run_script
from sockrace.client import STRATEGIES


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
def document() -> dict[str, object]:
    settings = suite.Settings(
        runs=2, scale=0.002, inproc=True, end_to_end=False, memory=False,
        groups=("lock-step server", "pipelined server", "locked client", "pipelining clients c=100"),
    )
    return suite.run_suite(settings)


@pytest.mark.timeout(60)
def test_every_selected_variant_is_measured_or_marked_not_available(document: dict[str, object]) -> None:
    groups = document["groups"]
    assert isinstance(groups, list)
    assert [g["name"] for g in groups] == [  # names are matched as substrings: c=100 selects c=1000 too
        "lock-step server", "pipelined server", "locked client", "pipelining clients c=100",
        "pipelining clients c=1000",
    ]
    assert document["failed"] == []
    for group in groups:
        assert group["rows"][0]["reference"]
        assert group["rows"][0]["ratio"] == 1.0
        for row in group["rows"]:
            mode = row["client"].removeprefix("sockrace ") if row["client"].startswith("sockrace ") else None
            if mode is not None and mode not in STRATEGIES:
                assert row["error"].startswith("not available"), row
                continue
            assert row["error"] is None, row
            assert row["wrong_replies"] == 0
            assert len(row["runs_req_per_s"]) == 2
            assert row["req_per_s"] > 0
            assert row["ratio"] > 0
            assert 0 < row["p50_ms"] <= row["p99_ms"]


@pytest.mark.timeout(60)
def test_goals_table_and_markdown(document: dict[str, object], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    goals = document["goals"]
    assert isinstance(goals, list)
    assert len(goals) == 9
    assert {g["status"] for g in goals} <= {"met", "not met", "not available"}
    # Measured in this run: the two server goals that need only the reference clients.
    assert goals[0]["value"] is not None
    assert goals[2]["value"] is not None
    table = suite.format_table(document)
    assert "pipelined server" in table
    assert "reference windowed c=100 -> bulk server" in table
    results = tmp_path / "results.json"
    results.write_text(json.dumps(document))
    assert run_script.main(["--markdown", str(results)]) == 0
    markdown = capsys.readouterr().out
    assert markdown.startswith("Measured ")
    assert "| goal | measured | status |" in markdown
    assert "| locked client | sockrace locked c=1000 -> sockrace server |" in markdown


@pytest.mark.timeout(30)
def test_separate_server_process_answers_and_reports_its_cpu() -> None:
    process, port = suite.start_server_process("bulk", "asyncio")
    try:
        variant = suite.Variant("reference pipelined", "bulk", concurrency=5)
        plan = suite.Plan.build(suite.WorkloadConfig(concurrency=5, requests=4, max_yields=0))
        rate, latencies, wrong, client_cpu = suite.loops.run(
            suite.measure_once(variant, plan, ("127.0.0.1", port))
        )
        assert (len(latencies), wrong) == (20, 0)
        assert rate > 0
        assert client_cpu > 0
        assert suite.cpu_seconds(process.pid) is not None or not sys.platform.startswith("linux")
    finally:
        suite.stop_server_process(process)
    assert process.returncode == 0


def test_run_script_refuses_missing_uvloop(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert run_script.main(["--loop", "uvloop", "--no-output"]) == 2
    assert "uvloop is not installed" in capsys.readouterr().err


def test_ratios_pair_the_runs_of_the_same_round() -> None:
    # A machine that halves its speed between rounds slows both sides of each pair alike.
    top = suite.Variant("sockrace locked", "sockrace")
    bottom = suite.Variant("reference lock-step", "readline")
    results = {top: suite.Measurement(top, rates=[10.0, 5.0, 8.0]),
               bottom: suite.Measurement(bottom, rates=[5.0, 10.0, 4.0])}
    assert suite.round_ratios(results, top, bottom) == [2.0, 0.5, 2.0]
    assert suite._ratio(results, top, bottom) == 2.0  # not the ratio of the medians (8 / 5)
    goal = {"goal": "g", "value": 2.0, "per_round": [2.0, 0.5, 2.0], "unit": "x", "status": "met"}
    assert suite._goal_value(goal) == "2.00x (rounds: 0.50 to 2.00)"


def test_seed_program_loses_updates_without_the_lock_and_counts_them_with_it() -> None:
    assert asyncio.run(reference.seed_counter(100)) == 1
    assert asyncio.run(reference.seed_counter(100, asyncio.Lock())) == 100


def test_counter_demo_is_timed_next_to_the_seed_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite, "COUNTER_COROUTINES", 200)
    demo, seed = suite.time_counter_demo("asyncio", 3)
    assert (demo.error, seed.error) == (None, None)
    assert len(demo.seconds) == len(seed.seconds) == 3
    (note,) = suite.counter_notes({"counter demo": demo, "seed program": seed})
    assert note.startswith(f"counter demo {round(demo.median_s, 3):.2f} s, the seed tutorial's program")
    ratios = sorted(d / s for d, s in zip(demo.seconds, seed.seconds, strict=True))
    assert f"{ratios[1]:.2f}x (runs: {ratios[0]:.2f} to {ratios[2]:.2f};" in note


def test_machine_note_divides_this_machine_by_the_reference_one() -> None:
    lockstep = suite.Variant("reference lock-step", "readline")
    bulk = suite.Variant("reference pipelined", "bulk", 100, suite.PIPELINED_REQUESTS)
    results = {lockstep: suite.Measurement(lockstep, rates=[8_000.0, 9_000.0, 10_000.0]),
               bulk: suite.Measurement(bulk, rates=[135_000.0])}
    (note,) = suite.machine_notes(results)
    assert note == ("this machine against the one the goals were set on: "
                    "reference lock-step c=1 -> readline server 9,000 req/s against 9,000 (1.00x); "
                    "reference pipelined c=100 -> bulk server 135,000 req/s against 270,000 (0.50x)")
    on_uvloop = suite.Variant("reference lock-step", "readline", loop="uvloop")
    assert suite.machine_notes({on_uvloop: suite.Measurement(on_uvloop, rates=[15_000.0])}) == []
    assert suite.machine_notes({}) == []


def test_the_reference_machine_figures_are_measured_as_a_group() -> None:
    (group,) = [g for g in suite.build_groups("asyncio", False) if g.name == "reference machine"]
    measured = {(v.client, v.server, v.concurrency) for v in group.variants}
    assert measured == set(suite.REFERENCE_MACHINE)
