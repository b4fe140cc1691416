"""What running `sockrace check` takes, shared by a single run (cli/check.py), a sweep, replay or
shrink (cli/explore.py) and `sockrace replay` (cli/replay.py): the command as its command line asked
for it (CheckCommand, read from argparse's arguments once, in cli/check.py), the event loop of a run,
the watchdog that bounds it, the command line that replays it, the HTML file and the saved record."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from sockrace import loop as loops
from sockrace.cli.faults import fault_words
from sockrace.cli.output import EXIT_SCENARIO, EXIT_USAGE, LoopErrors, emit, fail

if TYPE_CHECKING:
    from sockrace.check.explore import Setting
    from sockrace.check.result import HammerResult
    from sockrace.check.runner import CheckConfig
    from sockrace.check.schedule import Perturbation

T = TypeVar("T")

# The library's defaults, repeated so that building the parser imports nothing of sockrace.check;
# the tests pin each to the library's own.
DEFAULT_DEADLINE_S: Final = 60.0
DEFAULT_REPEAT: Final = 10  # explore's replays of `--replay S` without --repeat
DEFAULT_PERTURBATION: Final = "shuffle"  # the seeded loop's, when neither --shuffle nor --reverse is given
# Runs --save makes of a failing run that recorded no tape (a sweep's seed, a shrunk run), to record one
# that fails the same way: a shrunk run fails at least 2 times in 3, so ten tries miss it rarely.
SAVE_TRIES: Final = 10
# How long the scenario's tasks still running when the run ends get to finish once cancelled.
LEFTOVER_GRACE_S: Final = 1.0
# How long past --deadline the watchdog lets a run go before it ends the process. The cooperative
# ends after the deadline add up to about 4 s at most: a call ignoring its cancellation (1 s), the
# clean-up (1 s), a step swallowing cancellation abandoned (2 x 0.5 s), the scenario's leftover tasks
# (1 s).
WATCHDOG_GRACE_S: Final = 5.0


class Watchdog:
    """Ends the process when a run outlives its bound: the scenario holds the event loop (a CPU loop
    in its code) or ignores cancellation in a way no cooperative step can end. A thread of its own
    writes one line to stderr and exits with EXIT_SCENARIO; nothing of the run is printed after it.

    `arm(seconds)` (again for every run of a sweep) sets the bound from now; `disarm()` lifts it, and
    its thread ends.
    """

    def __init__(self, expire: Callable[[str], None] | None = None) -> None:
        self._expire = expire or _end_process
        self._changed = threading.Condition()
        self._due: float | None = None  # time.monotonic()
        self._message = ""
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, message: str) -> None:
        with self._changed:
            self._due, self._message = time.monotonic() + seconds, message
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="sockrace watchdog", daemon=True)
                self._thread.start()
            self._changed.notify()

    def disarm(self) -> None:
        with self._changed:
            self._due = None
            self._changed.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()  # at once: it wakes to the notify and ends

    def _watch(self) -> None:
        with self._changed:
            while self._due is not None:  # disarmed: the thread ends, and the next arm starts another
                if time.monotonic() >= self._due:
                    self._due = None
                    self._expire(self._message)
                    break
                self._changed.wait(max(self._due - time.monotonic(), 0.0))
            self._thread = None


# Taken at import: while a scenario runs, os._exit is guest.os_exit_refused's, which raises.
_os_exit: Final = os._exit


def _end_process(message: str) -> None:
    # os.write: no lock of sys.stderr's, which the stuck main thread might hold.
    try:
        os.write(2, f"sockrace: {message}\n".encode())
    finally:
        _os_exit(EXIT_SCENARIO)


WATCHDOG = Watchdog()


def arm_watchdog(config: CheckConfig, deadline: str = "--deadline") -> None:
    """Bound the run about to start by its deadline (`deadline` names it) plus WATCHDOG_GRACE_S."""
    WATCHDOG.arm(config.deadline_s + WATCHDOG_GRACE_S,
                 f"scenario {config.scenario}: the run went on {WATCHDOG_GRACE_S:g} s past {deadline} "
                 f"{config.deadline_s:g} s (its code holds the event loop or ignores cancellation): ended it")


# ------------------------------------------------------------------ the command, read once


@dataclass(frozen=True, slots=True)
class RunLoop:
    """The event loop a check's runs are on: --loop's, or with --schedule-seed, --shuffle or
    --reverse the seeded scheduling loop, which reorders ready callbacks by `perturbation`."""

    name: str = loops.DEFAULT_LOOP
    perturbation: Perturbation | None = None  # None: not the seeded loop
    schedule_seed: int | None = None  # the seeded loop's seed; None: each run's own

    def seeded(self, seed: int) -> tuple[int, Perturbation] | None:
        """The seeded loop's schedule for a run of `seed`: its seed and perturbation; None off it."""
        if self.perturbation is None:
            return None
        return seed if self.schedule_seed is None else self.schedule_seed, self.perturbation

    def schedule(self, seed: int) -> dict[str, Any] | None:
        """That schedule as the check's JSON document and the run record name it."""
        seeded = self.seeded(seed)
        return None if seeded is None else {"seed": seeded[0], "perturbation": seeded[1]}

    def factory(self, seed: int) -> Callable[[], asyncio.AbstractEventLoop]:
        """The event loop of a run of `seed`."""
        return event_loop(self.name, self.seeded(seed))

    def words(self) -> list[str]:
        """The options that choose this loop, as `sockrace check` spells them."""
        words = [] if self.name == loops.DEFAULT_LOOP else ["--loop", self.name]
        if self.schedule_seed is not None:
            words += ["--schedule-seed", str(self.schedule_seed)]
        if self.perturbation is not None:
            words += [f"--{self.perturbation}"]
        return words


@dataclass(frozen=True, slots=True)
class SeedSweep:
    """--seeds LO-HI [--all] [--jobs N] [--shard K/N]: a run per seed."""

    seeds: range  # with --shard K/N, its slice: every Nth seed of --seeds from its Kth
    spelled: str  # as given ("7", "1-500"): the sweep's JSON document repeats it
    keep_going: bool = False  # --all: on past the first failing seed, through every seed
    jobs: int = 1  # --jobs: worker processes running seeds at once (1: in this process)
    shard: tuple[int, int] | None = None  # --shard K/N: (K, N)

    @property
    def shard_words(self) -> str | None:
        """--shard as given ("2/3"), None without one."""
        return None if self.shard is None else f"{self.shard[0]}/{self.shard[1]}"


@dataclass(frozen=True, slots=True)
class SeedReplay:
    """--replay SEED [--repeat K]: the run of SEED, K times."""

    seed: int
    repeat: int = DEFAULT_REPEAT


@dataclass(frozen=True, slots=True)
class CheckCommand:
    """`sockrace check` as its command line asked for it, read once (cli/check.py): the library's
    configuration of the run, the loop it runs on, what to explore (a sweep or a replay, and a
    shrink; argparse lets no sweep through with a replay, no shrink with a replay), and what to
    print or write."""

    config: CheckConfig
    loop: RunLoop = field(default_factory=RunLoop)
    sweep: SeedSweep | None = None
    replay: SeedReplay | None = None
    shrink: bool = False  # the run of --seed, or the sweep's first failing seed
    json: bool = False
    timeline: bool = False
    html: str | None = None
    save: str | None = None
    debug: bool = False

    @property
    def explores(self) -> bool:
        return self.sweep is not None or self.replay is not None or self.shrink


# ------------------------------------------------------------------ the command line that makes a run again


def replay_command(command: CheckCommand, setting: Setting, repeat: int | None = None) -> str:
    """The command line that makes the run of `setting` again: the scenario and upstream of
    `command`, every option of `setting` (seed, size, deadlines, faults), then the run's bound, loop
    and schedule. With `repeat`, one that replays it `repeat` times (`--replay S --repeat K`) rather
    than runs it once (`--seed S`). Every `replay: sockrace check ...` line is made here."""
    config = command.config
    host, port = config.upstream
    shown_host = f"[{host}]" if ":" in host else host
    words = ["sockrace", "check", config.scenario, "--upstream", f"{shown_host}:{port}"]
    words += setting_words(setting) if repeat is None else replay_words(setting, repeat)
    if config.deadline_s != DEFAULT_DEADLINE_S:
        words += ["--deadline", f"{config.deadline_s:g}"]
    if config.stall_s != "auto":
        words += ["--stall-timeout", f"{config.stall_s:g}"]
    if config.faults_in_setup:
        words += ["--faults-in-setup"]
    if config.driver is not None:
        from sockrace.check.driver_commands import driver_words

        words += driver_words(config.driver)
    return shlex.join([*words, *command.loop.words()])


def record_replay_command(path: str, repeat: int = DEFAULT_REPEAT) -> str:
    """`sockrace replay FILE --repeat K`: what brings back a run saved with --save, its decisions and
    tape as recorded (a shrunk run's are cut from a larger run's: its seed alone would draw others)."""
    return shlex.join(["sockrace", "replay", path, "--repeat", str(repeat)])


def _range_words(lo_hi: tuple[float, float]) -> str:
    return f"{lo_hi[0]:g}-{lo_hi[1]:g}"


def setting_words(setting: Setting) -> list[str]:
    """The `sockrace check` options that make `setting` (the scenario and upstream aside)."""
    timeout = setting.timeout_ms
    shown = "none" if timeout is None else timeout if timeout == "auto" else _range_words(timeout)
    words = ["--tasks", str(setting.tasks), "--calls", str(setting.calls), "--timeout", shown]
    if setting.client_timeout_ms is None:
        words += fault_words(setting.faults)
    else:  # its delays come from the timeout (calibrated by a threads run), not from a --delay
        words += fault_words(replace(setting.faults, delay_ms=None))
        words += ["--client-timeout", f"{setting.client_timeout_ms:g}"]
    return [*words, "--seed", str(setting.seed)]


def replay_words(setting: Setting, repeat: int = DEFAULT_REPEAT) -> list[str]:
    """The `sockrace check` options that replay `setting` `repeat` times (`--replay S --repeat K`)."""
    words = setting_words(setting)
    seed_at = words.index("--seed")
    return [*words[:seed_at], "--replay", str(setting.seed), "--repeat", str(repeat)]


# ------------------------------------------------------------------ a run: its loop, its end, its files


def event_loop(name: str,
               schedule: tuple[int, Perturbation] | None) -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory of a check's event loop: the seeded scheduling loop for `schedule` (its seed and
    perturbation), else the loop `name`s (asyncio's own with its passes counted, by default)."""
    if schedule is not None:
        from sockrace.check.schedule import seeded_loop_factory

        return seeded_loop_factory(*schedule)
    from sockrace.check.passes import counting_loop

    # asyncio's own loop, with its passes counted: a replay then lands each cut in the same pass as
    # the run it replays did (check/pacing.py).
    return loops.loop_factory(name) or counting_loop


@contextlib.contextmanager
def guest_output_to_stderr() -> Iterator[None]:
    """While the scenario runs, what it prints goes to stderr, not into what sockrace writes on stdout
    afterwards (a --json document a program reads, say): sys.stdout is sys.stderr meanwhile and, when
    it is this process's descriptor 1, descriptor 1 too (a write straight to it: os.write(1, ...), a
    child process). Without a descriptor of its own (pytest's capsys) only sys.stdout is swapped."""
    stdout = sys.stdout
    saved = None
    with contextlib.suppress(AttributeError, OSError, ValueError):  # no file behind it, or closed
        stdout.flush()
        if stdout.fileno() == 1:
            saved = os.dup(1)
            os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = stdout
        if saved is not None:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 1)
            os.close(saved)


def run_to_end(main: Coroutine[Any, Any, T], factory: Callable[[], asyncio.AbstractEventLoop], *,
               debug: bool = False) -> T:
    """asyncio.run() on `factory`'s loop, except that tasks still running at the end (a scenario's
    tasks that ignore cancellation) are abandoned after LEFTOVER_GRACE_S instead of being waited for,
    that errors asyncio reports outside the calls are summed up in one line (LoopErrors), and that a
    SystemExit or KeyboardInterrupt raised in a task of the scenario's own (asyncio lets those out of
    the loop) is a ScenarioError, not the end of the program; a real Ctrl-C stays KeyboardInterrupt.
    The watchdog, when armed, is disarmed once everything is closed."""
    from sockrace.check.guest import describe, ends_program, is_real_ctrl_c, os_exit_refused, watching_ctrl_c
    from sockrace.check.scenario import ScenarioError

    # A GeneratorExit or a BaseException of the guest's own ends only its task, which asyncio then
    # reports: that too is the scenario trying to end the program, not an error to sum up.
    errors = LoopErrors(debug, fatal=ends_program)
    with watching_ctrl_c(), guest_output_to_stderr(), os_exit_refused() as exits_asked:
        try:
            value = _run_to_end(main, factory, errors)
        except (SystemExit, KeyboardInterrupt) as exc:
            if is_real_ctrl_c(exc):
                raise
            raise ScenarioError(f"a task the scenario started raised {describe(exc)}, which would end "
                                "the program") from exc
        finally:
            WATCHDOG.disarm()
    if errors.fatal_error is not None:
        raise ScenarioError(f"a task the scenario started raised {describe(errors.fatal_error)}, which "
                            "would end the program") from errors.fatal_error
    if exits_asked:  # refused where nothing of ours saw it raise (a thread of the guest's, say)
        raise ScenarioError(f"the scenario called os._exit({exits_asked[0]}), which would end the program")
    return value


def _run_to_end(main: Coroutine[Any, Any, T], factory: Callable[[], asyncio.AbstractEventLoop],
                errors: LoopErrors) -> T:
    from sockrace.check.scenario import ScenarioError

    loop = factory()
    loop.set_exception_handler(errors)
    running = loop.create_task(main)
    try:
        try:
            return loop.run_until_complete(running)
        except RuntimeError:
            if running.done():  # the check's own error, or the guest's passed on
                raise
            raise ScenarioError("the scenario stopped the event loop (loop.stop()) before the check "
                                "had ended") from None
    finally:
        try:
            from sockrace.check.scenario import ABANDONED

            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            given_up = set(ABANDONED) & leftovers  # a step already said to be abandoned
            if waiting := leftovers - given_up:
                _, stubborn = loop.run_until_complete(asyncio.wait(waiting, timeout=LEFTOVER_GRACE_S))
                if stubborn:
                    count = len(stubborn)
                    emit(f"sockrace: {count} task{'s' if count != 1 else ''} of the scenario ignored "
                         f"cancellation for {LEFTOVER_GRACE_S:g} s and {'were' if count != 1 else 'was'} "
                         "abandoned", sys.stderr)
                given_up |= stubborn
            if given_up:
                loop.set_exception_handler(lambda loop, context: None)  # "destroyed but pending"
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
            gc.collect()  # a leaked task reports its unretrieved exception when it is collected
            if (summary := errors.summary()) is not None:
                emit(f"sockrace: {summary}", sys.stderr)


def write_html(command: CheckCommand, result: HammerResult, setting: Setting, replay: str) -> int | None:
    """Write --html FILE for `result`, the run of `setting` that `replay` makes again; an exit code
    when it cannot be written."""
    from sockrace import check_html

    config, path = command.config, command.html
    host, port = config.upstream
    heading = f"sockrace check {config.scenario}: {setting.describe()}, through a proxy to {host}:{port}"
    page = check_html.render_check(result, heading=heading, faults=setting.faults.describe(),
                                   story=result.explain(), replay=replay)
    try:
        Path(str(path)).write_text(page, encoding="utf-8")
    except OSError as exc:
        return fail(f"cannot write --html {path}: {exc.strerror or exc}", EXIT_USAGE)
    emit(f"sockrace: wrote the HTML report to {path}", sys.stderr)
    return None


def sockrace_version() -> str:
    """The installed sockrace's version, as `sockrace --version` prints it (a record names it)."""
    from sockrace.cli import version  # at call time: cli imports this module

    return version()


def save_failure(command: CheckCommand, setting: Setting, result: HammerResult) -> int | None:
    """--save FILE: the run record of `setting`, which failed as `result` says. A run that recorded
    no tape is run once more recording one (when it fails again, that run is saved, tape and all);
    an exit code when the file cannot be written."""
    from sockrace.check.explore import Failure, check_attempt
    from sockrace.check.record import RunRecord, save
    from sockrace.check_report import counts

    config, path = command.config, str(command.save)
    if result.tape is None and config.driver is None:  # a driver's run records none (docs/driver.md)
        looked_for = Failure.first_of(result)
        again = replace(setting, decisions=result.decisions, record=True)

        async def recording() -> HammerResult | None:
            """Up to SAVE_TRIES runs of `again`, recording; the first that fails as `result` did."""
            attempt = check_attempt(config)
            for _ in range(SAVE_TRIES):
                arm_watchdog(config)
                retried = await attempt(again)
                if looked_for in Failure.all_of(retried):
                    return retried
            return None

        retried = run_to_end(recording(), command.loop.factory(setting.seed), debug=command.debug)
        if retried is not None:
            result = retried
        else:
            emit(f"sockrace: the failing run did not fail again in {SAVE_TRIES} runs recording its order: "
                 "the record has no tape, its replays record their own", sys.stderr)
    record = RunRecord(
        config.scenario, config.upstream,
        replace(setting, decisions=result.decisions, tape=result.tape, record=False),
        Failure.first_of(result), config.deadline_s, None if config.stall_s == "auto" else config.stall_s,
        config.faults_in_setup, command.loop.schedule(setting.seed), command.loop.name, counts(result),
        result.explain(), sockrace_version(), misaligned_at=result.misaligned_at, driver=config.driver)
    try:
        save(record, path)
    except OSError as exc:
        return fail(f"cannot write --save {path}: {exc.strerror or exc}", EXIT_USAGE)
    emit(f"sockrace: saved the failing run to {path} (sockrace replay {shlex.quote(path)})", sys.stderr)
    return None
