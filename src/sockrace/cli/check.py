"""The `check` command: argparse only. Read its arguments once into a CheckCommand (`read`: the
library's CheckConfig, the loop, what to explore and print), run it (`run`: the library, sockrace.check),
print, return an exit code (cli/output.py, EXIT_CODES). Sweeps, replays and shrinks are cli/explore.py's;
the `proxy` command, which shares the fault options, is cli/proxy.py."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sockrace.cli.faults import add_fault_options, read_faults
from sockrace.cli.options import (
    CommandParser,
    Commands,
    add_command,
    add_loop_option,
    address,
    bounded_int,
    call_timeout,
    positive_float,
)
from sockrace.cli.output import (
    EXIT_CHECK_FAILED,
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_SCENARIO,
    EXIT_USAGE,
    UsageError,
    emit,
    fail,
    print_check_result,
    print_check_timeline,
)
from sockrace.cli.runs import (
    DEFAULT_DEADLINE_S,
    DEFAULT_PERTURBATION,
    DEFAULT_REPEAT,
    WATCHDOG_GRACE_S,
    CheckCommand,
    RunLoop,
    SeedReplay,
    SeedSweep,
    arm_watchdog,
    replay_command,
    run_to_end,
    save_failure,
    write_html,
)

if TYPE_CHECKING:
    from sockrace.check.runner import CheckRun

# The library's defaults and limits, repeated so that building the parser imports nothing of
# sockrace.check (50-80 ms for every command); test_cli_check pins each to the library's own.
DEFAULT_TASKS: Final = 10
DEFAULT_CALLS: Final = 20
# The Python driver's backends (drivers/python_driver.py's BACKENDS; test_cli_check pins it).
BACKENDS: Final = ("asyncio", "threads", "trio")


def _add_setup_faults_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--faults-in-setup", action="store_true",
                        help="apply the faults to the scenario's set-up too (default: they begin with the "
                        "first call, so that loading data is not slowed down)")


def add_check_command(commands: Commands) -> None:
    parser = add_command(
        commands, "check", "check your own client: concurrent calls, seeded cancellations, through a proxy",
        "Start a seeded fault proxy in front of --upstream, let your scenario set up its client against\n"
        "the proxy, and make many concurrent calls through that one client, some cut short by seeded\n"
        "deadlines. Every call's value is judged: did it get another call's reply?\n\n"
        "SCENARIO is FILE.py:FUNC (or module:FUNC). FUNC receives the proxy's address (host, port) and\n"
        "is either an async function returning (call, expect), or an async generator yielding\n"
        "(call, expect) once and cleaning up after it. call(i) makes call i through your client and\n"
        "returns an awaitable; expect(i) is the value call i must return (unique among the calls in\n"
        "flight, so that a crossed reply shows). See examples/sockrace_clients.py.",
    )
    parser.add_argument("scenario", metavar="SCENARIO", help="FILE.py:FUNC or module:FUNC")
    parser.add_argument("--upstream", type=address(1), required=True, metavar="HOST:PORT",
                        help="the server your client talks to (the proxy forwards to it)")
    parser.add_argument("--tasks", type=bounded_int(1, 10_000), default=DEFAULT_TASKS,
                        help="concurrent tasks sharing the client (default: %(default)s)")
    parser.add_argument("--calls", type=bounded_int(1, 100_000), default=DEFAULT_CALLS,
                        help="calls per task (default: %(default)s)")
    parser.add_argument("--timeout", type=call_timeout, default="auto", metavar="auto|none|LO-HI",
                        help="each call's deadline: auto (drawn around the latency the run measures), "
                        "none, or drawn in LO-HI ms (default: auto)")
    add_fault_options(parser)
    _add_setup_faults_option(parser)
    seed = parser.add_argument("--seed", type=int,
                               help="seeds every decision: call order, deadlines, faults (default: 0)")
    parser.add_argument("--deadline", type=positive_float("s"), default=DEFAULT_DEADLINE_S, metavar="SECONDS",
                        help="bound on the whole run, the scenario's set-up and clean-up included; a run "
                        f"still going {WATCHDOG_GRACE_S:g} s past it ends the process with exit "
                        f"{EXIT_SCENARIO} (default: %(default)g)")
    parser.add_argument("--stall-timeout", type=positive_float("s"), metavar="SECONDS",
                        help="calls still waiting when, for this long, the server owed nothing, no byte "
                        "moved and no call finished are stuck (default: auto, 4x the slowest call seen, "
                        "at least 0.25 s; sooner when nothing in the event loop could wake them)")
    _add_driver_options(parser)
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--timeline", action="store_true",
                        help="print every call's start and end in order, one column per task")
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report to FILE")
    parser.add_argument("--save", metavar="FILE",
                        help="write the failing run's record to FILE (the run, a sweep's first failing seed, "
                        "or the shrunk run), for `sockrace replay FILE` in any process or machine")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback behind an error of the scenario or of the first failed call")
    add_loop_option(parser)
    _add_explore_options(parser, seed)


def _add_driver_options(parser: CommandParser) -> None:
    """Where the scenario runs: in this process, or in a driver (docs/driver.md)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--python", metavar="PYTHON",
                       help="run the scenario under this Python interpreter (3.7 or newer; a virtualenv's, "
                       "say) through sockrace's Python driver; sockrace need not be installed there")
    where.add_argument("--driver", metavar="COMMAND",
                       help="run the scenario in this driver process, a command line split as a shell "
                       "would (docs/driver.md); `node`: sockrace's Node.js driver")
    parser.add_argument("--backend", choices=BACKENDS, metavar="{" + ",".join(BACKENDS) + "}",
                        help="how the Python driver runs the scenario: asyncio (the default), threads (a "
                        "plain function's sync client shared by one thread per task, cut by its own "
                        "timeout) or trio; other than asyncio without --python, under this interpreter")
    parser.add_argument("--client-timeout", type=positive_float("ms"), metavar="MS",
                        help="the client's own timeout: without --delay, the proxy delays each round trip to "
                        "a seeded 0.5x to 1.5x of it, so that about half of the calls time out (with "
                        "--backend threads, calibrated on a first round run without faults)")


def jobs_count(text: str) -> int | str:
    """--jobs: a number of worker processes from 1, or "auto" (one per CPU)."""
    if text.strip() == "auto":
        return "auto"
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, or auto, got {text!r}")
    return jobs


def parse_shard(text: str) -> tuple[int, int]:
    """--shard K/N (1 <= K <= N) as (K, N); ValueError in one line otherwise."""
    k, slash, n = text.strip().partition("/")
    try:
        shard, shards = int(k), int(n)
    except ValueError:
        shard = shards = 0
    if not slash or shards < 1 or not 1 <= shard <= shards:
        raise ValueError(f"--shard must be K/N with 1 <= K <= N (e.g. 2/3), got {text!r}")
    return shard, shards


def _add_explore_options(parser: CommandParser, seed: argparse.Action) -> None:
    """The four modes of a check (a run, a sweep, a replay, a shrink), which argparse keeps apart:
    --seed, --seeds and --replay exclude each other, --replay excludes --shrink, --shuffle excludes
    --reverse, and --all and --repeat each need the option they refine."""
    explore = parser.add_argument_group(
        "find it, replay it, shrink it",
        "exit 1 when a seed failed (--seeds), when the failure came back at least once (--replay), or when\n"
        "a failing run was shrunk (--shrink); 0 when nothing failed")
    seeds = explore.add_argument(
        "--seeds", metavar="LO-HI",
        help="run once per seed (a fresh proxy and client each), stop at the first that fails and print "
        "the command that replays it")
    keep_going = explore.add_argument(
        "--all", action="store_true",
        help="with --seeds: go on through every seed and report the failure rate")
    jobs = explore.add_argument(
        "--jobs", type=jobs_count, default=1, metavar="N|auto",
        help="with --seeds: run seeds in N worker processes at once (auto: one per CPU), each with its own "
        "proxy, scenario and event loop; the same verdicts as one process (default: 1, in this process)")
    shard = explore.add_argument(
        "--shard", metavar="K/N",
        help="with --seeds: run only the Kth of N slices of the seeds (seed number i of the range goes to "
        "slice i mod N), so that N jobs of a CI matrix share one sweep (docs/ci-matrix.md)")
    replay = explore.add_argument(
        "--replay", type=int, metavar="SEED",
        help="run SEED --repeat times and count how often the same failure comes back (each run after the "
        "first follows its order of writes and cuts; see docs/when-a-check-fails.md)")
    repeat = explore.add_argument(
        "--repeat", type=bounded_int(1, 10_000), metavar="K",
        help=f"with --replay: how many runs (default: {DEFAULT_REPEAT})")
    shrink = explore.add_argument(
        "--shrink", action="store_true",
        help="from the failing run (--seed, or the first failing seed of --seeds), find the smallest run "
        "that still fails and tell its story")
    explore.add_argument(
        "--schedule-seed", type=int, metavar="N",
        help="run on an event loop that reorders ready callbacks from seed N (default with "
        "--shuffle/--reverse: each run's own seed)")
    shuffle = explore.add_argument(
        "--shuffle", action="store_true",
        help="the seeded loop shuffles each batch of ready callbacks (its default)")
    reverse = explore.add_argument(
        "--reverse", action="store_true",
        help="the seeded loop reverses a batch of ready callbacks on a seeded coin flip")
    parser.exclusive(seed, seeds, replay)
    parser.exclusive(replay, shrink)
    parser.exclusive(shuffle, reverse)
    parser.needs(keep_going, seeds)
    parser.needs(jobs, seeds)
    parser.needs(shard, seeds)
    parser.needs(repeat, replay)


# ------------------------------------------------------------------ reading them, once


def read(args: argparse.Namespace) -> CheckCommand:
    """The check that `args` asks for; all that follows reads this, not `args`."""
    from sockrace.check.explore import parse_seeds
    from sockrace.check.runner import CheckConfig, Setting

    sweep = None
    if args.seeds is not None:
        try:
            seeds = parse_seeds(args.seeds)
        except ValueError as exc:
            raise UsageError(f"--seeds: {exc}") from None
        shard = None
        if args.shard is not None:
            try:
                shard = parse_shard(args.shard)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            seeds = seeds[shard[0] - 1::shard[1]]
        jobs = (os.cpu_count() or 1) if args.jobs == "auto" else args.jobs
        sweep = SeedSweep(seeds, args.seeds, keep_going=args.all, jobs=jobs, shard=shard)
    scheduled = args.schedule_seed is not None or args.shuffle or args.reverse
    if scheduled and args.loop != "asyncio":
        raise UsageError(f"--schedule-seed, --shuffle and --reverse run on asyncio's loop, "
                         f"not --loop {args.loop}")
    loop = RunLoop(args.loop, perturbation=None if not scheduled else "reverse" if args.reverse
                   else DEFAULT_PERTURBATION, schedule_seed=args.schedule_seed)
    if args.backend == "threads" and isinstance(args.timeout, tuple):
        raise UsageError("--backend threads cannot cut a call (a thread cannot be cancelled): its cut is "
                         "the client's own timeout, which --client-timeout makes fire; leave --timeout out")
    # Nor does it draw deadlines: "auto" (the default) means none there, and says so.
    timeout = None if args.backend == "threads" else args.timeout
    try:
        faults = read_faults(args)
        client_timeout_ms = None  # a --delay given is kept as given
        if args.client_timeout is not None and faults.delay_ms is None:
            from sockrace.check.driver import delays_around  # refined by a threads run's first round

            delay_ms = delays_around(args.client_timeout, faults.direction)
            faults = dataclasses.replace(faults, delay_ms=delay_ms)
            client_timeout_ms = args.client_timeout  # a driver's threads calibrate around it
        setting = Setting(seed=0 if args.seed is None else args.seed, tasks=args.tasks, calls=args.calls,
                          timeout_ms=timeout, faults=faults, client_timeout_ms=client_timeout_ms,
                          stall_s="auto" if args.stall_timeout is None else args.stall_timeout)
    except ValueError as exc:  # a combination of faults the library refuses
        raise UsageError(str(exc)) from None
    driver = None
    python = args.python
    if python is None and args.driver is None and args.backend not in (None, "asyncio"):
        python = sys.executable  # a backend sockrace's own process does not run: the driver does
    if python is not None or args.driver is not None:
        from sockrace.check.driver_commands import driver_command

        if args.driver is not None and args.backend is not None:
            raise UsageError("--backend chooses the Python driver's backend (--python); a --driver "
                             "runs its own")
        try:
            driver = driver_command(python=python, driver=args.driver, backend=args.backend)
        except ValueError as exc:
            raise UsageError(f"--driver: {exc}") from None
    config = CheckConfig(args.scenario, args.upstream, setting, deadline_s=args.deadline,
                         faults_in_setup=args.faults_in_setup, driver=driver)
    return CheckCommand(
        config, loop, sweep=sweep,
        replay=None if args.replay is None else SeedReplay(args.replay, args.repeat or DEFAULT_REPEAT),
        shrink=args.shrink, json=args.json, timeline=args.timeline, html=args.html, save=args.save,
        debug=args.debug)


# ------------------------------------------------------------------ running them


def _debug(command: CheckCommand, exc: BaseException) -> None:
    if command.debug:
        emit("".join(traceback.format_exception(exc.__cause__ or exc)).rstrip("\n"), sys.stderr)


def _check_document(command: CheckCommand, run: CheckRun, replay: str) -> dict[str, Any]:
    from sockrace import check_report

    return check_report.check_document(run, schedule=command.loop.schedule(run.config.seed), replay=replay)


def _print_check(command: CheckCommand, run: CheckRun, replay: str) -> None:
    side = sys.stderr if command.json else sys.stdout  # with --json, stdout stays one JSON document
    if command.timeline:
        print_check_timeline(run.result, side)
    if command.json:
        emit(json.dumps(_check_document(command, run, replay), indent=2))
        return
    config = run.config
    (host, port), (proxy_host, proxy_port) = config.upstream, run.proxy_address
    emit(f"sockrace check {config.scenario}: {config.tasks} tasks x {config.calls} calls, "
         f"seed {config.seed}, through a proxy on {proxy_host}:{proxy_port} to {host}:{port} "
         f"(faults: {config.faults.describe()})\n")
    print_check_result(run.result)
    emit()
    emit(f"replay: {replay}")


def _verdict(command: CheckCommand, run: CheckRun) -> int:
    result = run.result
    first_failed = next((o for o in result.outcomes if o.record.exception is not None), None)
    if command.debug and first_failed is not None and first_failed.record.traceback:
        emit(f"the first failed call, {first_failed.index}:", sys.stderr)
        emit(first_failed.record.traceback.rstrip("\n"), sys.stderr)
    if not result.ok:
        return EXIT_CHECK_FAILED
    if run.upstream_failed:
        first = run.refused[0].params
        return fail(f"the upstream {first.get('upstream')} refused {len(run.refused)} of the proxy's "
                    f"connections during the run ({first.get('error')}): did it stop?", EXIT_NETWORK)
    if result.deadline_hit:  # the server still owed replies (a stuck client fails above)
        return fail(f"the run did not finish within --deadline {run.config.deadline_s:g} s: "
                    f"{result.unfinished} calls unfinished", EXIT_SCENARIO)
    return EXIT_OK


def run_check_command(args: argparse.Namespace) -> int:
    return run(read(args))


def run(command: CheckCommand) -> int:
    from sockrace.check.hammer import HammerError
    from sockrace.check.runner import UpstreamError, run_check
    from sockrace.check.scenario import ScenarioError, ScenarioNotFound

    config = command.config
    if command.html and not Path(command.html).parent.is_dir():
        return fail(f"cannot write --html {command.html}: no such directory", EXIT_USAGE)
    try:
        if command.explores:
            from sockrace.cli.explore import run_explore

            return run_explore(command)
        if command.save:  # the record keeps the run's tape, for its replays to follow
            config = config.with_setting(dataclasses.replace(config.setting, record=True))
        arm_watchdog(config)
        done = run_to_end(run_check(config), command.loop.factory(config.seed), debug=command.debug)
    except ScenarioNotFound as exc:
        _debug(command, exc)
        return fail(str(exc), EXIT_USAGE)
    except ScenarioError as exc:
        _debug(command, exc)
        return fail(str(exc), EXIT_SCENARIO)
    except HammerError as exc:
        _debug(command, exc)
        return fail(f"scenario {config.scenario}: {exc}", EXIT_SCENARIO)
    except UpstreamError as exc:
        _debug(command, exc)
        return fail(f"{exc} (is the server running there?)", EXIT_NETWORK)
    except ValueError as exc:  # a combination of options the library refuses, e.g. too many calls
        return fail(f"check: {exc}", EXIT_USAGE)
    except OSError as exc:
        _debug(command, exc)
        return fail(f"cannot start the proxy: {exc.strerror or exc}", EXIT_NETWORK)
    return _report(command, done)


def _report(command: CheckCommand, run: CheckRun) -> int:
    """The HTML file, the printed run, the saved record, then the verdict's exit code."""
    setting = run.config.setting
    replay = replay_command(command, setting)
    if command.html and (code := write_html(command, run.result, setting, replay)) is not None:
        return code
    _print_check(command, run, replay)
    if command.save:
        if run.result.ok:
            emit(f"sockrace: nothing failed: --save {command.save} not written", sys.stderr)
        elif (code := save_failure(command, setting, run.result)) is not None:
            return code
    return _verdict(command, run)
