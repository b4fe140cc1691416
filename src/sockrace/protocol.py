"""The sockrace line protocol, sans-IO: bytes in, events out; events in, bytes out.

Nothing here imports asyncio or touches a socket, so every rule can be tested synchronously,
byte by byte. The grammar (also in the README):

    request = [ "#" tag SP ] verb [ SP arguments ] EOL          EOL = LF | CR LF
    reply   = [ "#" tag SP ] ( "OK" [ SP payload ] | "ERR" SP code SP message ) LF

Verbs are case-insensitive. A tagged request gets a reply carrying the same tag, which is what
lets a multiplexing client match replies to requests without relying on their order; an error
reply too, whenever the line starts with a valid tag (see parse_request). A line is UTF-8 text
with no control character: none of U+0000-U+001F, U+007F or U+0080-U+009F, except the CR of a
CRLF ending. The line limit counts the line without its LF or CRLF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Final

from sockrace.errors import LineTooLong as LineTooLong
from sockrace.errors import ProtocolError as ProtocolError  # defined there, named here too

# asyncio's own StreamReader default; CPython calls it a security feature, and so do we:
# no line, from either side, may make a peer buffer more than this.
DEFAULT_MAX_LINE: Final = 64 * 1024

# SLEEP exists to make latency visible, not to let one request pin a connection for hours.
MAX_SLEEP_MS: Final = 60_000

# INCR works on signed 64-bit integers, like Redis; anything wider is a RANGE error, not a bignum.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

MAX_TAG_LENGTH: Final = 32
TAG_CHARS: Final = "[A-Za-z0-9_.-]"
_TAG_RE: Final = re.compile(rf"{TAG_CHARS}{{1,{MAX_TAG_LENGTH}}}")
# A valid tag at the start of a raw line, followed by a space or the end: found before decoding, so
# that even a line refused as a whole (not UTF-8, control characters) is answered with its tag.
_LEADING_TAG_RE: Final = re.compile(rf"#({TAG_CHARS}{{1,{MAX_TAG_LENGTH}}})(?: |$)".encode())
# The control characters a line may not hold: C0 (U+0000-U+001F), DEL (U+007F) and C1
# (U+0080-U+009F). Exactly these, on every Python: str.isprintable() also refused ordinary text
# (no-break space, zero-width joiner, private use...) and changes with the Unicode version.
_CONTROL_RE: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
# The decimal form of an int64 is at most 20 characters; refusing longer digit strings up front keeps
# int() from doing quadratic work on a hostile 60 KiB number.
_INT_RE: Final = re.compile(r"[+-]?[0-9]{1,20}")




# --------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """Base of every request event. `tag` is echoed in the reply when given."""

    tag: str | None = None
    verb: ClassVar[str] = ""

    def arguments(self) -> str:
        """The request's arguments as they appear on the wire after the verb ("" when none)."""
        return ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Request):
    verb: ClassVar[str] = "PING"


@dataclass(frozen=True, slots=True, kw_only=True)
class Echo(Request):
    text: str
    verb: ClassVar[str] = "ECHO"

    def arguments(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True, kw_only=True)
class Incr(Request):
    key: str
    amount: int = 1
    verb: ClassVar[str] = "INCR"

    def arguments(self) -> str:
        return self.key if self.amount == 1 else f"{self.key} {self.amount}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Get(Request):
    key: str
    verb: ClassVar[str] = "GET"

    def arguments(self) -> str:
        return self.key


@dataclass(frozen=True, slots=True, kw_only=True)
class Set(Request):
    key: str
    value: str
    verb: ClassVar[str] = "SET"

    def arguments(self) -> str:
        return f"{self.key} {self.value}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Sleep(Request):
    ms: int
    text: str
    verb: ClassVar[str] = "SLEEP"

    def arguments(self) -> str:
        return f"{self.ms} {self.text}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats(Request):
    verb: ClassVar[str] = "STATS"


@dataclass(frozen=True, slots=True, kw_only=True)
class Quit(Request):
    verb: ClassVar[str] = "QUIT"


# --------------------------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    tag: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ok(Reply):
    payload: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Err(Reply):
    code: str
    message: str


# --------------------------------------------------------------------------------------------- decoding


def strip_line_ending(line: bytes) -> bytes:
    """`line` without its b"\\n" or b"\\r\\n" (one of them, when present)."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


def leading_tag(line: bytes) -> str | None:
    """The tag of a raw line (its ending stripped) when it starts with a valid one, else None."""
    match = _LEADING_TAG_RE.match(line) if line.startswith(b"#") else None
    return None if match is None else match[1].decode()


def _decode(line: bytes) -> str:
    """Decode a line (its ending stripped); refuse what a terminal or a log would mangle: bytes
    that are not UTF-8, and control characters (see _CONTROL_RE)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("BADLINE", "line is not valid UTF-8") from None
    if _CONTROL_RE.search(text):
        raise ProtocolError("BADLINE", "line contains control characters") from None
    return text


def _split_tag(text: str) -> tuple[str | None, str]:
    if not text.startswith("#"):
        return None, text
    tag, _, rest = text[1:].partition(" ")
    if not _TAG_RE.fullmatch(tag):
        raise ProtocolError("BADTAG", f"tag must be 1-{MAX_TAG_LENGTH} letters, digits, '_', '.' or '-'")
    return tag, rest


def _parse_int(word: str, what: str, low: int, high: int) -> int:
    if not _INT_RE.fullmatch(word):
        raise ProtocolError("NOTINT", f"{what} must be an integer, got {word[:40]!r}")
    value = int(word)
    if not low <= value <= high:
        raise ProtocolError("RANGE", f"{what} must be between {low} and {high}")
    return value


def _words(rest: str, verb: str, count: int) -> list[str]:
    words = rest.split(" ") if rest else []
    if len(words) != count or "" in words:
        raise ProtocolError("ARITY", f"{verb} takes {count} argument{'s' if count != 1 else ''}")
    return words


def _key_and_rest(rest: str, usage: str) -> tuple[str, str]:
    key, sep, tail = rest.partition(" ")
    if not key or not sep or not tail:
        raise ProtocolError("ARITY", f"usage: {usage}")
    return key, tail


def parse_request(line: bytes) -> Request:
    """Parse one request line (with or without its line ending).

    Raises ProtocolError for anything outside the grammar; the server turns it into an ERR reply.
    When the line starts with a valid tag the error carries it, whatever else is wrong, even bytes
    that are not UTF-8: a multiplexing client can then match every reply to its request. Only two
    errors are never tagged: BADTAG (the tag itself is invalid) and TOOLONG (the line is not kept).
    """
    raw = strip_line_ending(line)
    try:
        return _parse_request(raw)
    except ProtocolError as exc:
        exc.tag = leading_tag(raw) if exc.code != "BADTAG" else None
        raise


def _parse_request(line: bytes) -> Request:
    tag, text = _split_tag(_decode(line))
    verb, _, rest = text.partition(" ")
    if not verb:
        raise ProtocolError("EMPTY", "empty request")
    upper = verb.upper()
    if upper == "PING":
        _words(rest, upper, 0)
        return Ping(tag=tag)
    if upper == "ECHO":
        if not rest:
            raise ProtocolError("ARITY", "usage: ECHO <text>")
        return Echo(tag=tag, text=rest)
    if upper == "INCR":
        words = rest.split(" ") if rest else []
        if len(words) not in (1, 2) or "" in words:
            raise ProtocolError("ARITY", "usage: INCR <key> [amount]")
        amount = _parse_int(words[1], "amount", INT64_MIN, INT64_MAX) if len(words) == 2 else 1
        return Incr(tag=tag, key=words[0], amount=amount)
    if upper == "GET":
        (key,) = _words(rest, upper, 1)
        return Get(tag=tag, key=key)
    if upper == "SET":
        key, value = _key_and_rest(rest, "SET <key> <value>")
        return Set(tag=tag, key=key, value=value)
    if upper == "SLEEP":
        ms_word, text_arg = _key_and_rest(rest, "SLEEP <ms> <text>")
        return Sleep(tag=tag, ms=_parse_int(ms_word, "ms", 0, MAX_SLEEP_MS), text=text_arg)
    if upper == "STATS":
        _words(rest, upper, 0)
        return Stats(tag=tag)
    if upper == "QUIT":
        _words(rest, upper, 0)
        return Quit(tag=tag)
    raise ProtocolError("UNKNOWN", f"unknown verb {verb[:40]!r}")


def parse_reply(line: bytes) -> Reply:
    """Parse one reply line. Raises ProtocolError when it is not a reply at all."""
    tag, text = _split_tag(_decode(strip_line_ending(line)))
    status, _, rest = text.partition(" ")
    if status == "OK":
        return Ok(tag=tag, payload=rest)
    if status == "ERR":
        code, _, message = rest.partition(" ")
        if not code:
            raise ProtocolError("BADREPLY", "ERR reply without a code")
        return Err(tag=tag, code=code, message=message)
    raise ProtocolError("BADREPLY", f"reply must start with OK or ERR, got {text[:40]!r}")


# --------------------------------------------------------------------------------------------- encoding


def _tag_prefix(tag: str | None) -> str:
    return "" if tag is None else f"#{tag} "


def format_request(request: Request) -> bytes:
    args = request.arguments()
    body = f"{request.verb} {args}" if args else request.verb
    return f"{_tag_prefix(request.tag)}{body}\n".encode()


def format_reply(reply: Reply) -> bytes:
    if isinstance(reply, Ok):
        body = f"OK {reply.payload}" if reply.payload else "OK"
    elif isinstance(reply, Err):
        body = f"ERR {reply.code} {reply.message}"
    else:  # pragma: no cover - the Reply base is never sent
        raise TypeError(f"not a concrete reply: {reply!r}")
    return f"{_tag_prefix(reply.tag)}{body}\n".encode()


def error_reply(error: ProtocolError) -> Err:
    return Err(tag=error.tag, code=error.code, message=error.message)


# --------------------------------------------------------------------------------------------- framing




class LineBuffer:
    """Frames a byte stream into lines, with an explicit size limit.

    `feed()` bytes as they arrive, then call `next_line()` until it returns None ("need more data").
    A line longer than `max_line` (its b"\\n" or b"\\r\\n" not counted) raises LineTooLong once; the
    buffer then discards bytes up to the next newline and carries on, so one bad line costs one ERR
    reply, not the connection. At EOF, `leftover()` returns an unterminated final line, if any.
    """

    __slots__ = ("_buffer", "_discarding", "_scan_from", "max_line")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.max_line = max_line
        # Only ever changed in place, so that `buffered` can hand out the object itself.
        self._buffer = bytearray()
        self._scan_from = 0  # bytes before this index are known to hold no newline
        self._discarding = False

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def buffered(self) -> bytearray:
        """The bytes held and not yet framed, as a live view: the same object for the buffer's
        whole life, empty exactly when no line can come out before the next feed. Read only."""
        return self._buffer

    def next_line(self) -> bytes | None:
        """Return the next complete line including its b"\\n", or None when more data is needed."""
        while True:
            end = self._buffer.find(b"\n", self._scan_from)
            if end < 0:
                if self._discarding:
                    self._buffer.clear()
                    self._scan_from = 0
                    return None
                self._scan_from = len(self._buffer)
                # A last b"\r" may be the start of the line's ending, which the limit leaves out.
                if len(self._buffer) - self._buffer.endswith(b"\r") > self.max_line:
                    self._buffer.clear()
                    self._scan_from = 0
                    self._discarding = True
                    raise LineTooLong(self.max_line)
                return None
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            self._scan_from = 0
            if self._discarding:  # the tail of a line already refused
                self._discarding = False
                continue
            if len(line) - 1 - line.endswith(b"\r\n") > self.max_line:
                raise LineTooLong(self.max_line)
            return line

    def frames_whole(self, data: bytes) -> bool:
        """Whether `data`, fed now, would come out as its own lines and nothing else, none over the
        limit: nothing is held or being discarded, and `data` ends with a b"\\n" and is no longer
        than the limit. The caller may then answer `data` as it is, without feeding it."""
        return not self._buffer and not self._discarding and data[-1:] == b"\n" and len(data) <= self.max_line

    def feed_lines(self, data: bytes) -> list[bytes]:
        """`feed(data)` then `next_lines()`, in one call. With nothing buffered and `data` made of whole
        lines (lock-step traffic: one request per read) the lines are split out of `data` itself,
        without a copy into the buffer and back."""
        if not self._buffer and not self._discarding and data[-1:] == b"\n":
            lines = data.split(b"\n")
            lines.pop()  # the empty string after the last newline
            # The whole read within the limit says the same as measuring each line, without the
            # cost of max() (it parses keyword arguments: about a thousand instructions a call).
            if len(data) <= self.max_line or max(map(len, lines)) <= self.max_line:
                return lines
        self._buffer += data
        return self.next_lines()

    def next_lines(self) -> list[bytes]:
        """Every complete line buffered, in order and WITHOUT its b"\\n"; [] when more data is needed.

        Gives the same lines and the same LineTooLong errors as calling `next_line()` until it
        returns None, but in one split instead of a search and a copy per line. When a line over
        the limit is among them, the lines before it come first, one call at a time, then the error.
        """
        buffer = self._buffer
        if not buffer:
            return []
        if not self._discarding:
            if buffer[-1] == 0x0A:  # the usual case: reads end where lines end; one copy, no search
                lines = bytes(buffer).split(b"\n")
                lines.pop()  # the empty string after the last newline
                if len(buffer) <= self.max_line or max(map(len, lines)) <= self.max_line:
                    buffer.clear()
                    self._scan_from = 0
                    return lines
            else:
                end = buffer.rfind(b"\n", self._scan_from)
                if end >= 0:
                    lines = bytes(buffer[:end]).split(b"\n")
                    if end <= self.max_line or max(map(len, lines)) <= self.max_line:
                        del buffer[: end + 1]
                        self._scan_from = 0
                        return lines
        line = self.next_line()
        return [] if line is None else [line[:-1]]

    def leftover(self) -> bytes:
        """What remains after the last newline (an unterminated line), and clear it."""
        rest = b"" if self._discarding else bytes(self._buffer)
        self._buffer.clear()
        self._scan_from = 0
        self._discarding = False
        return rest
