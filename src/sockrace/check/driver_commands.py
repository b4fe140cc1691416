"""The command lines that start a driver (docs/driver.md), and how a run record spells them.

A command names files of this machine: the interpreter sockrace runs under, the shipped drivers
inside the installed package. A run record is handed to other machines, so it keeps those words as
placeholders (`portable`) that the machine replaying it fills in with its own (`resolved`):

    {python}          the interpreter sockrace runs under (a `--backend` check without `--python`)
    {python_driver}   drivers/python_driver.py of the installed sockrace
    {node_driver}     drivers/node/driver.js of the installed sockrace
    node              Node.js, found on PATH

An interpreter the user named (`--python /opt/py38/bin/python`) is kept as named; `sockrace replay
FILE --python PYTHON` (or `--driver COMMAND`) replays under another. No asyncio here: loading a record
imports this.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

OWN_PYTHON: Final = "{python}"
PYTHON_DRIVER: Final = "{python_driver}"
NODE_DRIVER: Final = "{node_driver}"
NODE: Final = "node"


def python_driver_path() -> Path:
    """The shipped Python driver (drivers/python_driver.py, package data)."""
    return Path(__file__).resolve().parent.parent / "drivers" / "python_driver.py"


def node_driver_path() -> Path:
    """The shipped Node driver (drivers/node/driver.js)."""
    return Path(__file__).resolve().parent.parent / "drivers" / "node" / "driver.js"


def driver_command(*, python: str | None = None, driver: str | None = None,
                   backend: str | None = None) -> tuple[str, ...]:
    """The command line that starts a driver: the shipped Python driver under `python` (its
    `backend` the default it offers first, when not asyncio), or `driver` split as a shell would
    (the word `node` alone: the shipped Node driver under `node`)."""
    if python is not None:
        if backend is not None and backend != "asyncio":
            return python, str(python_driver_path()), "--backend", backend
        return python, str(python_driver_path())
    if backend is not None:
        raise ValueError("a backend is the Python driver's (--python); a driver command names its own")
    if driver is None:
        raise ValueError("driver_command needs python= or driver=")
    if driver.strip() == NODE:
        return shutil.which(NODE) or NODE, str(node_driver_path())
    words = tuple(shlex.split(driver))
    if not words:
        raise ValueError("the driver command is empty")
    return words


def shipped_python_backend(command: Sequence[str]) -> str | None:
    """The backend `command` starts the shipped Python driver with ("asyncio" when it names none),
    or None when `command` is not the shipped Python driver."""
    if len(command) == 2 and command[1] == str(python_driver_path()):
        return "asyncio"
    if len(command) == 4 and command[1] == str(python_driver_path()) and command[2] == "--backend":
        return command[3]
    return None


def driver_words(command: Sequence[str]) -> list[str]:
    """The `sockrace check` options that start `command` again: `--python PYTHON` (left out when it
    is sockrace's own interpreter and a backend says a driver is needed) and `--backend NAME` for the
    shipped Python driver, `--driver node` for the shipped Node one, else `--driver COMMAND`."""
    backend = shipped_python_backend(command)
    if backend is not None:
        if backend == "asyncio":
            return ["--python", command[0]]
        own = command[0] == sys.executable
        return [*([] if own else ["--python", command[0]]), "--backend", backend]
    if len(command) == 2 and command[1] == str(node_driver_path()) and Path(command[0]).name == NODE:
        return ["--driver", NODE]
    return ["--driver", shlex.join(command)]


def portable(command: Sequence[str]) -> tuple[str, ...]:
    """`command` as a run record keeps it: this machine's sockrace interpreter and shipped drivers
    as placeholders, the rest as given."""
    if shipped_python_backend(command) is not None:
        python = OWN_PYTHON if command[0] == sys.executable else command[0]
        return (python, PYTHON_DRIVER, *command[2:])
    if len(command) == 2 and command[1] == str(node_driver_path()) and Path(command[0]).name == NODE:
        return NODE, NODE_DRIVER
    return tuple(command)


def resolved(words: Sequence[str]) -> tuple[str, ...]:
    """A record's driver command with this machine's files for its placeholders."""
    places = {OWN_PYTHON: sys.executable, PYTHON_DRIVER: str(python_driver_path()),
              NODE_DRIVER: str(node_driver_path())}
    command = tuple(places.get(word, word) for word in words)
    if len(command) == 2 and command[0] == NODE and words[1] == NODE_DRIVER:
        return shutil.which(NODE) or NODE, command[1]
    return command


def replaced(command: Sequence[str] | None, *, python: str | None = None,
             driver: str | None = None) -> tuple[str, ...]:
    """A recorded run's driver `command` (None: it ran in sockrace's process) started another way:
    under the interpreter `python` (the recorded backend of the shipped Python driver kept), or as
    the command `driver`."""
    if driver is not None:
        return driver_command(driver=driver)
    assert python is not None
    backend = None if command is None else shipped_python_backend(command)
    return driver_command(python=python, backend=None if backend in (None, "asyncio") else backend)
