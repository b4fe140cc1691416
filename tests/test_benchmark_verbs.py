"""benchmarks/verbs.py: the C pipelining client counts every reply, and the script prints each mix.

Structure only, with tiny runs: no speed is judged here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import verbs
from benchmarks.processes import start_server_process, stop_server_process
from benchmarks.variants import REPO_ROOT, THIS_TREE, Tree
from sockrace import loop as loops

HAS_COMPILER = any(map(shutil.which, ("cc", "gcc", "clang")))
needs_compiler = pytest.mark.skipif(not HAS_COMPILER and os.environ.get("CI") != "true",
                                    reason="no C compiler (cc, gcc or clang)")


@pytest.fixture(scope="module")
def client_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    program = verbs.compile_client(tmp_path_factory.mktemp("pipeline"))
    assert program is not None
    return program


@pytest.fixture
def sockrace_target() -> Iterator[verbs.Target]:
    process, port = start_server_process("sockrace", loops.DEFAULT_LOOP, Tree(THIS_TREE, REPO_ROOT / "src"))
    try:
        yield verbs.Target("sockrace", port, "lines")
    finally:
        stop_server_process(process)


@needs_compiler
@pytest.mark.timeout(60)
def test_the_client_counts_every_reply_and_each_error(client_program: Path,
                                                      sockrace_target: verbs.Target) -> None:
    run = verbs.run_client(client_program, sockrace_target, 300, ["PING", "#t7 ECHO a b", "SET k v"])
    assert run.rate > 0
    # Every GET of a missing key is an ERR reply: counted, and the run refused.
    refused = r"^sockrace: 50 replies to 50 requests, 25 of them errors$"
    with pytest.raises(verbs.BenchmarkError, match=refused):
        verbs.run_client(client_program, sockrace_target, 50, ["GET k", "GET missing"])


@needs_compiler
@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("redis-server") is None and os.environ.get("CI") != "true",
                    reason="redis-server is not installed")
def test_resp_replies_are_counted_whole(client_program: Path) -> None:
    # Bulk strings are two lines, a missing key one ($-1), errors "-": the count must still match.
    with verbs.redis_server() as redis:
        assert redis is not None
        lines = [*verbs.MIXES["mixed"], "GET nothing", "PING"]
        assert verbs.run_client(client_program, redis, 400, lines).rate > 0
        with pytest.raises(verbs.BenchmarkError, match=r"^redis-server: 40 replies to 40 requests, 20 of"):
            verbs.run_client(client_program, redis, 40, ["PING", "INCR key:1"])


@needs_compiler
@pytest.mark.timeout(120)
def test_the_script_prints_every_mix(capsys: pytest.CaptureFixture[str]) -> None:
    assert verbs.main(["--rounds", "1", "--count", "300"]) == 0
    out = capsys.readouterr().out
    for mix in verbs.MIXES:
        assert f"\n{mix:<6} sockrace " in out
    if shutil.which("redis-server") is not None:
        assert "redis-server" in out
        assert out.count(">= ") == len(verbs.GOALS)


def test_a_bad_mix_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        verbs.main(["--mixes", "GET,HSET"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("got 'GET,HSET'")


def test_each_row_shows_its_ratios_to_the_anchor_and_the_goal() -> None:
    figures = {"GET": {"sockrace": [verbs.Run(300.0, 2.0), verbs.Run(500.0, None)],
                       "redis-server": [verbs.Run(1000.0, 1.0), verbs.Run(500.0, 0.5)]}}
    sockrace_row, redis_row = verbs.format_figures(figures, "redis-server").splitlines()[1:]
    # Ratios 0.3 and 1.0 (median 0.65); CPU: redis's 1.0 us over sockrace's 2.0 us, the run without
    # a figure left out.
    assert sockrace_row.split() == ["GET", "sockrace", "400", "0.65x", "0.30-1.00x", "2.00us", "0.50x",
                                    "0.50-0.50x", ">=", "0.5x:", "met"]
    assert redis_row.split() == ["GET", "redis-server", "750", "0.75us"]


@needs_compiler
@pytest.mark.timeout(60)
def test_lock_step_rows_are_reported_without_goals(capsys: pytest.CaptureFixture[str]) -> None:
    # The goals were set at 100 requests in flight: a lock-step run (--window 1) judges none.
    assert verbs.main(["--rounds", "1", "--count", "50", "--window", "1", "--mixes", "GET,PING"]) == 0
    out = capsys.readouterr().out
    assert "1 in flight" in out
    assert "\nGET    sockrace " in out
    assert ">= " not in out


def test_the_records_hold_the_same_figures_as_numbers() -> None:
    figures = {"PING": {"sockrace": [verbs.Run(900.0, 1.0)], "redis-server": [verbs.Run(1000.0, 0.5)]}}
    sockrace, redis = verbs.summarize(figures, "redis-server")
    assert sockrace == {"mix": "PING", "server": "sockrace", "req_s": 900.0, "cpu_us": 1.0,
                        "ratio": {"median": 0.9, "low": 0.9, "high": 0.9},
                        "cpu_ratio": {"median": 0.5, "low": 0.5, "high": 0.5}, "goal": 1.0, "met": False}
    assert redis == {"mix": "PING", "server": "redis-server", "req_s": 1000.0, "cpu_us": 0.5}
    assert "MISSED" in verbs.format_figures(figures, "redis-server")
