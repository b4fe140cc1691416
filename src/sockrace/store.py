"""What the server's verbs do to its data: pure, synchronous, no I/O.

The server owns the timing (SLEEP's delay, the reply latency) and the sockets; this module only
maps a request to its reply, so that the semantics are tested without a network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import repeat
from typing import Final, cast

from sockrace.protocol import (
    INT64_MAX,
    INT64_MIN,
    PLAIN_PING_OR_ECHO,
    Echo,
    Err,
    Get,
    Incr,
    Ok,
    Ping,
    Quit,
    Reply,
    Request,
    Set,
    Sleep,
    Stats,
)

# Defaults for the store's bounds. Together they cap what clients can make the server keep forever:
# at most about DEFAULT_MAX_KEYS * (DEFAULT_MAX_KEY_BYTES + DEFAULT_MAX_VALUE_BYTES) = 43 MiB of data.
DEFAULT_MAX_KEYS: Final = 10_000
DEFAULT_MAX_KEY_BYTES: Final = 256  # keys are names, not payloads
DEFAULT_MAX_VALUE_BYTES: Final = 4096  # big enough for any test payload, small enough to multiply safely


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """What SET and INCR may store. Sizes are counted in UTF-8 bytes, as they arrive on the wire."""

    max_keys: int = DEFAULT_MAX_KEYS
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES

    def __post_init__(self) -> None:
        if min(self.max_keys, self.max_key_bytes, self.max_value_bytes) < 1:
            raise ValueError("store limits must be positive")


def stateless_reply(line: bytes) -> bytes | None:
    """The reply bytes to a well-formed PING or ECHO line, straight from its bytes; None otherwise.

    These two verbs touch no data, so their reply depends on the line alone: this fast path gives
    exactly `format_reply(store.apply(parse_request(line)))` (a property test checks it) without
    building events. Everything else (other verbs, odd spacing, errors) returns None, for the full
    parser to handle and to word its error.
    """
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    match = PLAIN_PING_OR_ECHO.fullmatch(line)
    if match is None:
        return None
    prefix, text = match.groups()
    if text is None:
        return prefix + b"OK PONG\n" if prefix else b"OK PONG\n"
    return prefix + b"OK " + text + b"\n" if prefix else b"OK " + text + b"\n"


# The same match with the optional b"\r" a line keeps once LineBuffer.next_lines() took its b"\n".
_PLAIN_LINE: Final = re.compile(PLAIN_PING_OR_ECHO.pattern + rb"\r?")


# For the whole-batch check below: with its separators made spaces, a block of lines is printable
# ASCII exactly when every line is.
_NEWLINES_TO_SPACES: Final = bytes.maketrans(b"\n", b" ")


def stateless_replies(lines: list[bytes]) -> bytes | None:
    """`b"".join(stateless_reply(line) for line in lines)` for lines without their b"\n" (as
    `LineBuffer.next_lines()` gives them), when every one is a well-formed PING or ECHO; else None.

    The server's hot path, with no Python code run per line (a property test checks it against
    `stateless_reply`). For ASCII, str.isprintable() is exactly the grammar's [ -~].
    """
    if len(lines) == 1:  # lock-step traffic, one line per read
        line = lines[0]
        # An untagged upper-case ECHO, the lock-step benchmark's request: a few C calls, where a
        # regex match costs several times as much on a line this short.
        if line.startswith(b"ECHO "):
            text = line[5:]
            if text and text.isascii() and text.decode().isprintable():
                return b"OK " + text + b"\n"
        match = _PLAIN_LINE.fullmatch(line)
        if match is None:
            return None
        prefix, text = match.groups(b"")
        return prefix + b"OK " + text + b"\n" if text else prefix + b"OK PONG\n"
    # Every line an untagged upper-case ECHO of printable text (the pipelined benchmark's load):
    # checked and answered over the whole block at once. Lines hold no b"\n", so b"\nECHO " can
    # only be the start of a line, and it is the start of every line when it occurs once per line.
    block = b"\n" + b"\n".join(lines)
    if (lines and block.count(b"\nECHO ") == len(lines) and min(map(len, lines)) > 5  # some text
            and block.isascii() and block.translate(_NEWLINES_TO_SPACES).decode().isprintable()):
        return block.replace(b"\nECHO ", b"\nOK ")[1:] + b"\n"
    # Anything else PING or ECHO (tags, lower case, b"\r"): one regex match per line, in C.
    matches = list(map(_PLAIN_LINE.fullmatch, lines))
    if not all(matches):
        return None
    # groups(b""): a tag prefix or b""; ECHO's text (never empty) or b"" for PING.
    every_groups = map(re.Match.groups, cast("list[re.Match[bytes]]", matches), repeat(b""))
    return b"".join([prefix + b"OK " + text + b"\n" if text else prefix + b"OK PONG\n"
                     for prefix, text in every_groups])


@dataclass(slots=True)
class Counters:
    """Server-wide figures reported by STATS."""

    connections: int = 0
    total_connections: int = 0
    requests: int = 0
    errors: int = 0


class Store:
    """The key-value data every connection shares, and the meaning of each verb."""

    __slots__ = ("counters", "data", "limits")

    def __init__(self, limits: StoreLimits | None = None) -> None:
        self.data: dict[str, str] = {}
        self.counters = Counters()
        self.limits = limits or StoreLimits()

    def apply(self, request: Request) -> Reply:
        """Return the reply to `request`. SLEEP's delay is the caller's business."""
        tag = request.tag
        match request:
            case Ping():
                return Ok(tag=tag, payload="PONG")
            case Echo(text=text) | Sleep(text=text):
                return Ok(tag=tag, payload=text)
            case Incr(key=key, amount=amount):
                return self.incr(tag, key, amount)
            case Get(key=key):
                value = self.data.get(key)
                if value is None:
                    return Err(tag=tag, code="NOKEY", message=f"no such key {key[:40]!r}")
                return Ok(tag=tag, payload=value)
            case Set(key=key, value=value):
                refusal = self.check_write(tag, key) or self.check_value(tag, value)
                if refusal is not None:
                    return refusal
                self.data[key] = value
                return Ok(tag=tag)
            case Stats():
                c = self.counters
                return Ok(
                    tag=tag,
                    payload=f"connections={c.connections} total_connections={c.total_connections} "
                    f"requests={c.requests} errors={c.errors} keys={len(self.data)}",
                )
            case Quit():
                return Ok(tag=tag, payload="BYE")
        raise TypeError(f"unknown request type {type(request).__name__}")  # pragma: no cover

    def read_int(self, tag: str | None, key: str) -> int | Err:
        """The integer stored at `key` (0 when absent), or the ERR reply when it holds text."""
        raw = self.data.get(key, "0")
        try:
            return int(raw)
        except ValueError:
            return Err(tag=tag, code="NOTINT", message=f"value at {key[:40]!r} is not an integer")

    def check_write(self, tag: str | None, key: str) -> Err | None:
        """The ERR reply when storing at `key` would break a limit (key size, key count), else None."""
        limits = self.limits
        if len(key.encode()) > limits.max_key_bytes:
            return Err(tag=tag, code="TOOBIG", message=f"key longer than {limits.max_key_bytes} bytes")
        if key not in self.data and len(self.data) >= limits.max_keys:
            return Err(tag=tag, code="FULL", message=f"the store already holds {limits.max_keys} keys")
        return None

    def check_value(self, tag: str | None, value: str) -> Err | None:
        limit = self.limits.max_value_bytes
        if len(value.encode()) > limit:
            return Err(tag=tag, code="TOOBIG", message=f"value longer than {limit} bytes")
        return None

    def write_int(self, tag: str | None, key: str, value: int) -> Reply:
        if not INT64_MIN <= value <= INT64_MAX:
            return Err(tag=tag, code="RANGE", message="increment would overflow a 64-bit integer")
        refusal = self.check_write(tag, key)
        if refusal is not None:
            return refusal
        self.data[key] = str(value)
        return Ok(tag=tag, payload=str(value))

    def incr(self, tag: str | None, key: str, amount: int) -> Reply:
        current = self.read_int(tag, key)
        if isinstance(current, Err):
            return current
        return self.write_int(tag, key, current + amount)
