"""The `replay` command: argparse only. Load a run record (`sockrace check ... --save FILE`), run its
decisions again following its tape, print how often its failure came back, return an exit code."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from sockrace.cli.check import Commands, _add_command
from sockrace.cli.options import add_loop_option, address, bounded_int
from sockrace.cli.output import (
    EXIT_CHECK_FAILED,
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_SCENARIO,
    EXIT_USAGE,
    emit,
    fail,
)
from sockrace.cli.runs import DEFAULT_REPEAT, WATCHDOG, WATCHDOG_GRACE_S, event_loop, run_to_end

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

    from sockrace.check.explore import Setting
    from sockrace.check.record import RunRecord
    from sockrace.check.result import HammerResult


def add_replay_command(commands: Commands) -> None:
    parser = _add_command(
        commands, "replay", "bring back a failing run saved with `sockrace check ... --save FILE`",
        "Run the saved run's decisions again, --repeat times, each following the order of writes and\n"
        "cuts the saved run recorded, and count how often the same failure comes back (the same\n"
        "verdict on the same call pair). The scenario is loaded by the name the record holds (run\n"
        "from where that name resolves); --upstream points the replay at another server.\n"
        "Exit 1 when the failure came back at least once, 0 when it never did.",
    )
    parser.add_argument("file", metavar="FILE", help="a run record written by `sockrace check --save`")
    parser.add_argument("--repeat", type=bounded_int(1, 10_000), default=DEFAULT_REPEAT, metavar="K",
                        help="how many runs (default: %(default)s)")
    parser.add_argument("--upstream", type=address(1), metavar="HOST:PORT",
                        help="the server to replay against (default: the record's)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback behind an error of the scenario")
    add_loop_option(parser)


def run_replay_command(args: argparse.Namespace) -> int:
    from sockrace.check.explore import check_attempt, replay
    from sockrace.check.hammer import HammerError
    from sockrace.check.record import load
    from sockrace.check.runner import CheckConfig, UpstreamError
    from sockrace.check.scenario import ScenarioError, ScenarioNotFound
    from sockrace.errors import RecordError

    try:
        record = load(args.file)
    except RecordError as exc:
        return fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        return fail(f"cannot read {args.file}: {exc.strerror or exc}", EXIT_USAGE)
    setting = record.setting
    upstream = args.upstream or record.upstream
    config = CheckConfig(record.scenario, upstream, tasks=setting.tasks, calls=setting.calls,
                         timeout_ms=setting.timeout_ms, faults=setting.faults, seed=setting.seed,
                         deadline_s=record.deadline_s,
                         stall_s="auto" if record.stall_s is None else record.stall_s,
                         faults_in_setup=record.faults_in_setup)
    try:
        attempt = check_attempt(config)

        async def watched(run_setting: Setting) -> HammerResult:
            WATCHDOG.arm(record.deadline_s + WATCHDOG_GRACE_S,
                         f"scenario {record.scenario}: the run went on {WATCHDOG_GRACE_S:g} s past its "
                         f"deadline of {record.deadline_s:g} s: ended it")
            return await attempt(run_setting)

        again = run_to_end(replay(watched, setting, repeat=args.repeat, failure=record.failure),
                           _loop(args, record), debug=args.debug)
    except ScenarioNotFound as exc:
        return fail(f"{exc} (replay runs the scenario by the name the record holds)", EXIT_USAGE)
    except (ScenarioError, HammerError) as exc:
        return fail(str(exc), EXIT_SCENARIO)
    except UpstreamError as exc:
        return fail(f"{exc} (is the server running there? --upstream points elsewhere)", EXIT_NETWORK)
    except OSError as exc:
        return fail(f"cannot start the proxy: {exc.strerror or exc}", EXIT_NETWORK)
    if args.json:
        from sockrace.check_report import record_replay_document

        emit(json.dumps(record_replay_document(record, again, file=args.file, upstream=upstream), indent=2))
    else:
        host, port = upstream
        emit(f"sockrace replay {args.file}: {record.scenario} against {host}:{port}, {setting.describe()}, "
             f"{again.repeat} times")
        emit(f"recorded: {record.story}")
        emit(again.summary())
        if (pacing := again.pacing()) is not None:
            emit(pacing)
    return EXIT_CHECK_FAILED if again.same else EXIT_OK


def _loop(args: argparse.Namespace, record: RunRecord) -> Callable[[], asyncio.AbstractEventLoop]:
    """The loop the record ran on: the seeded loop with its schedule, or --loop's."""
    schedule = record.schedule
    if schedule is None:
        return event_loop(args.loop, None)
    return event_loop(args.loop, (int(schedule["seed"]), schedule["perturbation"]))
