"""Command line: parse the arguments, read them once into a command of the library's config
objects (each command's module: `read`), run it (`run`), return an exit code.

One module per command (compare, server, client, counter, check with its sweeps, replays and shrinks
in explore, replay, proxy); options.py has the parser's shared options and types, output.py the exit
codes and printing, runs.py what a check's runs share. This module builds the parser and runs main().
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, cast

from sockrace import __version__
from sockrace.cli.options import CommandParser, Commands
from sockrace.cli.output import (
    EXIT_BROKEN_PIPE,
    EXIT_CHECK_FAILED,
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_SCENARIO,
    EXIT_USAGE,
    OutputError,
    UsageError,
    emit,
    fail,
)
from sockrace.errors import LoopUnavailable

__all__ = [  # the exit codes are defined in cli/output.py and named here too, where callers look
    "EXIT_BROKEN_PIPE", "EXIT_CHECK_FAILED", "EXIT_CODES", "EXIT_INTERRUPTED", "EXIT_NETWORK", "EXIT_OK",
    "EXIT_OUTPUT", "EXIT_SCENARIO", "EXIT_USAGE", "build_parser", "main", "version",
]


def version() -> str:
    """The installed distribution's version; run from a source tree that is not installed, the package's own
    `sockrace.__version__` (which pyproject.toml reads, so the two agree)."""
    from importlib import metadata  # only for --version: it costs a third of `import sockrace.cli`

    try:
        return metadata.version("sockrace")
    except metadata.PackageNotFoundError:
        return __version__


class _VersionAction(argparse.Action):
    """--version: `sockrace X.Y.Z`, one line on stdout, and exit 0. Unlike argparse's own version action it
    looks the version up only when asked, and a failed write is the output's error (exit 4; 141 when the
    reader has gone), as for any other output."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> NoReturn:
        emit(f"sockrace {version()}", flush=True)
        parser.exit()


# The commands in the order --help lists them; each is the module sockrace.cli.<name>, with
# add_<name>_command(commands) and run_<name>_command(args). A module is imported only for the command
# that was chosen (all of them for the top-level --help or an unknown command), so that `sockrace
# counter` imports neither the check package nor what the other commands run.
COMMAND_NAMES: tuple[str, ...] = ("compare", "server", "client", "counter", "check", "replay", "proxy")


def _command_function(command: str, role: str) -> Callable[..., Any]:
    module = importlib.import_module(f"sockrace.cli.{command}")
    return cast(Callable[..., Any], getattr(module, f"{role}_{command}_command"))


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command `argv` names, or None (none named, or not one of ours: argparse then says so).
    The top-level parser's options take no values, so the command is the first word that is not one."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMAND_NAMES else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `command`, only that command's parser below the top level (what parsing a
    command line that names it needs: its --help, its errors)."""
    parser = argparse.ArgumentParser(
        prog="sockrace",
        description="See what goes wrong when many asyncio coroutines share one socket, "
        "and prove that a fix really works.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="print `sockrace X.Y.Z` and exit")
    # Every command's parser is a CommandParser; add_parser() is all the commands call on it.
    commands = cast(Commands, parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                                    parser_class=CommandParser))
    for name in COMMAND_NAMES if command is None else (command,):
        _command_function(name, "add")(commands)
    return parser


# ------------------------------------------------------------------ running the commands


def _run(args: argparse.Namespace) -> int:
    """The command, then the flush of what it printed: with stdout a file, a full disk is only
    noticed there."""
    # Each reads argparse's arguments once into its command, then runs that.
    code = cast(int, _command_function(args.command, "run")(args))
    if sys.stdout is None:  # started with its stdout closed: what it printed went nowhere
        return code
    try:
        sys.stdout.flush()
    except OSError as exc:
        raise OutputError(exc.strerror or str(exc)) from exc
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of what is still buffered
    does not fail again at exit (it would print a traceback and change the exit code to 120)."""
    try:
        stdout = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (main() given another stdout), or none
        return
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), stdout)


def _output_failed(exc: OutputError) -> int:
    _silence_stdout()
    if isinstance(exc.__cause__, BrokenPipeError):  # the reader (`| head`) has gone: say no more
        return EXIT_BROKEN_PIPE
    return fail(f"cannot write the output: {exc}", EXIT_OUTPUT)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(chosen_command(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except OutputError as exc:  # --version could not be written
        return _output_failed(exc)
    try:
        return _run(args)
    except LoopUnavailable as exc:
        return fail(f"--loop {args.loop}: {exc}", EXIT_USAGE)
    except UsageError as exc:
        return fail(f"{args.command}: {exc}", EXIT_USAGE)
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_INTERRUPTED)
    except OutputError as exc:
        return _output_failed(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
