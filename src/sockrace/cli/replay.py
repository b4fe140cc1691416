"""The `replay` command: argparse only. Read its arguments once (`read`), load a run record
(`sockrace check ... --save FILE`), run its decisions again following its tape, print how often its
failure came back, return an exit code."""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sockrace import loop as loops
from sockrace.cli.options import Commands, add_command, add_loop_option, address, bounded_int
from sockrace.cli.output import (
    EXIT_CHECK_FAILED,
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_SCENARIO,
    EXIT_USAGE,
    emit,
    fail,
)
from sockrace.cli.runs import DEFAULT_REPEAT, RunLoop, arm_watchdog, run_to_end

if TYPE_CHECKING:
    from sockrace.check.explore import Setting
    from sockrace.check.result import HammerResult


def add_replay_command(commands: Commands) -> None:
    parser = add_command(
        commands, "replay", "bring back a failing run saved with `sockrace check ... --save FILE`",
        "Run the saved run's decisions again, --repeat times, each following the order of writes and\n"
        "cuts the saved run recorded, and count how often the same failure comes back (the same\n"
        "verdict on the same call pair; through a driver, which follows no recorded order, the same\n"
        "verdict). The scenario is loaded by the name the record holds (run from where that name\n"
        "resolves); --upstream points the replay at another server, --python or --driver runs it\n"
        "under another interpreter or driver. Exit 1 when the failure came back at least once, 0\n"
        "when it never did.",
    )
    parser.add_argument("file", metavar="FILE", help="a run record written by `sockrace check --save`")
    parser.add_argument("--repeat", type=bounded_int(1, 10_000), default=DEFAULT_REPEAT, metavar="K",
                        help="how many runs (default: %(default)s)")
    parser.add_argument("--upstream", type=address(1), metavar="HOST:PORT",
                        help="the server to replay against (default: the record's)")
    runs_under = parser.add_mutually_exclusive_group()
    runs_under.add_argument("--python", metavar="PYTHON",
                            help="run the scenario under this interpreter through the Python driver, "
                            "with the record's backend (default: as the record ran)")
    runs_under.add_argument("--driver", metavar="COMMAND",
                            help="run the scenario through this driver (docs/driver.md; `node`: the "
                            "shipped Node driver) (default: as the record ran)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback behind an error of the scenario")
    add_loop_option(parser)


@dataclass(frozen=True, slots=True)
class ReplayCommand:
    """`sockrace replay` as its command line asked for it."""

    file: str
    repeat: int = DEFAULT_REPEAT
    upstream: tuple[str, int] | None = None  # None: the record's
    loop: str = loops.DEFAULT_LOOP  # the loop, unless the record ran on the seeded loop
    json: bool = False
    debug: bool = False
    python: str | None = None  # None, and driver None: as the record ran
    driver: str | None = None


def read(args: argparse.Namespace) -> ReplayCommand:
    """The replay that `args` asks for; all that follows reads this, not `args`."""
    return ReplayCommand(args.file, repeat=args.repeat, upstream=args.upstream, loop=args.loop,
                         json=args.json, debug=args.debug, python=args.python, driver=args.driver)


def run_replay_command(args: argparse.Namespace) -> int:
    return run(read(args))


def run(command: ReplayCommand) -> int:
    from sockrace.check.explore import check_attempt, replay
    from sockrace.check.hammer import HammerError
    from sockrace.check.record import load
    from sockrace.check.runner import CheckConfig, UpstreamError
    from sockrace.check.scenario import ScenarioError, ScenarioNotFound
    from sockrace.errors import DriverNotStarted, RecordError

    try:
        record = load(command.file)
    except RecordError as exc:
        return fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        return fail(f"cannot read {command.file}: {exc.strerror or exc}", EXIT_USAGE)
    setting = record.setting
    upstream = command.upstream or record.upstream
    driver = record.driver
    if command.python is not None or command.driver is not None:
        from sockrace.check.driver_commands import replaced

        try:
            driver = replaced(record.driver, python=command.python, driver=command.driver)
        except ValueError as exc:
            return fail(f"--driver: {exc}", EXIT_USAGE)
    config = CheckConfig(record.scenario, upstream, setting, deadline_s=record.deadline_s,
                         faults_in_setup=record.faults_in_setup, driver=driver)
    # The loop the record ran on: the seeded loop with its schedule, or --loop's.
    schedule = record.schedule
    loop = (RunLoop(command.loop) if schedule is None
            else RunLoop(command.loop, schedule["perturbation"], int(schedule["seed"])))
    try:
        attempt = check_attempt(config)

        async def watched(run_setting: Setting) -> HammerResult:
            arm_watchdog(config, "its deadline of")
            return await attempt(run_setting)

        again = run_to_end(replay(watched, setting, repeat=command.repeat, failure=record.failure,
                                  same_pair=driver is None),
                           loop.factory(setting.seed), debug=command.debug)
    except ScenarioNotFound as exc:
        return fail(f"{exc} (replay runs the scenario by the name the record holds)", EXIT_USAGE)
    except DriverNotStarted as exc:
        return fail(f"{exc} (--python PYTHON or --driver COMMAND replays through another)", EXIT_SCENARIO)
    except (ScenarioError, HammerError) as exc:
        return fail(str(exc), EXIT_SCENARIO)
    except UpstreamError as exc:
        return fail(f"{exc} (is the server running there? --upstream points elsewhere)", EXIT_NETWORK)
    except OSError as exc:
        return fail(f"cannot start the proxy: {exc.strerror or exc}", EXIT_NETWORK)
    if command.json:
        from sockrace.check_report import record_replay_document

        emit(json.dumps(record_replay_document(record, again, file=command.file, upstream=upstream),
                        indent=2))
    else:
        host, port = upstream
        emit(f"sockrace replay {command.file}: {record.scenario} against {host}:{port}, "
             f"{setting.describe()}, {again.repeat} times")
        emit(f"recorded: {record.story}")
        emit(again.summary())
        if (pacing := again.pacing()) is not None:
            emit(pacing)
        if driver is not None:
            emit(f"through the driver {shlex.join(driver)}: the recorded decisions are made again "
                 "(order, yields, cuts and their moments); the recorded order on the wire is not followed "
                 "(docs/driver.md)")
    return EXIT_CHECK_FAILED if again.same else EXIT_OK
