"""What the command line imports before it runs a command: only what that command needs.

Start-up time is measured in benchmarks/startup.py; these tests pin what is imported (sys.modules in a
fresh interpreter), which is what the time follows and what a stray top-level import would undo.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from sockrace import loop, race, server, workload
from sockrace.cli import COMMAND_NAMES, build_parser, chosen_command
from sockrace.cli import options as cli_options

# What no command's parser needs: the check package, the event loop and what only some commands run.
NOT_FOR_PARSING = ("asyncio", "sockrace.check", "sockrace.loop", "sockrace.race", "sockrace.client",
                   "sockrace.timeline", "sockrace.report")
# Modules of the command line that only their own command imports.
OTHER_COMMANDS = ("sockrace.cli.check", "sockrace.cli.runs", "sockrace.cli.explore", "sockrace.cli.faults",
                  "sockrace.cli.compare", "sockrace.cli.client", "sockrace.cli.server", "sockrace.cli.proxy",
                  "sockrace.cli.replay")


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code` (its own output sent to stderr)."""
    program = ("import contextlib, json, sys\n"
               "with contextlib.redirect_stdout(sys.stderr):\n"
               + "".join(f"    {line}\n" for line in code.splitlines())
               + "print(json.dumps(sorted(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
                          check=True)
    return set(json.loads(done.stdout))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Those of `names` that are in `modules`, a package counting with every module below it."""
    return sorted(m for m in modules for name in names if m == name or m.startswith(name + "."))


def test_importing_the_command_line_imports_no_command() -> None:
    modules = modules_after("import sockrace.cli")
    assert loaded(modules, NOT_FOR_PARSING + OTHER_COMMANDS + ("sockrace.cli.counter",)) == []


def test_counter_help_imports_nothing_of_the_other_commands() -> None:
    modules = modules_after("from sockrace.cli import main\ntry:\n    main(['counter', '--help'])\n"
                            "except SystemExit:\n    pass")
    assert "sockrace.cli.counter" in modules  # the test sees the command it asked for
    assert loaded(modules, ("sockrace.check", "sockrace.race", "sockrace.client", "sockrace.timeline",
                            *OTHER_COMMANDS)) == []


def test_a_counter_run_imports_neither_the_check_package_nor_the_other_commands() -> None:
    small = "['counter', '-n', '10', '--clients', '2', '--increments', '2']"
    modules = modules_after(f"from sockrace.cli import main\nassert main({small}) == 0")
    assert "sockrace.server" in modules
    assert loaded(modules, ("sockrace.check", "sockrace.race", "sockrace.client", "sockrace.timeline",
                            *OTHER_COMMANDS)) == []


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_no_command_help_imports_the_check_package(command: str) -> None:
    modules = modules_after(f"from sockrace.cli import main\ntry:\n    main([{command!r}, '--help'])\n"
                            "except SystemExit:\n    pass")
    assert f"sockrace.cli.{command}" in modules
    assert loaded(modules, ("sockrace.check",)) == []


def test_the_top_level_help_lists_every_command() -> None:
    modules = modules_after("from sockrace.cli import main\ntry:\n    main(['--help'])\n"
                            "except SystemExit:\n    pass")
    assert loaded(modules, ("sockrace.check",)) == []
    assert {f"sockrace.cli.{name}" for name in COMMAND_NAMES} <= modules


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_a_command_parsed_alone_is_the_one_of_the_whole_parser(command: str) -> None:
    alone = _subparsers(build_parser(command))
    assert list(alone) == [command]
    assert alone[command].format_help() == _subparsers(build_parser())[command].format_help()


@pytest.mark.parametrize(("argv", "command"), [
    (["counter"], "counter"), (["--version"], None), ([], None), (["-h", "check", "x"], "check"),
    (["counte"], None), (["--", "proxy"], "proxy"), (["server", "counter"], "server"),
])
def test_the_chosen_command_is_the_first_word_not_an_option(argv: list[str], command: str | None) -> None:
    assert chosen_command(argv) == command


def test_an_unknown_command_is_refused_with_every_command_named(capsys: pytest.CaptureFixture[str]) -> None:
    from sockrace.cli import EXIT_USAGE, main

    assert main(["counte"]) == EXIT_USAGE
    error = capsys.readouterr().err
    assert "invalid choice: 'counte'" in error
    assert all(f"'{name}'" in error for name in COMMAND_NAMES)


def test_the_defaults_help_shows_are_the_librarys() -> None:
    # cli/options.py repeats them so that building a parser imports none of these modules.
    assert cli_options.LOOPS == loop.LOOPS
    assert cli_options.DEFAULT_LOOP == loop.DEFAULT_LOOP
    assert cli_options.DEFAULT_STALL_TIMEOUT_S == race.DEFAULT_STALL_TIMEOUT_S
    assert cli_options.MAX_IDLE_TIMEOUT_S == server.MAX_IDLE_TIMEOUT_S
    assert cli_options.DEFAULT_MAX_YIELDS == workload.DEFAULT_MAX_YIELDS
