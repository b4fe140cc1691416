"""`sockrace check --seeds / --replay / --shrink`: argparse's face of sockrace.check.explore and
sockrace.check.shrink. Each runs the check's Setting through `check_attempt` (a fresh proxy and
client per run), prints what it found and the command that replays it, and returns an exit code.
What it runs is a CheckCommand (cli/runs.py), read from the command line once by cli/check.py.

Imported by cli/check.py only when one of these options is given, so that it may import sockrace.check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

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
    sweep,
)
from sockrace.check.result import HammerResult
from sockrace.check.schedule import Schedule, SeededEventLoop
from sockrace.check.shrink import NotFailing, Shrunk, shrink
from sockrace.cli.output import EXIT_CHECK_FAILED, EXIT_OK, emit, print_check_timeline
from sockrace.cli.runs import (
    DEFAULT_REPEAT,
    CheckCommand,
    SeedSweep,
    arm_watchdog,
    record_replay_command,
    replay_command,
    run_to_end,
    save_failure,
    setting_words,
    write_html,
)

if TYPE_CHECKING:
    from sockrace.check.workers import NextSeed, Send

NEAR_EXACT = ("Over real sockets a replay is near-exact, not exact: the seed fixes every decision, and each "
              "run after the first follows its order of writes and cuts as long as the client keeps to it.")
THROUGH_A_DRIVER = ("Through a driver a replay makes the seed's decisions again (order, yields, cuts and "
                    "their moments) but does not follow the first run's order on the wire (docs/driver.md).")


def _attempt(command: CheckCommand) -> Attempt:
    """check_attempt, each run under the watchdog; on the seeded loop, each run starts from a fresh
    schedule of its own seed, so that replaying one seed alone draws what it drew inside a sweep."""
    attempt = check_attempt(command.config)

    async def watched(setting: Setting) -> HammerResult:
        arm_watchdog(command.config)  # each run is bounded by --deadline, as a single check is
        loop = asyncio.get_running_loop()
        if (seeded := command.loop.seeded(setting.seed)) is not None and isinstance(loop, SeededEventLoop):
            loop.schedule = Schedule(*seeded)
        return await attempt(setting)

    return watched


class ProgressLine:
    """The sweep's progress, rewritten in place on a terminal; nothing when piped or with --json."""

    def __init__(self, command: CheckCommand, out: TextIO) -> None:
        self.out = out
        self.shown = not command.json and out.isatty() and sys.stdout.isatty()
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


def _show_run(command: CheckCommand, result: HammerResult, setting: Setting) -> int | None:
    """--timeline and --html for the run that failed; an exit code when the HTML cannot be written."""
    if command.timeline:
        print_check_timeline(result, sys.stderr if command.json else sys.stdout)
    if command.html:
        return write_html(command, result, setting, replay_command(command, setting, DEFAULT_REPEAT))
    return None


def _sweep_document(command: CheckCommand, sweeping: SeedSweep, found: Sweep[SeedRun]) -> dict[str, Any]:
    first = found.first
    config = command.config
    document = check_report.sweep_document(
        found, scenario=config.scenario, upstream=config.upstream, seeds=sweeping.spelled,
        keep_going=sweeping.keep_going,
        replay=None if first is None else replay_command(command, first.setting, DEFAULT_REPEAT))
    # --shard, beside --seeds: which slice of them this sweep tried.
    shown: dict[str, Any] = {}
    for key, value in document.items():
        shown[key] = value
        if key == "seeds":
            shown["shard"] = sweeping.shard_words
    return shown


def sweep_worker(command: CheckCommand, next_seed: NextSeed, send: Send) -> None:
    """A --jobs worker (check/workers.py): run the seeds it is given as a sweep in this process runs
    them, in one event loop, each run under the watchdog, and send back each one's result."""
    attempt = _attempt(command)
    setting = command.config.setting

    async def serve() -> None:
        while (seed := next_seed()) is not None:
            began = time.perf_counter()
            result = await attempt(setting.with_seed(seed))
            send(seed, result, time.perf_counter() - began)

    run_to_end(serve(), command.loop.factory(setting.seed), debug=command.debug)


def _run_sweep(command: CheckCommand, sweeping: SeedSweep, setting: Setting) -> Sweep[SeedRun]:
    progress = ProgressLine(command, sys.stderr)
    try:
        if sweeping.jobs > 1 and len(sweeping.seeds) > 1:
            from sockrace.check.workers import sweep_in_workers

            # The workers run this command but for its sweep: each runs the seeds it is given.
            worker_command = dataclasses.replace(command, sweep=None, shrink=False, save=None, html=None)
            return sweep_in_workers(sweep_worker, worker_command, setting, sweeping.seeds,
                                    jobs=sweeping.jobs, keep_going=sweeping.keep_going, on_progress=progress)
        return run_to_end(sweep(_attempt(command), setting, sweeping.seeds, keep_going=sweeping.keep_going,
                                on_progress=progress),
                          command.loop.factory(setting.seed), debug=command.debug)
    finally:
        progress.clear()


def _print_sweep(command: CheckCommand, sweeping: SeedSweep, setting: Setting,
                 found: Sweep[SeedRun]) -> None:
    seeds = parse_seeds(sweeping.spelled)  # all of them: a shard says which slice it ran
    shard = "" if sweeping.shard is None else f", shard {sweeping.shard_words}"
    emit(f"sockrace check {command.config.scenario}: seeds {seeds.start}-{seeds.stop - 1}{shard}"
         f"{' (all)' if sweeping.keep_going else ''}, {setting.describe().partition(', ')[2]}")
    emit(f"{found.summary()} ({found.elapsed_s:.1f} s)")
    if not sweeping.seeds:  # more shards than seeds: the others try them all between them
        emit(f"shard {sweeping.shard_words} of {len(seeds)} seeds holds none of them: nothing to check")
    if found.first is not None and not command.shrink:  # a shrink tells the story of its minimal run
        emit()
        emit(found.first.result.explain())
        emit()
        emit(f"replay: {replay_command(command, found.first.setting, DEFAULT_REPEAT)}")


def run_sweep(command: CheckCommand, sweeping: SeedSweep) -> int:
    setting = command.config.setting
    found = _run_sweep(command, sweeping, setting)
    if command.shrink:
        if not command.json:
            _print_sweep(command, sweeping, setting, found)
        if found.first is None:
            if command.json:
                emit(json.dumps({"sweep": _sweep_document(command, sweeping, found), "shrink": None},
                                indent=2))
            else:
                emit("\nno failing seed: nothing to shrink")
            return EXIT_OK
        # The failing run's own decisions: the shrink records them again and cuts from there.
        failing = dataclasses.replace(found.first.setting, decisions=found.first.result.decisions)
        return _shrink_and_print(command, failing, (sweeping, found))
    first = found.first
    if first is not None and (code := _show_run(command, first.result, first.setting)) is not None:
        return code
    if command.save and (code := _save(command, first)) is not None:
        return code
    if command.json:
        emit(json.dumps(_sweep_document(command, sweeping, found), indent=2))
    else:
        _print_sweep(command, sweeping, setting, found)
    return EXIT_OK if found.first is None else EXIT_CHECK_FAILED


def _save(command: CheckCommand, failing: SeedRun | None) -> int | None:
    """--save FILE: the record of the failing run, or a line saying nothing failed."""
    if failing is None:
        emit(f"sockrace: nothing failed: --save {command.save} not written", sys.stderr)
        return None
    return save_failure(command, failing.setting, failing.result)


def _replay_document(command: CheckCommand, again: Replay) -> dict[str, Any]:
    config = command.config
    return check_report.replay_document(again, scenario=config.scenario, upstream=config.upstream,
                                        replay=replay_command(command, again.setting, again.repeat))


def run_replay(command: CheckCommand, seed: int, repeat: int) -> int:
    setting = command.config.setting.with_seed(seed)
    same_pair = command.config.driver is None  # through a driver, the same verdict (docs/driver.md)
    again = run_to_end(replay(_attempt(command), setting, repeat=repeat, same_pair=same_pair),
                       command.loop.factory(setting.seed), debug=command.debug)
    failing = next((run for run in again.runs if not run.result.ok), None)
    if failing is not None and (code := _show_run(command, failing.result, setting)) is not None:
        return code
    if command.save and (code := _save(command, failing)) is not None:
        return code
    if command.json:
        emit(json.dumps(_replay_document(command, again), indent=2))
    else:
        emit(f"sockrace check {command.config.scenario}: replaying {setting.describe()}, {repeat} times")
        emit(again.summary())
        if (pacing := again.pacing()) is not None:
            emit(pacing)
        emit(NEAR_EXACT if command.config.driver is None else THROUGH_A_DRIVER)
    return EXIT_OK if again.reference is None else EXIT_CHECK_FAILED


def _shrunk_replay(command: CheckCommand, shrunk: Shrunk) -> str:
    """What brings the shrunk run back: its record with --save (its cut decisions and tape), else the
    options that draw its size and seed again."""
    if command.save:
        return record_replay_command(command.save)
    return replay_command(command, shrunk.minimal, DEFAULT_REPEAT)


def _shrink_document(command: CheckCommand, shrunk: Shrunk) -> dict[str, Any]:
    return check_report.shrink_document(shrunk, minimal_arguments=setting_words(shrunk.minimal),
                                        replay=_shrunk_replay(command, shrunk))


def _shrink_and_print(command: CheckCommand, setting: Setting,
                      swept: tuple[SeedSweep, Sweep[SeedRun]] | None = None) -> int:
    # Asked before the runs: while the scenario runs, sys.stdout is stderr (runs.guest_output_to_stderr).
    on_a_terminal = not command.json and sys.stderr.isatty() and sys.stdout.isatty()

    def step(words: str, kept: Setting) -> None:
        if on_a_terminal:
            emit(f"sockrace: kept {words}: {kept.describe()}", sys.stderr, flush=True)

    sweep_document = None if swept is None else _sweep_document(command, *swept)
    try:
        shrunk = run_to_end(shrink(_attempt(command), setting, on_step=step,
                                   same_pair=command.config.driver is None),
                            command.loop.factory(setting.seed), debug=command.debug)
    except NotFailing as exc:
        if command.json:
            emit(json.dumps({"sweep": sweep_document, "shrink": None, "not_failing": str(exc)}, indent=2))
        else:
            emit(str(exc))
        return EXIT_OK
    if (code := _show_run(command, shrunk.result, shrunk.minimal)) is not None:
        return code
    if command.save and (code := _save(command, SeedRun(shrunk.minimal, shrunk.result))) is not None:
        return code
    if command.json:
        emit(json.dumps({"sweep": sweep_document, "shrink": _shrink_document(command, shrunk)}, indent=2))
        return EXIT_CHECK_FAILED
    emit()
    emit(shrunk.summary())
    emit()
    emit(shrunk.story())
    emit()
    emit(f"replay: {_shrunk_replay(command, shrunk)}")
    return EXIT_CHECK_FAILED


def run_explore(command: CheckCommand) -> int:
    """--seeds (with --shrink, of its first failing seed), --replay, or --shrink of --seed."""
    if command.sweep is not None:
        return run_sweep(command, command.sweep)
    if command.replay is not None:
        return run_replay(command, command.replay.seed, command.replay.repeat)
    setting = command.config.setting
    if not command.json:
        emit(f"sockrace check {command.config.scenario}: shrinking {setting.describe()}")
    return _shrink_and_print(command, setting)
