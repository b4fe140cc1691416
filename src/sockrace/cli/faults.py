"""The fault options of `check` and `proxy`, spelt once: for each kind of fault of check/faults.py its
flag, metavar, help and the type of its text, and a Faults spelt back as the words that make it.

The spelling lives here, with the command line, not on the kinds (check/faults.py's FaultKind): the
parser is built for every command, and building it must import nothing of sockrace.check (its
package imports the whole check: 100 ms more for `sockrace serve`); and only the command line writes
command-line flags. tests/test_faults_cli.py keeps these options and faults.fault_kinds() naming the
same kinds, and a Faults spelt as words read back as the same Faults.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sockrace.cli.options import ms_range, share

if TYPE_CHECKING:
    from sockrace.check.faults import Faults

# check.faults.DIRECTION_CHOICES, repeated for the reason above; test_cli_check pins it to the library's.
DIRECTION_CHOICES: Final = ("to_server", "to_client", "both")


@dataclass(frozen=True, slots=True)
class FaultOption:
    """The option that sets one kind's main field (its other fields keep their defaults here)."""

    kind: str  # faults.FaultKind.name
    field: str  # the Faults field it sets
    flag: str
    help: str
    default: Any
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    bare: Any = None  # the value of the flag given alone (it then takes its text optionally)
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        optional: dict[str, Any] = {} if self.bare is None else {"nargs": "?", "const": self.bare}
        if self.type is not None:
            optional["type"] = self.type
        parser.add_argument(self.flag, metavar=self.metavar, choices=self.choices, default=self.default,
                            help=self.help, **optional)

    def words(self, value: Any) -> list[str]:
        """The words that give the field `value`: none for the default, the flag alone for its bare value."""
        if value == self.default:
            return []
        if self.bare is not None and value == self.bare:
            return [self.flag]
        if isinstance(value, tuple):
            return [self.flag, f"{value[0]:g}-{value[1]:g}"]
        return [self.flag, value if isinstance(value, str) else f"{value:g}"]


FAULT_OPTIONS: Final = (
    FaultOption("delay", "delay_ms", "--delay", type=ms_range, metavar="LO-HI", default=None,
                help="the proxy holds every chunk it forwards a seeded LO to HI ms (default: none)"),
    FaultOption("split", "split", "--split", type=share, metavar="SHARE", default=0.0, bare=1.0,
                help="cut chunks at seeded offsets and write the pieces apart: all of them, or this share "
                "(default: none)"),
    FaultOption("coalesce", "coalesce", "--coalesce", type=share, metavar="SHARE", default=0.0, bare=1.0,
                help="hold chunks and deliver several in one write: all of them, or this share "
                "(default: none)"),
    FaultOption("reset", "reset", "--reset", type=share, metavar="RATE", default=0.0,
                help="share of connections (per direction) aborted with a TCP RST after a seeded number of "
                "bytes (default: 0)"),
    FaultOption("direction", "direction", "--direction", choices=DIRECTION_CHOICES, default="both",
                help="which way the faults apply (default: %(default)s)"),
)


def add_fault_options(parser: argparse.ArgumentParser) -> None:
    """--delay, --split, --coalesce, --reset and --direction (check's and proxy's)."""
    for option in FAULT_OPTIONS:
        option.add_to(parser)


def read_faults(args: argparse.Namespace) -> Faults:
    """The faults the options of add_fault_options ask for."""
    from sockrace.check.faults import Faults

    values: dict[str, Any] = {option.field: getattr(args, option.dest) for option in FAULT_OPTIONS}
    return Faults(**values)


def fault_words(faults: Faults) -> list[str]:
    """The fault options that make `faults` (those the command line spells), in the parser's order."""
    return [word for option in FAULT_OPTIONS for word in option.words(getattr(faults, option.field))]
