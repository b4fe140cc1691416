from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sockrace.protocol import (
    MAX_SLEEP_MS,
    Echo,
    Err,
    Get,
    Incr,
    LineBuffer,
    LineTooLong,
    Ok,
    Ping,
    ProtocolError,
    Quit,
    Set,
    Sleep,
    Stats,
    error_reply,
    format_reply,
    format_request,
    parse_reply,
    parse_request,
)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"PING\n", Ping()),
        (b"ping\r\n", Ping()),
        (b"ECHO hello world\n", Echo(text="hello world")),
        (b"INCR hits\n", Incr(key="hits")),
        (b"INCR hits -5\n", Incr(key="hits", amount=-5)),
        (b"GET k\n", Get(key="k")),
        (b"SET k some value\n", Set(key="k", value="some value")),
        (b"SLEEP 250 late\n", Sleep(ms=250, text="late")),
        (b"STATS\n", Stats()),
        (b"QUIT\n", Quit()),
        (b"#a1 ECHO x\n", Echo(tag="a1", text="x")),
        ("ECHO h\u00e9llo\n".encode(), Echo(text="h\u00e9llo")),
    ],
)
def test_parse_request(line: bytes, expected: object) -> None:
    assert parse_request(line) == expected


@pytest.mark.parametrize(
    ("line", "code", "message"),
    [
        (b"\n", "EMPTY", "empty request"),
        (b"FLY away\n", "UNKNOWN", "unknown verb 'FLY'"),
        (b"PING extra\n", "ARITY", "PING takes 0 arguments"),
        (b"ECHO\n", "ARITY", "usage: ECHO <text>"),
        (b"GET\n", "ARITY", "GET takes 1 argument"),
        (b"GET a b\n", "ARITY", "GET takes 1 argument"),
        (b"SET k\n", "ARITY", "usage: SET <key> <value>"),
        (b"INCR\n", "ARITY", "usage: INCR <key> \\[amount\\]"),
        (b"INCR k x\n", "NOTINT", "amount must be an integer, got 'x'"),
        (b"INCR k 99999999999999999999\n", "RANGE", "amount must be between"),
        (b"INCR k " + b"9" * 5000 + b"\n", "NOTINT", "amount must be an integer"),
        (b"SLEEP soon x\n", "NOTINT", "ms must be an integer"),
        (f"SLEEP {MAX_SLEEP_MS + 1} x\n".encode(), "RANGE", f"ms must be between 0 and {MAX_SLEEP_MS}"),
        (b"SLEEP 5\n", "ARITY", "usage: SLEEP <ms> <text>"),
        (b"ECHO \xff\n", "BADLINE", "line is not valid UTF-8"),
        (b"ECHO a\x00b\n", "BADLINE", "line contains control characters"),
        (b"#bad/tag PING\n", "BADTAG", "tag must be"),
    ],
)
def test_parse_request_errors(line: bytes, code: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        parse_request(line)
    assert info.value.code == code


@pytest.mark.parametrize(
    "request_",
    [Ping(), Echo(text="a b"), Incr(key="k"), Incr(key="k", amount=3), Get(key="k"),
     Set(key="k", value="v w"), Sleep(ms=1, text="t"), Stats(), Quit(), Echo(tag="x-1", text="y")],
)
def test_request_round_trip(request_: object) -> None:
    assert parse_request(format_request(request_)) == request_  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reply", "wire"),
    [
        (Ok(payload="PONG"), b"OK PONG\n"),
        (Ok(), b"OK\n"),
        (Err(code="NOKEY", message="no such key 'k'"), b"ERR NOKEY no such key 'k'\n"),
        (Ok(tag="7", payload="hi"), b"#7 OK hi\n"),
    ],
)
def test_reply_round_trip(reply: object, wire: bytes) -> None:
    assert format_reply(reply) == wire  # type: ignore[arg-type]
    assert parse_reply(wire) == reply


@pytest.mark.parametrize("wire", [b"PONG\n", b"ERR\n", b"\xff\n", b"OKAY\n"])
def test_parse_reply_rejects_non_replies(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_reply(wire)


def _all_lines(buffer: LineBuffer) -> list[bytes | str]:
    found: list[bytes | str] = []
    while True:
        try:
            line = buffer.next_line()
        except LineTooLong:
            found.append("TOOLONG")
            continue
        if line is None:
            return found
        found.append(line)


STREAM = b"PING\r\nECHO one two\n\nSET k v\nINCR k"


def test_line_buffer_byte_by_byte_matches_whole() -> None:
    whole = LineBuffer()
    whole.feed(STREAM)
    expected = _all_lines(whole)
    assert expected == [b"PING\r\n", b"ECHO one two\n", b"\n", b"SET k v\n"]
    assert whole.leftover() == b"INCR k"

    piecewise = LineBuffer()
    got: list[bytes | str] = []
    for i in range(len(STREAM)):
        piecewise.feed(STREAM[i : i + 1])
        got.extend(_all_lines(piecewise))
    assert got == expected
    assert piecewise.leftover() == b"INCR k"


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=10))
def test_line_buffer_any_split_gives_same_lines(data: bytes, cuts: list[int]) -> None:
    whole = LineBuffer(max_line=40)
    whole.feed(data)
    expected = _all_lines(whole)
    split = LineBuffer(max_line=40)
    got: list[bytes | str] = []
    previous = 0
    for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
        split.feed(data[previous:cut])
        previous = cut
        got.extend(_all_lines(split))
    # Splitting may report an over-long line earlier, but never a different sequence of good lines.
    assert [x for x in got if x != "TOOLONG"] == [x for x in expected if x != "TOOLONG"]
    assert split.leftover() == whole.leftover()


def test_line_buffer_refuses_long_line_once_then_resynchronises() -> None:
    buffer = LineBuffer(max_line=8)
    buffer.feed(b"ECHO " + b"x" * 20)
    with pytest.raises(LineTooLong, match="line longer than 8 bytes"):
        buffer.next_line()
    buffer.feed(b"y" * 20 + b"\nPING\n")
    assert buffer.next_line() == b"PING\n"
    assert buffer.next_line() is None


def test_line_buffer_refuses_complete_long_line() -> None:
    buffer = LineBuffer(max_line=4)
    buffer.feed(b"ECHO abc\nPING\n")
    with pytest.raises(LineTooLong):
        buffer.next_line()
    assert buffer.next_line() == b"PING\n"


def test_protocol_module_imports_no_asyncio() -> None:
    import ast
    import inspect

    import sockrace.protocol as module

    tree = ast.parse(inspect.getsource(module))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    # Of ours, only the exception tree, which imports nothing itself.
    forbidden = {name for name in imported if name.startswith(("asyncio", "socket", "sockrace"))}
    assert forbidden <= {"sockrace.errors"}


# ------------------------------------------------------------------------ tagged errors (one tag rule)
@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"#m3 SLEEP 70000 x\n", f"#m3 ERR RANGE ms must be between 0 and {MAX_SLEEP_MS}\n".encode()),
        (b"#m3 FLY\n", b"#m3 ERR UNKNOWN unknown verb 'FLY'\n"),
        (b"#m3 GET\n", b"#m3 ERR ARITY GET takes 1 argument\n"),
        (b"#m3 INCR k x\n", b"#m3 ERR NOTINT amount must be an integer, got 'x'\n"),
        (b"#m3\n", b"#m3 ERR EMPTY empty request\n"),
        (b"#m3 ECHO a\x00b\r\n", b"#m3 ERR BADLINE line contains control characters\n"),
        (b"#m3 ECHO \xff\n", b"#m3 ERR BADLINE line is not valid UTF-8\n"),  # the tag is ASCII: still valid
        (b"#m/3 PING\n", b"ERR BADTAG tag must be 1-32 letters, digits, '_', '.' or '-'\n"),
        (b"#m\xff PING\n", b"ERR BADLINE line is not valid UTF-8\n"),  # no valid tag to repeat
        (b"#m3\tPING\n", b"ERR BADLINE line contains control characters\n"),
    ],
)
def test_an_error_carries_the_tag_when_the_line_has_a_valid_one(line: bytes, reply: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(line)
    assert format_reply(error_reply(info.value)) == reply


# ------------------------------------------------------------------------ control characters
ORDINARY_TEXT = [
    "\U0001f469\u200d\U0001f4bb",  # a ZWJ emoji sequence
    "a\u00a0b",  # no-break space
    "\u200f\u05e9\u05dc\u05d5\u05dd",  # right-to-left mark, then Hebrew
    "a\u200bb",  # zero-width space
    "co\u00adop",  # soft hyphen
    "\ue000",  # private use
    "\U0001fae8",  # an emoji new in Unicode 15 (refused by str.isprintable() on 3.11)
    "\ufffe \U0010ffff",  # noncharacters: not controls either
]


@pytest.mark.parametrize("text", ORDINARY_TEXT)
def test_ordinary_unicode_is_text(text: str) -> None:
    assert parse_request(f"ECHO {text}\n".encode()) == Echo(text=text)


CONTROLS = [chr(code) for code in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if chr(code) != "\n"]


@pytest.mark.parametrize("control", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_exactly_the_c0_and_c1_controls_are_refused(control: str) -> None:
    with pytest.raises(ProtocolError, match="line contains control characters"):
        parse_request(f"ECHO a{control}b\n".encode())


@given(st.text(max_size=20))
@example("\r")
def test_a_line_is_refused_exactly_when_it_holds_a_control(text: str) -> None:
    line = ("ECHO x" + text + "y\n").encode("utf-8", "surrogatepass")  # a CR in `text` never ends the line
    has_control = any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)
    has_surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    if has_control or has_surrogate:
        with pytest.raises(ProtocolError, match=r"^BADLINE "):
            parse_request(line)
    else:
        parse_request(line)


def test_only_the_cr_of_the_line_ending_is_allowed() -> None:
    assert parse_request(b"ECHO a\r\n") == Echo(text="a")
    for line in (b"ECHO a\rb\n", b"ECHO a\r\r\n", b"\rECHO a\n"):
        with pytest.raises(ProtocolError, match="control characters"):
            parse_request(line)


# ------------------------------------------------------------------------ the line limit and CRLF
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_a_line_of_exactly_the_limit_is_accepted_with_either_ending(ending: bytes) -> None:
    buffer = LineBuffer(max_line=6)
    buffer.feed(b"ECHO a" + ending + b"ECHO ab" + ending + b"PING" + ending)
    assert buffer.next_line() == b"ECHO a" + ending
    with pytest.raises(LineTooLong, match="line longer than 6 bytes"):
        buffer.next_line()
    assert buffer.next_line() == b"PING" + ending


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_the_limit_ignores_the_ending_byte_by_byte_and_in_batches(ending: bytes) -> None:
    stream = b"ECHO a" + ending
    byte_by_byte = LineBuffer(max_line=6)
    for index in range(len(stream)):
        byte_by_byte.feed(stream[index:index + 1])
        found = byte_by_byte.next_line()
    assert found == stream
    assert LineBuffer(max_line=6).feed_lines(stream) == [stream[:-1]]
    refused = LineBuffer(max_line=6)
    refused.feed(b"ECHO ab\r")
    with pytest.raises(LineTooLong):
        refused.next_line()


# ------------------------------------------------------------------------ framing in batches
def frame_one_by_one(chunks: list[bytes], max_line: int) -> list[bytes | None]:
    """Lines (without b"\\n") and None for each LineTooLong, the way `next_line` frames them."""
    buffer, framed = LineBuffer(max_line), list[bytes | None]()
    for chunk in chunks:
        buffer.feed(chunk)
        while True:
            try:
                line = buffer.next_line()
            except LineTooLong:
                framed.append(None)
                continue
            if line is None:
                break
            framed.append(line[:-1])
    return framed


def _take_batches(buffer: LineBuffer, unfed: bytes | None, framed: list[bytes | None]) -> None:
    """The lines of one read, batch by batch: feed_lines(unfed) first when given, then next_lines()
    until nothing is left; a refused line is a None."""
    while True:
        try:
            if unfed is None:
                batch = buffer.next_lines()
            else:
                batch, unfed = buffer.feed_lines(unfed), None
        except LineTooLong:
            unfed = None
            framed.append(None)
            continue
        if not batch:
            break
        framed.extend(batch)


def frame_in_batches(chunks: list[bytes], max_line: int, *, feed_lines: bool = False) -> list[bytes | None]:
    """With next_lines() until nothing is left; with `feed_lines`, as the server frames: feed_lines()
    for each read's first batch."""
    buffer, framed = LineBuffer(max_line), list[bytes | None]()
    for chunk in chunks:
        unfed: bytes | None = chunk if feed_lines else None
        if not feed_lines:
            buffer.feed(chunk)
        _take_batches(buffer, unfed, framed)
    return framed


@given(chunks=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"x", b"\n")), max_size=12),
       max_line=st.integers(min_value=1, max_value=12))
@example(chunks=[b"ab\ncd\n", b"toolongline\nok\n"], max_line=4)
@example(chunks=[b"waytoolong", b"stillgoing", b"\nafter\n"], max_line=5)
def test_next_lines_frames_like_next_line(chunks: list[bytes], max_line: int) -> None:
    assert frame_in_batches(chunks, max_line) == frame_one_by_one(chunks, max_line)


@given(chunks=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"x", b"\n")), max_size=12),
       max_line=st.integers(min_value=1, max_value=12))
@example(chunks=[b"ab\n", b"cd\nef\n"], max_line=4)  # whole lines with nothing buffered: no copy
@example(chunks=[b"waytoolong", b"\nafter\n"], max_line=5)  # the refused line's tail, then whole lines
@example(chunks=[b"ok\n", b"toolongline\n"], max_line=4)
def test_feed_lines_frames_like_next_line(chunks: list[bytes], max_line: int) -> None:
    assert frame_in_batches(chunks, max_line, feed_lines=True) == frame_one_by_one(chunks, max_line)


def frame_as_the_session_does(chunks: list[bytes], max_line: int) -> list[bytes | None]:
    """As the server frames with its whole-read path: a read for which frames_whole() holds is taken
    as it is, split at its b"\\n", never fed; any other goes through feed_lines() and next_lines()."""
    buffer, framed = LineBuffer(max_line), list[bytes | None]()
    for chunk in chunks:
        if buffer.frames_whole(chunk):
            framed.extend(chunk.split(b"\n")[:-1])
            continue
        unfed: bytes | None = chunk
        _take_batches(buffer, unfed, framed)
    return framed


@given(chunks=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"x", b"\n")), max_size=12),
       max_line=st.integers(min_value=1, max_value=12))
@example(chunks=[b"ab\n", b"cd\nef\n"], max_line=4)
@example(chunks=[b"waytoolong", b"tail\n", b"after\n"], max_line=5)  # discarding: the tail is not a line
@example(chunks=[b"ab", b"c\n"], max_line=5)  # held: the read finishes a line
@example(chunks=[b"abcdef\n"], max_line=5)  # over the limit
@example(chunks=[b"abcde\n"], max_line=5)  # a line of the limit, in a read one longer
@example(chunks=[b"\n"], max_line=1)
def test_a_read_framed_whole_gives_the_lines_next_line_gives(chunks: list[bytes], max_line: int) -> None:
    assert frame_as_the_session_does(chunks, max_line) == frame_one_by_one(chunks, max_line)
