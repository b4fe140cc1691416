"""sockrace's exceptions: one tree, one place.

    SockraceError                    the base: `except SockraceError` catches everything sockrace raises
    ├── ProtocolError                the bytes broke the grammar; `code` is the word of the ERR reply
    │   └── LineTooLong              a line over the limit
    ├── ConnectionBusyError          a second coroutine used a connection while a request was in flight
    ├── ConnectionClosedError        this side closed the connection (or a strategy gave it up); nothing
    │                                was sent, nothing is owed
    ├── ConnectionBrokenError        the peer or the network ended it, or a request abandoned halfway
    │                                left a reply owed on it; the cause, when there is one, is chained
    │                                (`raise ConnectionBrokenError(...) from exc`) and kept as __cause__
    ├── LoopUnavailable              the event loop asked for cannot be used here (uvloop not installed)
    ├── ScenarioNotFound             a check's scenario name leads to no async function
    ├── ScenarioError                the scenario (the user's code, a guest) failed: it raised, hung, or
    │                                gave no (call, expect)
    ├── HammerError                  a run could not be judged: `expect` raised, or a call raised what
    │                                would end a program
    ├── UpstreamError                a check's upstream server could not be reached
    ├── NotFailing                   a setting handed to shrink does not fail often enough
    └── RecordError                  a file is not a run record this sockrace can replay

    GuestExit                        internal: a guest's SystemExit (say) carried as an Exception
    FaultLogError (an OSError)       the proxy's fault log could not be written
    OutputError, UsageError          the command line's: its output failed, options clash

The three connection errors follow trio's resource errors (Busy / Closed / Broken): *Busy* and
*Closed* are the caller's own doing, *Broken* is not. Low-level errors (ConnectionResetError,
BrokenPipeError, asyncio.IncompleteReadError) are translated once, where they are caught, never
passed on as they are. Pure: imports nothing.
"""

from __future__ import annotations


class SockraceError(Exception):
    """Base of every exception sockrace raises on purpose."""


class ConnectionBusyError(SockraceError, RuntimeError):
    """A coroutine used a guarded connection while another coroutine's request was in flight on it.

    The same alarm as trio's and anyio's BusyResourceError and asyncpg's "another operation is in
    progress": the misuse is reported at once instead of crossing two replies. Also a RuntimeError,
    as asyncio's own "readuntil() called while another coroutine is already waiting" is.
    """


class ConnectionClosedError(SockraceError):
    """The connection was closed on this side before or while the request was made."""


class ConnectionBrokenError(SockraceError):
    """The connection is unusable through no doing of the caller's: the peer closed or reset it, a
    reply could not be framed, or a request was abandoned between its write and its read so that
    its reply may still arrive and would answer the next request."""


class RecordError(SockraceError):
    """A file is not a run record this sockrace can replay: not JSON, another format, a newer
    version, or a record whose fields do not hold together. The message is one sentence."""


class ProtocolError(SockraceError):
    """Something on the wire broke the grammar. `code` is the word sent back in an ERR reply, and
    `tag` the line's tag when it had a valid one (its error reply then carries it)."""

    def __init__(self, code: str, message: str, tag: str | None = None) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.tag = tag


class LineTooLong(ProtocolError):
    def __init__(self, limit: int) -> None:
        super().__init__("TOOLONG", f"line longer than {limit} bytes")


class LoopUnavailable(SockraceError, RuntimeError):
    """The requested event loop cannot be used here (uvloop not installed)."""


class ScenarioNotFound(SockraceError):
    """The name does not lead to an async function: no such file, module or function, or not async."""


class ScenarioError(SockraceError):
    """The scenario failed: it raised (on import, set-up or clean-up), hung, or returned no (call, expect)."""


class DriverNotStarted(ScenarioError):
    """A driver's command could not be started (no such interpreter or file, not executable)."""


class HammerError(SockraceError):
    """The run could not be judged: the user's `expect` raised, or a call raised what would end a
    program (SystemExit, KeyboardInterrupt, ...). The user's exception is the __cause__."""


class UpstreamError(SockraceError):
    """The upstream server could not be reached (before the run), or refused the proxy during it."""


class NotFailing(SockraceError):
    """The setting handed to shrink does not fail often enough to be shrunk."""


class GuestExit(Exception):
    """The guest's code raised what would end a program; `raised` is that exception and `where` says
    where (e.g. "call 17"). Carried as an Exception so that asyncio passes it through tasks as it does
    any error (a SystemExit or a KeyboardInterrupt raised in a task leaves the event loop at once)."""

    def __init__(self, raised: BaseException, where: str, described: str) -> None:
        super().__init__(f"{where} raised {described}")
        self.raised = raised
        self.where = where


class OsExitCalled(SystemExit):
    """The guest called os._exit(code) while it ran in sockrace's process (check/guest.os_exit_refused):
    raised in its place, since ending the process with the guest's code (0) would read as a clean
    verdict. A SystemExit, so that it ends the run as the guest's own sys.exit() does."""


class FaultLogError(OSError):
    """The proxy's fault log could not be written (a full disk, say); the OSError is the cause."""


class OutputError(Exception):
    """Writing the results failed; the OSError is the cause. Raised by the command line's `emit`
    only, so that an error of the output is never mistaken for one of the network."""


class UsageError(Exception):
    """A combination of options the library refuses (argparse checks each option alone)."""
