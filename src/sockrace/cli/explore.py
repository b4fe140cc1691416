"""`sockrace check --seeds / --replay / --shrink`: argparse's face of sockrace.check.explore and
sockrace.check.shrink. Each runs the check's Setting through `check_attempt` (a fresh proxy and
client per run), prints what it found and the command that replays it, and returns an exit code.

Imported by cli/check.py only when one of these options is given, so that it may import sockrace.check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from typing import Any, TextIO

from sockrace import check_report
from sockrace.check.explore import (
    Attempt,
    Progress,
    Replay,
    SeedRun,
    Setting,
    Sweep,
    check_attempt,
    parse_seeds,
    replay,
    setting_of,
    sweep,
)
from sockrace.check.result import HammerResult
from sockrace.check.runner import CheckConfig
from sockrace.check.schedule import Schedule, SeededEventLoop
from sockrace.check.shrink import NotFailing, Shrunk, shrink
from sockrace.cli.output import EXIT_CHECK_FAILED, EXIT_OK, UsageError, emit, print_check_timeline
from sockrace.cli.runs import (
    DEFAULT_REPEAT,
    arm_watchdog,
    closing_words,
    command_words,
    loop_factory,
    perturbation,
    replay_words,
    run_to_end,
    save_failure,
    scheduled,
    setting_words,
    write_html,
)

NEAR_EXACT = ("Over real sockets a replay is near-exact, not exact: the seed fixes every decision, and each "
              "run after the first follows its order of writes and cuts as long as the client keeps to it.")


def explores(args: argparse.Namespace) -> bool:
    return args.seeds is not None or args.replay is not None or args.shrink


def check_combination(args: argparse.Namespace) -> None:
    """Refuse options that contradict each other, in one line each (argparse checks each alone)."""
    clashes = [("--seeds", args.seeds is not None, "--seed", args.seed is not None),
               ("--seeds", args.seeds is not None, "--replay", args.replay is not None),
               ("--replay", args.replay is not None, "--seed", args.seed is not None),
               ("--replay", args.replay is not None, "--shrink", args.shrink)]
    clashes.append(("--shuffle", args.shuffle, "--reverse", args.reverse))
    for first, has_first, second, has_second in clashes:
        if has_first and has_second:
            raise UsageError(f"{first} and {second} cannot be used together")
    for option, given, needed, present in (("--all", args.all, "--seeds", args.seeds is not None),
                                            ("--repeat", args.repeat is not None, "--replay",
                                             args.replay is not None)):
        if given and not present:
            raise UsageError(f"{option} needs {needed}")
    if scheduled(args) and args.loop != "asyncio":
        raise UsageError(f"--schedule-seed, --shuffle and --reverse run on asyncio's loop, "
                         f"not --loop {args.loop}")


def replay_command(args: argparse.Namespace, setting: Setting, repeat: int = DEFAULT_REPEAT) -> str:
    """The command that replays `setting` `repeat` times, with the scenario, upstream and loop of `args`."""
    return shlex.join([*command_words(args), *replay_words(setting, repeat), *closing_words(args)])


def _attempt(args: argparse.Namespace, config: CheckConfig) -> Attempt:
    """check_attempt, each run under the watchdog; on the seeded loop, each run starts from a fresh
    schedule of its own seed, so that replaying one seed alone draws what it drew inside a sweep."""
    attempt = check_attempt(config)

    async def watched(setting: Setting) -> HammerResult:
        arm_watchdog(args)  # each run is bounded by --deadline, as a single check is
        loop = asyncio.get_running_loop()
        if scheduled(args) and isinstance(loop, SeededEventLoop):
            seed = setting.seed if args.schedule_seed is None else args.schedule_seed
            loop.schedule = Schedule(seed, perturbation(args))
        return await attempt(setting)

    return watched


class ProgressLine:
    """The sweep's progress, rewritten in place on a terminal; nothing when piped or with --json."""

    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.out = out
        self.shown = not args.json and out.isatty() and sys.stdout.isatty()
        self.width = 0

    def __call__(self, progress: Progress) -> None:
        if self.shown:
            line = progress.line()
            self._write(f"\r{line}{' ' * max(self.width - len(line), 0)}")
            self.width = len(line)

    def clear(self) -> None:
        if self.shown and self.width:
            self._write(f"\r{' ' * self.width}\r")

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except OSError:  # the terminal went away: the sweep goes on, and its summary says what it found
            self.shown = False


def _show_run(args: argparse.Namespace, result: HammerResult, setting: Setting) -> int | None:
    """--timeline and --html for the run that failed; an exit code when the HTML cannot be written."""
    if args.timeline:
        print_check_timeline(result, sys.stderr if args.json else sys.stdout)
    if args.html:
        return write_html(args, result, setting, replay_command(args, setting))
    return None


def _sweep_document(args: argparse.Namespace, found: Sweep) -> dict[str, Any]:
    first = found.first
    return check_report.sweep_document(
        found, scenario=args.scenario, upstream=args.upstream, seeds=args.seeds, keep_going=args.all,
        replay=None if first is None else replay_command(args, first.setting))


def _run_sweep(args: argparse.Namespace, attempt: Attempt, setting: Setting, seeds: range) -> Sweep:
    progress = ProgressLine(args, sys.stderr)
    try:
        return run_to_end(sweep(attempt, setting, seeds, keep_going=args.all, on_progress=progress),
                          loop_factory(args, setting.seed), debug=args.debug)
    finally:
        progress.clear()


def _print_sweep(args: argparse.Namespace, setting: Setting, seeds: range, found: Sweep) -> None:
    emit(f"sockrace check {args.scenario}: seeds {seeds.start}-{seeds.stop - 1}"
         f"{' (all)' if args.all else ''}, {setting.describe().partition(', ')[2]}")
    emit(f"{found.summary()} ({found.elapsed_s:.1f} s)")
    if found.first is not None and not args.shrink:  # a shrink tells the story of its minimal run
        emit()
        emit(found.first.result.explain())
        emit()
        emit(f"replay: {replay_command(args, found.first.setting)}")


def run_sweep(args: argparse.Namespace, config: CheckConfig) -> int:
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        raise UsageError(f"--seeds: {exc}") from None
    setting = setting_of(config)
    found = _run_sweep(args, _attempt(args, config), setting, seeds)
    if args.shrink:
        if not args.json:
            _print_sweep(args, setting, seeds, found)
        if found.first is None:
            if args.json:
                emit(json.dumps({"sweep": _sweep_document(args, found), "shrink": None}, indent=2))
            else:
                emit("\nno failing seed: nothing to shrink")
            return EXIT_OK
        return _shrink_and_print(args, config, found.first.setting, found)
    first = found.first
    if first is not None and (code := _show_run(args, first.result, first.setting)) is not None:
        return code
    if args.save and (code := _save(args, config, first)) is not None:
        return code
    if args.json:
        emit(json.dumps(_sweep_document(args, found), indent=2))
    else:
        _print_sweep(args, setting, seeds, found)
    return EXIT_OK if found.first is None else EXIT_CHECK_FAILED


def _save(args: argparse.Namespace, config: CheckConfig, failing: SeedRun | None) -> int | None:
    """--save FILE: the record of the failing run, or a line saying nothing failed."""
    if failing is None:
        emit(f"sockrace: nothing failed: --save {args.save} not written", sys.stderr)
        return None
    return save_failure(args, config, failing.setting, failing.result)


def _replay_document(args: argparse.Namespace, again: Replay) -> dict[str, Any]:
    return check_report.replay_document(again, scenario=args.scenario, upstream=args.upstream,
                                        replay=replay_command(args, again.setting, again.repeat))


def run_replay(args: argparse.Namespace, config: CheckConfig) -> int:
    setting = setting_of(config).with_seed(args.replay)
    repeat = DEFAULT_REPEAT if args.repeat is None else args.repeat
    again = run_to_end(replay(_attempt(args, config), setting, repeat=repeat),
                       loop_factory(args, setting.seed), debug=args.debug)
    failing = next((run for run in again.runs if not run.result.ok), None)
    if failing is not None and (code := _show_run(args, failing.result, setting)) is not None:
        return code
    if args.save and (code := _save(args, config, failing)) is not None:
        return code
    if args.json:
        emit(json.dumps(_replay_document(args, again), indent=2))
    else:
        emit(f"sockrace check {args.scenario}: replaying {setting.describe()}, {repeat} times")
        emit(again.summary())
        if (pacing := again.pacing()) is not None:
            emit(pacing)
        emit(NEAR_EXACT)
    return EXIT_OK if again.reference is None else EXIT_CHECK_FAILED


def _shrink_document(args: argparse.Namespace, shrunk: Shrunk) -> dict[str, Any]:
    return check_report.shrink_document(shrunk, minimal_arguments=setting_words(shrunk.minimal),
                                        replay=replay_command(args, shrunk.minimal))


def _shrink_and_print(args: argparse.Namespace, config: CheckConfig, setting: Setting,
                      found: Sweep | None = None) -> int:
    def step(words: str, kept: Setting) -> None:
        if not args.json and sys.stderr.isatty() and sys.stdout.isatty():
            emit(f"sockrace: kept {words}: {kept.describe()}", sys.stderr, flush=True)

    try:
        shrunk = run_to_end(shrink(_attempt(args, config), setting, on_step=step),
                            loop_factory(args, setting.seed), debug=args.debug)
    except NotFailing as exc:
        if args.json:
            emit(json.dumps({"sweep": None if found is None else _sweep_document(args, found),
                             "shrink": None, "not_failing": str(exc)}, indent=2))
        else:
            emit(str(exc))
        return EXIT_OK
    if (code := _show_run(args, shrunk.result, shrunk.minimal)) is not None:
        return code
    if args.save and (code := _save(args, config, SeedRun(shrunk.minimal, shrunk.result))) is not None:
        return code
    if args.json:
        emit(json.dumps({"sweep": None if found is None else _sweep_document(args, found),
                         "shrink": _shrink_document(args, shrunk)}, indent=2))
        return EXIT_CHECK_FAILED
    emit()
    emit(shrunk.summary())
    emit()
    emit(shrunk.story())
    emit()
    emit(f"replay: {replay_command(args, shrunk.minimal)}")
    return EXIT_CHECK_FAILED


def run_explore(args: argparse.Namespace, config: CheckConfig) -> int:
    """--seeds (with --shrink, of its first failing seed), --replay, or --shrink of --seed."""
    if args.seeds is not None:
        return run_sweep(args, config)
    if args.replay is not None:
        return run_replay(args, config)
    setting = setting_of(config)
    if not args.json:
        emit(f"sockrace check {args.scenario}: shrinking {setting.describe()}")
    return _shrink_and_print(args, config, setting)
