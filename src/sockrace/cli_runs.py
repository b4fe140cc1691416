"""What running `sockrace check` takes, shared by a single run (cli_check.py) and a sweep, replay or
shrink (cli_explore.py): the event loop of a run, the command that replays it, the HTML file."""

from __future__ import annotations

import asyncio
import gc
import shlex
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from sockrace import html_report
from sockrace import loop as loops
from sockrace.cli_output import EXIT_USAGE, LoopErrors, emit, fail

if TYPE_CHECKING:
    import argparse

    from sockrace.check.explore import Setting
    from sockrace.check.result import HammerResult
    from sockrace.check.schedule import Perturbation

T = TypeVar("T")

# The library's defaults, repeated so that building the parser imports nothing of sockrace.check;
# the tests pin each to the library's own.
DEFAULT_DEADLINE_S: Final = 60.0
DEFAULT_REPEAT: Final = 10  # explore's replays of `--replay S` without --repeat
DEFAULT_PERTURBATION: Final = "shuffle"  # the seeded loop's, when neither --shuffle nor --reverse is given
# How long the scenario's tasks still running when the run ends get to finish once cancelled.
LEFTOVER_GRACE_S: Final = 2.0


# ------------------------------------------------------------------ the commands' options


def command_words(args: argparse.Namespace) -> list[str]:
    """`sockrace check SCENARIO --upstream HOST:PORT`: the words every replay command starts with."""
    host, port = args.upstream
    shown_host = f"[{host}]" if ":" in host else host
    return ["sockrace", "check", args.scenario, "--upstream", f"{shown_host}:{port}"]


def scheduled(args: argparse.Namespace) -> bool:
    """Whether the run is on the seeded scheduling loop."""
    return args.schedule_seed is not None or args.shuffle or args.reverse


def perturbation(args: argparse.Namespace) -> Perturbation:
    """How the seeded loop reorders ready callbacks: --reverse, or else --shuffle, its default."""
    return "reverse" if args.reverse else DEFAULT_PERTURBATION


def closing_words(args: argparse.Namespace) -> list[str]:
    """The options that shape a run beyond its Setting: the run's bound, the loop and its schedule."""
    words = [] if args.deadline == DEFAULT_DEADLINE_S else ["--deadline", f"{args.deadline:g}"]
    if args.loop != loops.DEFAULT_LOOP:
        words += ["--loop", args.loop]
    if args.schedule_seed is not None:
        words += ["--schedule-seed", str(args.schedule_seed)]
    if scheduled(args):
        words += [f"--{perturbation(args)}"]
    return words


def replay_command(args: argparse.Namespace, setting: Setting) -> str:
    """The command line that makes the same run again: the scenario and upstream of `args`, every
    option of `setting` (seed, size, deadlines, faults), then the run's bound, loop and schedule."""
    return shlex.join([*command_words(args), *setting.arguments(), *closing_words(args)])


def loop_factory(args: argparse.Namespace, seed: int) -> Callable[[], asyncio.AbstractEventLoop]:
    """The run's event loop: the seeded scheduling loop (its schedule drawn from --schedule-seed, or
    else from `seed`, the run's own), or the one --loop names."""
    if not scheduled(args):
        from sockrace.check.passes import counting_loop

        # asyncio's own loop, with its passes counted: a replay then lands each cut in the same pass
        # as the run it replays did (check/pacing.py).
        return loops.loop_factory(args.loop) or counting_loop
    from sockrace.check.schedule import seeded_loop_factory

    schedule_seed = seed if args.schedule_seed is None else args.schedule_seed
    return seeded_loop_factory(schedule_seed, perturbation(args))


def run_to_end(main: Coroutine[Any, Any, T], factory: Callable[[], asyncio.AbstractEventLoop], *,
               debug: bool = False) -> T:
    """asyncio.run() on `factory`'s loop, except that tasks still running at the end (a scenario's
    tasks that ignore cancellation) are abandoned after LEFTOVER_GRACE_S instead of being waited for,
    and that errors asyncio reports outside the calls are summed up in one line (LoopErrors)."""
    loop = factory()
    errors = LoopErrors(debug)
    loop.set_exception_handler(errors)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                _, stubborn = loop.run_until_complete(asyncio.wait(leftovers, timeout=LEFTOVER_GRACE_S))
                if stubborn:
                    loop.set_exception_handler(lambda loop, context: None)  # "destroyed but pending"
                    emit(f"sockrace: {len(stubborn)} tasks of the scenario ignored cancellation for "
                         f"{LEFTOVER_GRACE_S:g} s and were abandoned", sys.stderr)
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
            gc.collect()  # a leaked task reports its unretrieved exception when it is collected
            if (summary := errors.summary()) is not None:
                emit(f"sockrace: {summary}", sys.stderr)


def write_html(args: argparse.Namespace, result: HammerResult) -> int | None:
    """Write --html FILE for `result`; an exit code when it cannot be written."""
    try:
        Path(args.html).write_text(html_report.render([result.run_result("check")]), encoding="utf-8")
    except OSError as exc:
        return fail(f"cannot write --html {args.html}: {exc.strerror or exc}", EXIT_USAGE)
    emit(f"sockrace: wrote the HTML report to {args.html}", sys.stderr)
    return None
