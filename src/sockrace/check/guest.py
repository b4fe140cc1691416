"""The user's code is a guest: what it raises is described in one line, and what would end a program
(SystemExit, KeyboardInterrupt, GeneratorExit, any BaseException that is not an Exception) is told
apart from a real Ctrl-C, so that neither can end a check as if it had passed.

A real Ctrl-C is known by the SIGINT handler `watching_ctrl_c()` installs (the command line runs
every check under it): it notes the signal before raising KeyboardInterrupt, as Python's own handler
does. Without it (a check run from a library or a test) every KeyboardInterrupt is taken as real,
since a library cannot tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import weakref
from collections.abc import Iterator
from types import FrameType
from typing import Final, NoReturn

from sockrace.errors import GuestExit as GuestExit  # defined there, named here too
from sockrace.errors import OsExitCalled

# A message quoted in a one-line error is cut here: enough to recognise it, short enough for a line.
MAX_DESCRIBED: Final = 200

# Timers of sockrace's own that bound the guest's steps (scenario.contained's): pending while the
# guest's calls run, and nothing the guest waits on, so that whose turn it is (hammer's
# nothing_can_wake) does not take them for a timer of the guest's that will wake it.
OWN_TIMERS: Final[weakref.WeakSet[asyncio.TimerHandle]] = weakref.WeakSet()




class _CtrlC:
    """Whether a SIGINT arrived while our handler was installed."""

    installed = False
    seen = False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _CtrlC.seen = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def watching_ctrl_c() -> Iterator[None]:
    """Within the block, a real Ctrl-C is noted before it raises KeyboardInterrupt (main thread only;
    elsewhere signals cannot be handled and nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    _CtrlC.installed, _CtrlC.seen = True, False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _CtrlC.installed = False


@contextlib.contextmanager
def os_exit_refused() -> Iterator[list[int]]:
    """Within the block, os._exit(status) called in this process raises OsExitCalled (a SystemExit)
    instead of ending the process at once with the guest's status: os._exit(0) would end a check
    with exit 0, a clean verdict nobody judged. Yields the statuses asked for, in order, so that an
    attempt nobody saw raise (in a thread of the guest's, say) still ends the check as the guest's
    error. A child forked meanwhile (multiprocessing's) still exits as it asks. sockrace's own
    os._exit calls use a reference taken before the block."""
    real_exit, owner = os._exit, os.getpid()
    asked: list[int] = []

    def refused(status: int) -> NoReturn:
        if os.getpid() != owner:
            real_exit(status)
        asked.append(status)
        raise OsExitCalled(status)

    os._exit = refused
    try:
        yield asked
    finally:
        os._exit = real_exit


def is_real_ctrl_c(exc: BaseException) -> bool:
    """A KeyboardInterrupt from a real Ctrl-C (or, without watching_ctrl_c, any KeyboardInterrupt)."""
    return isinstance(exc, KeyboardInterrupt) and (_CtrlC.seen or not _CtrlC.installed)


def ends_program(exc: BaseException) -> bool:
    """Raised by the guest, would end a program: a BaseException that is not an Exception nor a
    CancelledError (which asyncio's own cancellation uses), and not a real Ctrl-C."""
    return not isinstance(exc, Exception | asyncio.CancelledError) and not is_real_ctrl_c(exc)


def describe(exc: BaseException) -> str:
    """ "Type: message" on one line, at most MAX_DESCRIBED characters ("Type" alone for an empty
    message; SystemExit shows its code); never raises, whatever the guest's __str__ does."""
    name = type(exc).__name__
    try:
        text = repr(exc.code) if isinstance(exc, SystemExit) else str(exc)
    except Exception:
        text = "(its message could not be formatted)"
    text = " ".join(text.split())
    line = f"{name}: {text}" if text else name
    return line if len(line) <= MAX_DESCRIBED else line[: MAX_DESCRIBED - 3] + "..."
