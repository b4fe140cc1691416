"""`sockrace check --seeds / --replay / --shrink / --schedule-seed` as a user runs them, against a
sockrace server through the proxy: small scenarios whose outcome does not depend on timing, and the
naive client of examples/sockrace_clients.py."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from helpers import NAIVE, ThreadedServer
from sockrace.cli import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, main

pytestmark = pytest.mark.timeout(60)

SCENARIOS = '''
import asyncio

async def off_by_one(address):
    """Call i returns i + 1: every run fails, whatever the seed and size."""
    return (lambda i: asyncio.sleep(0, i + 1)), (lambda i: i)

async def echo(address):
    """Call i returns i: no run fails."""
    return (lambda i: asyncio.sleep(0, i)), (lambda i: i)

async def leaks(address):
    """Every call leaves behind a task that fails and that nobody awaits."""
    async def broken():
        raise ConnectionError("closed by the server")

    async def call(i):
        asyncio.get_running_loop().create_task(broken())
        await asyncio.sleep(0)
        return i

    return call, (lambda i: i)

async def fails_when_reordered(address):
    """Fails only on the seeded scheduling loop: proof that --schedule-seed runs on it."""
    seeded = type(asyncio.get_running_loop()).__name__ == "SeededEventLoop"
    return (lambda i: asyncio.sleep(0, -1 if seeded else i)), (lambda i: i)
'''
# Small and quick: the scenarios above answer at once, and no deadline is drawn.
SMALL = ("--tasks", "3", "--calls", "4", "--timeout", "none", "--deadline", "20")
# As docs/when-a-check-fails.md runs the naive client: every reply held 5 ms, deadlines 1-20 ms.
HELD = ("--tasks", "4", "--calls", "5", "--timeout", "1-20", "--delay", "5-5", "--direction", "to_client",
        "--deadline", "2")


@pytest.fixture
def scenarios(tmp_path: Path) -> Path:
    path = tmp_path / "explored.py"
    path.write_text(SCENARIOS)
    return path


def check(scenario: str, threaded_server: ThreadedServer, *options: str) -> list[str]:
    return ["check", scenario, "--upstream", threaded_server.upstream, *options]


def replay_line(out: str) -> list[str]:
    """The printed replay command, as main()'s arguments."""
    line = next(line for line in out.splitlines() if line.startswith("replay: "))
    words = shlex.split(line.removeprefix("replay: "))
    assert words[:2] == ["sockrace", "check"]
    return words[1:]


# ------------------------------------------------------------------ usage


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--seeds", "1-3", "--seed", "2"], "argument --seed: not allowed with argument --seeds"),
        (["--seeds", "1-3", "--replay", "2"], "argument --replay: not allowed with argument --seeds"),
        (["--replay", "1", "--seed", "1"], "argument --seed: not allowed with argument --replay"),
        (["--seed", "0", "--replay", "1"], "argument --replay: not allowed with argument --seed"),
        (["--replay", "1", "--shrink"], "argument --shrink: not allowed with argument --replay"),
        (["--shrink", "--replay", "1"], "argument --replay: not allowed with argument --shrink"),
        (["--all"], "argument --all: needs --seeds"),
        (["--shuffle", "--reverse"], "argument --reverse: not allowed with argument --shuffle"),
        (["--repeat", "3"], "argument --repeat: needs --replay"),
    ],
)
def test_options_that_contradict_each_other_are_refused_by_argparse(
    options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse's own refusal: the command's usage, then one line naming the command.
    assert main(["check", "x.py:f", "--upstream", "127.0.0.1:1", *options]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: sockrace check ")
    assert err.endswith(f"\nsockrace check: error: {message}\n")


@pytest.mark.parametrize(
    "options",
    [["--seed", "3", "--shrink"], ["--seeds", "1-3", "--shrink", "--all"], ["--replay", "2", "--repeat", "3"],
     ["--seeds", "4", "--reverse", "--schedule-seed", "1"]],
)
def test_the_modes_that_go_together_pass_argparse(options: list[str]) -> None:
    from sockrace.cli import build_parser

    args = build_parser().parse_args(["check", "x.py:f", "--upstream", "127.0.0.1:1", *options])
    assert args.command == "check"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--seeds", "5-1"],
         "sockrace: check: --seeds: seeds must be N or LO-HI with 0 <= LO <= HI, got '5-1'\n"),
        (["--seeds", "many"],
         "sockrace: check: --seeds: seeds must be N or LO-HI (e.g. 1-500), got 'many'\n"),
        (["--schedule-seed", "1", "--loop", "uvloop"],
         "sockrace: check: --schedule-seed, --shuffle and --reverse run on asyncio's loop, "
         "not --loop uvloop\n"),
    ],
)
def test_values_the_check_cannot_run_are_one_line(
    options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "x.py:f", "--upstream", "127.0.0.1:1", *options]) == EXIT_USAGE
    assert capsys.readouterr().err == message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--replay", "1", "--repeat", "0"], "argument --repeat: must be from 1 to 10000, got 0\n"),
        (["--schedule-seed", "x"], "argument --schedule-seed: invalid int value: 'x'\n"),
    ],
)
def test_bad_values_are_usage_errors(
    options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "x.py:f", "--upstream", "127.0.0.1:1", *options]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.endswith(message)
    assert "Traceback" not in err


def test_help_documents_the_exit_codes_of_sweep_replay_and_shrink(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--help"]) == EXIT_OK
    out = " ".join(capsys.readouterr().out.split())
    assert "exit 1 when a seed failed (--seeds), when the failure came back at least once (--replay)" in out
    for option in ("--seeds LO-HI", "--all", "--replay SEED", "--repeat K", "--shrink", "--schedule-seed N",
                   "--shuffle", "--reverse"):
        assert option in out


def test_the_command_lines_copies_of_the_librarys_defaults_agree_with_it() -> None:
    from sockrace.check import explore, schedule
    from sockrace.cli import runs as cli_runs

    assert cli_runs.DEFAULT_REPEAT == explore.DEFAULT_REPEAT
    assert cli_runs.DEFAULT_PERTURBATION == schedule.DEFAULT_PERTURBATION


@pytest.mark.parametrize(
    ("options", "ending"),
    [
        (["--loop", "uvloop"], "--seed 3 --loop uvloop"),
        (["--deadline", "2", "--schedule-seed", "9"], "--seed 3 --deadline 2 --schedule-seed 9 --shuffle"),
        (["--reverse"], "--seed 3 --reverse"),
    ],
)
def test_a_replay_command_carries_the_loop_and_its_schedule(options: list[str], ending: str) -> None:
    from sockrace.check.explore import Setting
    from sockrace.cli import build_parser
    from sockrace.cli import check as cli_check
    from sockrace.cli import runs as cli_runs

    args = build_parser().parse_args(["check", "s.py:f", "--upstream", "h:1", "--seed", "3", *options])
    replay = cli_runs.replay_command(cli_check.read(args), Setting(seed=3))
    assert replay == f"sockrace check s.py:f --upstream h:1 --tasks 10 --calls 20 --timeout auto {ending}"


# ------------------------------------------------------------------ sweep


def test_a_sweep_stops_at_the_first_failing_seed_and_prints_its_replay(
    threaded_server: ThreadedServer, scenarios: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = f"{scenarios}:off_by_one"
    assert main(check(scenario, threaded_server, *SMALL, "--seeds", "3-7")) == EXIT_CHECK_FAILED
    captured = capsys.readouterr()
    summary = r"^1 seeds tried, 1 failing \(100%\): seed 3 \(crossed\) \(\d+\.\d s\)$"
    assert re.search(summary, captured.out, re.MULTILINE)
    assert captured.err == ""  # not a terminal: no progress line
    words = replay_line(captured.out)
    assert words == ["check", scenario, "--upstream", threaded_server.upstream, "--tasks", "3",
                     "--calls", "4", "--timeout", "none", "--replay", "3", "--repeat", "10",
                     "--deadline", "20"]
    assert main([*words[:-6], "--replay", "3", "--repeat", "2", "--deadline", "20"]) == EXIT_CHECK_FAILED
    assert "in 2 of 2 runs" in capsys.readouterr().out


def test_a_sweep_through_all_seeds_reports_the_failure_rate_as_json(
    threaded_server: ThreadedServer, scenarios: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = (*SMALL, "--seeds", "1-4", "--all", "--json")
    assert main(check(f"{scenarios}:off_by_one", threaded_server, *options)) == EXIT_CHECK_FAILED
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert (document["tried"], document["failing_seeds"], document["failure_rate"]) == (4, [1, 2, 3, 4], 1.0)
    assert document["first_failure"]["seed"] == 1
    assert "--replay 1 --repeat 10" in document["replay"]
    assert captured.err == ""


def test_a_clean_sweep_exits_0_and_offers_no_replay(
    threaded_server: ThreadedServer, scenarios: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(check(f"{scenarios}:echo", threaded_server, *SMALL, "--seeds", "1-3", "--all")) == EXIT_OK
    out = capsys.readouterr().out
    assert re.search(r"^3 seeds tried, 0 failing \(\d+\.\d s\)$", out, re.MULTILINE)
    assert "replay:" not in out


def test_the_progress_line_shows_on_a_terminal_only(
    threaded_server: ThreadedServer, scenarios: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(check(f"{scenarios}:echo", threaded_server, *SMALL, "--seeds", "1-3", "--all")) == EXIT_OK
    err = capsys.readouterr().err
    assert "\rseeds 1/3, 0 failing, " in err
    assert "\rseeds 3/3, 0 failing, " in err
    assert err.endswith("\r")  # cleared before the summary is printed
    assert main(check(f"{scenarios}:echo", threaded_server, *SMALL, "--seeds", "1-3", "--json")) == EXIT_OK
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ replay


def test_a_replay_counts_how_often_the_failure_came_back(
    threaded_server: ThreadedServer, scenarios: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = (*SMALL, "--replay", "2", "--repeat", "3")
    assert main(check(f"{scenarios}:off_by_one", threaded_server, *options)) == EXIT_CHECK_FAILED
    out = capsys.readouterr().out
    same = r"^seed 2: call \d+ got call \d+'s reply in 3 of 3 runs \(3 of 3 failed at all\)$"
    assert re.search(same, out, re.MULTILINE)
    assert "near-exact" in out
    assert main(check(f"{scenarios}:off_by_one", threaded_server, *options, "--json")) == EXIT_CHECK_FAILED
    document = json.loads(capsys.readouterr().out)
    assert (document["seed"], document["repeat"], document["same"], document["exact"]) == (2, 3, 3, True)


def test_a_replay_without_failure_exits_0(
    threaded_server: ThreadedServer, scenarios: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replays = ("--replay", "1", "--repeat", "2")
    assert main(check(f"{scenarios}:echo", threaded_server, *SMALL, *replays)) == EXIT_OK
    assert "seed 1: no failure in 2 runs\n" in capsys.readouterr().out


@pytest.mark.parametrize("options", [("--seeds", "1-2"), ("--replay", "1", "--repeat", "1")])
def test_timeline_and_html_show_the_failing_run_of_a_sweep_or_a_replay(
    threaded_server: ThreadedServer, scenarios: Path, tmp_path: Path, options: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:
    html = tmp_path / "failing.html"
    shown = ("--tasks", "1", "--calls", "2", "--timeout", "none", *options, "--timeline", "--html", str(html))
    assert main(check(f"{scenarios}:off_by_one", threaded_server, *shown)) == EXIT_CHECK_FAILED
    captured = capsys.readouterr()
    assert re.search(r"t0\.\d got t0\.\d", captured.out)  # the timeline: one call got the other's value
    assert captured.err == f"sockrace: wrote the HTML report to {html}\n"
    assert "<html" in html.read_text(encoding="utf-8").lower()


# ------------------------------------------------------------------ shrink


def test_shrink_finds_the_smallest_failing_run_and_shows_it(
    threaded_server: ThreadedServer, scenarios: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html = tmp_path / "minimal.html"
    options = (*SMALL, "--seed", "5", "--shrink", "--timeline", "--html", str(html))
    assert main(check(f"{scenarios}:off_by_one", threaded_server, *options)) == EXIT_CHECK_FAILED
    out = capsys.readouterr().out
    assert "shrunk to seed 5, 1 task x 1 call, no deadlines, faults: none in " in out
    assert "steps: 1 task, 1 call\n" in out
    assert "call 0 (expects 0) returned 1, which no call of the run expects.\n" in out
    words = replay_line(out)
    assert words[words.index("--tasks"):] == ["--tasks", "1", "--calls", "1", "--timeout", "none",
                                               "--replay", "5", "--repeat", "10", "--deadline", "20"]
    assert "t0.0 wrong 1" in out  # the timeline of the minimal run, with the value no call expects
    assert "<html" in html.read_text(encoding="utf-8").lower()


def test_shrink_of_the_first_failing_seed_of_a_sweep(
    threaded_server: ThreadedServer, scenarios: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = (*SMALL, "--seeds", "4-9", "--shrink", "--json")
    assert main(check(f"{scenarios}:off_by_one", threaded_server, *options)) == EXIT_CHECK_FAILED
    document = json.loads(capsys.readouterr().out)
    assert document["sweep"]["failing_seeds"] == [4]
    assert document["shrink"]["minimal_arguments"] == ["--tasks", "1", "--calls", "1", "--timeout", "none",
                                                       "--seed", "4"]


@pytest.mark.parametrize("options", [("--seed", "1", "--shrink"), ("--seeds", "1-2", "--shrink")])
def test_nothing_to_shrink_exits_0(
    threaded_server: ThreadedServer, scenarios: Path, options: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(check(f"{scenarios}:echo", threaded_server, *SMALL, *options)) == EXIT_OK
    assert "nothing to shrink" in capsys.readouterr().out


# ------------------------------------------------------------------ the seeded scheduling loop


@pytest.mark.parametrize("order", ["--shuffle", "--reverse"])
def test_schedule_options_run_the_check_on_the_seeded_loop_and_replay_with_it(
    threaded_server: ThreadedServer, scenarios: Path, order: str, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = f"{scenarios}:fails_when_reordered"
    assert main(check(scenario, threaded_server, *SMALL)) == EXIT_OK
    capsys.readouterr()
    assert main(check(scenario, threaded_server, *SMALL, "--schedule-seed", "7", order)) == EXIT_CHECK_FAILED
    words = replay_line(capsys.readouterr().out)
    assert words[-5:] == ["--deadline", "20", "--schedule-seed", "7", order]
    assert main(words) == EXIT_CHECK_FAILED
    capsys.readouterr()
    assert main(check(scenario, threaded_server, *SMALL, order, "--seeds", "1-2")) == EXIT_CHECK_FAILED
    assert replay_line(capsys.readouterr().out)[-5:] == ["--repeat", "10", "--deadline", "20", order]


def test_a_single_run_on_the_seeded_loop_says_so_in_its_json(
    threaded_server: ThreadedServer, scenarios: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = ("--seed", "4", "--reverse", "--json")
    assert main(check(f"{scenarios}:echo", threaded_server, *SMALL, *options)) == EXIT_OK
    document = json.loads(capsys.readouterr().out)
    assert document["schedule"] == {"seed": 4, "perturbation": "reverse"}
    assert document["replay"].endswith("--seed 4 --deadline 20 --reverse")


def test_reset_is_a_check_option_and_its_replay_carries_it(
    threaded_server: ThreadedServer, scenarios: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = (*SMALL, "--reset", "0.5", "--seeds", "1-2")
    assert main(check(f"{scenarios}:off_by_one", threaded_server, *options)) == EXIT_CHECK_FAILED
    out = capsys.readouterr().out
    assert "faults: reset 0.5 after " in out
    assert "--timeout none --reset 0.5 --replay 1 --repeat 10" in shlex.join(replay_line(out))


@pytest.mark.parametrize("options", [("--seed", "1"), ("--seeds", "1-2", "--all")])
def test_errors_asyncio_reports_outside_the_calls_are_one_line_unless_debugging(
    threaded_server: ThreadedServer, scenarios: Path, options: tuple[str, ...],
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    leaks = ("--tasks", "2", "--calls", "2", "--timeout", "none", *options)
    assert main(check(f"{scenarios}:leaks", threaded_server, *leaks)) == EXIT_OK
    errors = 4 * (2 if "--all" in options else 1)
    assert capsys.readouterr().err == (
        f"sockrace: asyncio reported {errors} errors of the scenario outside the calls (first: Task "
        "exception was never retrieved: ConnectionError: closed by the server); --debug shows them\n")
    assert not caplog.records
    assert main(check(f"{scenarios}:leaks", threaded_server, *leaks, "--debug")) == EXIT_OK
    shown = [record.getMessage().partition("\n")[0] for record in caplog.records]
    assert shown == ["Task exception was never retrieved"] * errors
    assert capsys.readouterr().err.endswith(f"sockrace: asyncio reported {errors} errors of the scenario "
                                            "outside the calls (first: Task exception was never retrieved: "
                                            "ConnectionError: closed by the server)\n")


# ------------------------------------------------------------------ the naive client, as the docs run it


def test_the_naive_client_fails_within_20_seeds_and_its_failure_comes_back(
    threaded_server: ThreadedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(check(NAIVE, threaded_server, *HELD, "--seeds", "1-20")) == EXIT_CHECK_FAILED
    out = capsys.readouterr().out
    assert " failing (100%): seed " in out
    words = replay_line(out)
    repeat_at = words.index("--repeat")
    words[repeat_at + 1] = "3"
    assert main(words) == EXIT_CHECK_FAILED
    assert "of 3 runs" in capsys.readouterr().out


def test_shrinking_the_naive_client_ends_in_a_small_run(
    threaded_server: ThreadedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    options = (*HELD, "--seeds", "1-20", "--shrink")
    assert main(check(NAIVE, threaded_server, *options)) == EXIT_CHECK_FAILED
    out = capsys.readouterr().out
    assert "shrunk to seed " in out
    assert out.count("replay: ") == 1  # the minimal run's, not the sweep's
    minimal = replay_line(out)
    tasks, calls = (int(minimal[minimal.index(option) + 1]) for option in ("--tasks", "--calls"))
    assert tasks <= 2  # from 4 x 5; on this server it ends at 1 task x 2 calls
    assert calls <= 3
    assert re.search(r"was cancelled by its .* deadline .* its reply 'v\d+' was returned to call \d+", out)


def test_a_setting_is_spelled_as_the_options_of_sockrace_check() -> None:
    from sockrace.check import Faults, Setting
    from sockrace.cli.runs import replay_words, setting_words

    setting = Setting(seed=7, tasks=2, calls=3, timeout_ms="auto",
                      faults=Faults(delay_ms=(1.0, 2.5), split=1.0, coalesce=0.25, direction="to_server"))
    assert setting_words(setting) == ["--tasks", "2", "--calls", "3", "--timeout", "auto", "--delay",
                                      "1-2.5", "--split", "--coalesce", "0.25", "--direction", "to_server",
                                      "--seed", "7"]
    assert replay_words(setting, 3)[-4:] == ["--replay", "7", "--repeat", "3"]
    assert setting_words(Setting(timeout_ms=(1.0, 20.0), faults=Faults(reset=0.5, split=0.25)))[4:] == [
        "--timeout", "1-20", "--split", "0.25", "--reset", "0.5", "--seed", "0"]
