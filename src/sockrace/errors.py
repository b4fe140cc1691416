"""sockrace's exceptions: one tree, one place.

    SockraceError                    the base: `except SockraceError` catches everything sockrace raises
    ├── ProtocolError (protocol.py)  the bytes broke the grammar; `code` is the word of the ERR reply
    │   └── LineTooLong              a line over the limit
    ├── ConnectionBusyError          a second coroutine used a connection while a request was in flight
    ├── ConnectionClosedError        this side closed the connection (or a strategy gave it up); nothing
    │                                was sent, nothing is owed
    ├── ConnectionBrokenError        the peer or the network ended it, or a request abandoned halfway
    │                                left a reply owed on it; the cause, when there is one, is chained
    │                                (`raise ConnectionBrokenError(...) from exc`) and kept as __cause__
    └── RecordError                  a file is not a run record this sockrace can replay

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
