"""`sockrace check --seeds LO-HI --shard K/N`: a deterministic slice of the seeds, so that the jobs of
a CI matrix share one sweep: the shards together try every seed once, and their per-seed JSON
records put together are the whole sweep's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import NAIVE, ThreadedServer, write_scenario
from sockrace.cli import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, main
from sockrace.cli.check import parse_shard

pytestmark = pytest.mark.timeout(60)

ECHO = '''
import asyncio

async def echo(address):
    return (lambda i: asyncio.sleep(0, i)), (lambda i: i)
'''
SMALL = ("--tasks", "2", "--calls", "3", "--timeout", "none", "--deadline", "20")


def sweep(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(list(args))
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("text", "expected"), [("1/3", (1, 3)), ("3/3", (3, 3)), ("1/1", (1, 1)),
                                                (" 2/5 ", (2, 5))])
def test_a_shard_is_k_of_n(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["0/3", "4/3", "x", "3", "1/0", "-1/3", "1/3/4", "a/b", "/3", "1/"])
def test_a_bad_shard_is_one_line_and_exit_2(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", NAIVE, "--upstream", "127.0.0.1:1", "--seeds", "1-30", f"--shard={text}"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.count("\n") == 1
    assert f"--shard must be K/N with 1 <= K <= N (e.g. 2/3), got {text!r}" in err


def test_shard_needs_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", NAIVE, "--upstream", "127.0.0.1:1", "--shard", "1/2"]) == EXIT_USAGE
    assert "--shard" in capsys.readouterr().err


def test_three_shards_try_every_seed_once_and_their_records_are_the_whole_sweeps(
        tmp_path: Path, threaded_server: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = write_scenario(tmp_path, "echo", ECHO)
    args = ["check", scenario, "--upstream", threaded_server.upstream, *SMALL, "--seeds", "1-30", "--all",
            "--json"]
    code, whole = sweep(capsys, *args)
    assert code == EXIT_OK
    shards = []
    for k in (1, 2, 3):
        code, shard = sweep(capsys, *args, "--shard", f"{k}/3")
        assert code == EXIT_OK
        assert shard["shard"] == f"{k}/3"
        assert shard["seeds"] == "1-30"
        shards.append(shard)
    tried = [run["seed"] for shard in shards for run in shard["runs"]]
    assert sorted(tried) == list(range(1, 31))
    assert len(tried) == len(set(tried)) == sum(shard["tried"] for shard in shards)
    assert [run["seed"] for run in shards[0]["runs"]] == [1, 4, 7, 10, 13, 16, 19, 22, 25, 28]

    def records(document: dict[str, Any]) -> list[tuple[int, str, object]]:
        return [(run["seed"], run["verdict"], run["counts"]) for run in document["runs"]]

    merged = sorted(record for shard in shards for record in records(shard))
    assert merged == records(whole)
    assert whole["shard"] is None


def test_a_shard_of_the_naive_client_fails_at_its_own_first_seed(threaded_server: ThreadedServer,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", NAIVE, "--upstream", threaded_server.upstream, "--seeds", "1-30", "--shard", "2/3"])
    out = capsys.readouterr().out
    assert code == EXIT_CHECK_FAILED
    assert out.splitlines()[0].startswith(f"sockrace check {NAIVE}: seeds 1-30, shard 2/3, ")
    assert "1 seeds tried, 1 failing (100%): seed 2 (crossed)" in out
    assert "--replay 2 --repeat 10" in out


def test_shards_and_jobs_go_together(tmp_path: Path, threaded_server: ThreadedServer,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    scenario = write_scenario(tmp_path, "echo", ECHO)
    code, shard = sweep(capsys, "check", scenario, "--upstream", threaded_server.upstream, *SMALL,
                        "--seeds", "0-9", "--all", "--json", "--shard", "3/4", "--jobs", "2")
    assert code == EXIT_OK
    assert [run["seed"] for run in shard["runs"]] == [2, 6]


def test_a_shard_past_the_last_seed_tries_none(tmp_path: Path, threaded_server: ThreadedServer,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    scenario = write_scenario(tmp_path, "echo", ECHO)
    code, shard = sweep(capsys, "check", scenario, "--upstream", threaded_server.upstream, *SMALL,
                        "--seeds", "1-2", "--all", "--json", "--shard", "3/3")
    assert code == EXIT_OK
    assert shard["tried"] == 0


def test_a_shard_past_the_last_seed_says_it_holds_none(tmp_path: Path, threaded_server: ThreadedServer,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    scenario = write_scenario(tmp_path, "echo", ECHO)
    code = main(["check", scenario, "--upstream", threaded_server.upstream, *SMALL, "--seeds", "1-2",
                 "--shard", "3/3"])
    assert code == EXIT_OK
    assert "shard 3/3 of 2 seeds holds none of them: nothing to check" in capsys.readouterr().out
