"""What the server's verbs do to its data: pure, synchronous, no I/O.

The server owns the timing (SLEEP's delay, the reply latency) and the sockets; this module only
maps a request to its reply, so that the semantics are tested without a network.

Keys and values are held as their UTF-8 bytes, the size the limits count: a Python str holding one
character beyond U+FFFF spends 4 bytes on every character, so text with one emoji would take four
times what the limits promise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sockrace.protocol import (
    INT64_MAX,
    INT64_MIN,
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
# at most about DEFAULT_MAX_KEYS * (DEFAULT_MAX_KEY_BYTES + DEFAULT_MAX_VALUE_BYTES) = 43 MB of data,
# plus about 100 bytes of object and dict overhead per key.
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
        self.data: dict[bytes, bytes] = {}  # UTF-8 keys and values (see the module's docstring)
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
                value = self.get(key)
                if value is None:
                    return Err(tag=tag, code="NOKEY", message=f"no such key {key[:40]!r}")
                return Ok(tag=tag, payload=value)
            case Set(key=key, value=value):
                return self.set(tag, key, value)
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

    def get(self, key: str) -> str | None:
        """The value stored at `key`, or None."""
        value = self.data.get(key.encode())
        return None if value is None else value.decode()

    def set(self, tag: str | None, key: str, value: str) -> Reply:
        """SET: store `value` at `key` unless a limit refuses it."""
        key_bytes, value_bytes = key.encode(), value.encode()
        refusal = self._check_write(tag, key_bytes)
        if refusal is None and len(value_bytes) > self.limits.max_value_bytes:
            limit = self.limits.max_value_bytes
            refusal = Err(tag=tag, code="TOOBIG", message=f"value longer than {limit} bytes")
        if refusal is not None:
            return refusal
        self.data[key_bytes] = value_bytes
        return Ok(tag=tag)

    def read_int(self, tag: str | None, key: str) -> int | Err:
        """The integer stored at `key` (0 when absent), or the ERR reply when it holds text."""
        raw = self.data.get(key.encode(), b"0")
        try:
            return int(raw)
        except ValueError:
            return Err(tag=tag, code="NOTINT", message=f"value at {key[:40]!r} is not an integer")

    def _check_write(self, tag: str | None, key: bytes) -> Err | None:
        """The ERR reply when storing at `key` would break a limit (key size, key count), else None."""
        limits = self.limits
        if len(key) > limits.max_key_bytes:
            return Err(tag=tag, code="TOOBIG", message=f"key longer than {limits.max_key_bytes} bytes")
        if key not in self.data and len(self.data) >= limits.max_keys:
            return Err(tag=tag, code="FULL", message=f"the store already holds {limits.max_keys} keys")
        return None

    def write_int(self, tag: str | None, key: str, value: int) -> Reply:
        if not INT64_MIN <= value <= INT64_MAX:
            return Err(tag=tag, code="RANGE", message="increment would overflow a 64-bit integer")
        key_bytes = key.encode()
        refusal = self._check_write(tag, key_bytes)
        if refusal is not None:
            return refusal
        text = str(value)
        self.data[key_bytes] = text.encode()
        return Ok(tag=tag, payload=text)

    def incr(self, tag: str | None, key: str, amount: int) -> Reply:
        current = self.read_int(tag, key)
        if isinstance(current, Err):
            return current
        return self.write_int(tag, key, current + amount)
