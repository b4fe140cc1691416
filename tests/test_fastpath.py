"""The server's hot path must answer exactly like the full parser: same bytes, same errors, same counts."""

from __future__ import annotations

import asyncio
import re
import threading

import anyio
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from helpers import LineClient, MemoryLink
from sockrace.fastpath import stateless_replies, stateless_reply
from sockrace.protocol import (
    MAX_TAG_LENGTH,
    TAG_CHARS,
    LineBuffer,
    LineTooLong,
    ProtocolError,
    format_reply,
    parse_request,
    strip_line_ending,
)
from sockrace.server import Server, ServerConfig
from sockrace.store import Store

verbs = st.sampled_from(["ECHO", "echo", "Echo", "PING", "ping", "GET", "SET", "INCR", "STATS", "QUIT", ""])
tags = st.one_of(st.just(""), st.from_regex(r"#[A-Za-z0-9_.-]{0,34} ", fullmatch=True), st.just("# "))
arguments = st.one_of(
    st.just(""),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12).map(" {}".format),
    st.text(max_size=12).map(" {}".format),  # any unicode, control characters included
)
endings = st.sampled_from(["\n", "\r\n", "", "\r", "\r\r\n"])


def full_path_reply(line: bytes) -> bytes:
    try:
        return format_reply(Store().apply(parse_request(line)))
    except ProtocolError:
        return b"error"


@given(tag=tags, verb=verbs, args=arguments, ending=endings)
@example(tag="", verb="ECHO", args=" ", ending="\n")
@example(tag="#t1 ", verb="ECHO", args="  two  spaces ", ending="\r\n")
@example(tag="", verb="PING", args=" extra", ending="\n")
def test_stateless_reply_is_the_full_paths_reply_or_none(tag: str, verb: str, args: str, ending: str) -> None:
    line = (tag + verb + args + ending).encode("utf-8", "surrogatepass")
    fast = stateless_reply(line)
    if fast is not None:
        assert fast == full_path_reply(line)


@given(
    tag=st.one_of(st.just(""), st.from_regex(r"#[A-Za-z0-9_.-]{1,32} ", fullmatch=True)),
    verb=st.sampled_from(["ECHO", "echo", "PING", "Ping"]),
    text=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20),
    ending=st.sampled_from(["\n", "\r\n"]),
)
def test_plain_ping_and_echo_take_the_fast_path(tag: str, verb: str, text: str, ending: str) -> None:
    line = f"{tag}{verb}{' ' + text if verb.upper() == 'ECHO' else ''}{ending}".encode()
    assert stateless_reply(line) == full_path_reply(line)


# Deleting these from a line leaves nothing exactly when the line is printable ASCII.
PRINTABLE_ASCII = bytes(range(0x20, 0x7F))
TAG_BYTES = re.compile(rf"{TAG_CHARS}{{1,{MAX_TAG_LENGTH}}}".encode())


def split_plain_request(line: bytes) -> tuple[bytes, bytes, bytes] | None:
    """The fast path's first form, kept as an oracle: split a line into (tag prefix, verb,
    arguments) when it is printable ASCII with a valid tag or none and a non-empty verb."""
    line = strip_line_ending(line)
    if line.translate(None, PRINTABLE_ASCII):
        return None
    prefix = b""
    if line.startswith(b"#"):
        tag, _, line = line.partition(b" ")
        if not TAG_BYTES.fullmatch(tag, 1):
            return None
        prefix = tag + b" "
    verb, _, arguments = line.partition(b" ")
    if not verb:
        return None
    return prefix, verb, arguments


def reply_from_split(line: bytes) -> bytes | None:
    """The fast reply as it was worked out before the one-regex matcher: split, then compare the verb."""
    parts = split_plain_request(line)
    if parts is None:
        return None
    prefix, verb, arguments = parts
    verb = verb.upper()
    if verb == b"ECHO":
        return prefix + b"OK " + arguments + b"\n" if arguments else None
    if verb == b"PING":
        return prefix + b"OK PONG\n" if not arguments else None
    return None


@given(tag=tags, verb=verbs, args=arguments, ending=endings)
@example(tag="#t1 ", verb="PING", args=" ", ending="\r\n")
@example(tag="#" + "t" * 33 + " ", verb="PING", args="", ending="\n")
@example(tag="#t ", verb="ECHO", args="  ", ending="\n")
@example(tag="", verb="ECHO", args=" tab\there", ending="\n")
def test_regex_matcher_takes_exactly_the_lines_the_splitter_takes(tag: str, verb: str, args: str,
                                                                   ending: str) -> None:
    # Same bytes, and None for the same lines: the fast path neither grew nor shrank.
    line = (tag + verb + args + ending).encode("utf-8", "surrogatepass")
    assert stateless_reply(line) == reply_from_split(line)


@given(line=st.binary(max_size=40))
@example(line=b"#a ECHO x\r\r\n")
@example(line=b"PiNg \n")
def test_regex_matcher_agrees_with_the_splitter_on_any_bytes(line: bytes) -> None:
    assert stateless_reply(line) == reply_from_split(line)


plain_lines = st.builds(
    "{}{}{}{}".format,
    st.one_of(st.just(""), st.from_regex(r"#[A-Za-z0-9_.-]{1,32} ", fullmatch=True)),
    st.sampled_from(["ECHO ", "echo ", "PING", "ping", "PiNg "]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8),
    st.sampled_from(["", "\r"]),
).map(str.encode)


def joined_or_none(replies: list[bytes | None]) -> bytes | None:
    """What stateless_replies() answers for lines with these line-by-line replies."""
    return None if None in replies else b"".join(reply for reply in replies if reply is not None)


@given(lines=st.lists(st.one_of(plain_lines, plain_lines, st.binary(max_size=12)), max_size=8))
@example(lines=[b"PING", b"#a ECHO one", b"echo two\r"])
@example(lines=[b"PING", b"ECHO "])
@example(lines=[b"PING\r\r"])
def test_batch_replies_are_the_line_by_line_replies(lines: list[bytes]) -> None:
    # Lines as next_lines() gives them (no b"\n"): the whole batch's replies, or None as soon as
    # one line would not take the fast path on its own.
    one_by_one = [stateless_reply(line) for line in lines if b"\n" not in line]
    batch = [line for line in lines if b"\n" not in line]
    assert stateless_replies(batch) == joined_or_none(one_by_one)


echo_lines = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=6).map(
        lambda text: b"ECHO " + text.encode()),
    st.binary(max_size=6).map(b"ECHO ".__add__),
    plain_lines,
)


@given(lines=st.lists(echo_lines, min_size=2, max_size=8))
@example(lines=[b"ECHO a", b"ECHO b"])
@example(lines=[b"ECHO a", b"ECHO "])
@example(lines=[b"ECHO a", b"ECHO b\r"])
@example(lines=[b"ECHO a", b"ECHO \x7f"])
@example(lines=[b"ECHO ECHO x", b"ECHO y"])
@example(lines=[b"ECHO a", b"xECHO b"])
@example(lines=[b"ECHO a", b"echo b"])
@example(lines=[b"ECHO a", b"ECHO \xc3\xa9"])
def test_a_batch_of_echoes_gets_the_line_by_line_replies(lines: list[bytes]) -> None:
    # Batches of untagged upper-case ECHO (the pipelined load) are answered over the whole block.
    assume(all(b"\n" not in line for line in lines))
    one_by_one = [stateless_reply(line) for line in lines]
    assert stateless_replies(lines) == joined_or_none(one_by_one)


@given(line=st.one_of(plain_lines, st.binary(max_size=12).map(b"ECHO ".__add__), st.binary(max_size=12)))
@example(line=b"ECHO hi")
@example(line=b"ECHO ")
@example(line=b"ECHO  ")
@example(line=b"ECHO hi\r")
@example(line=b"ECHO \x7f")
@example(line=b"ECHO \t")
@example(line=b"ECHO caf\xc3\xa9")
def test_a_single_line_gets_the_line_by_line_reply(line: bytes) -> None:
    # One line per read (lock-step traffic) takes a shortcut for ECHO before the regex.
    assume(b"\n" not in line)
    assert stateless_replies([line]) == stateless_reply(line)


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


def frame_in_batches(chunks: list[bytes], max_line: int, *, feed_lines: bool = False) -> list[bytes | None]:
    """With next_lines() until nothing is left; with `feed_lines`, as the server frames: feed_lines()
    for each read's first batch."""
    buffer, framed = LineBuffer(max_line), list[bytes | None]()
    for chunk in chunks:
        unfed: bytes | None = chunk if feed_lines else None
        if not feed_lines:
            buffer.feed(chunk)
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


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_fast_path_replies_and_counts_like_the_full_path() -> None:
    server = Server()
    link = MemoryLink(server)
    link.connection.write(b"PING\n#a ECHO one two\nECHO\nSET k v\nSTATS\n")
    replies = [await link.connection.read_line() for _ in range(5)]
    await link.close()
    assert replies == [
        b"OK PONG\n",
        b"#a OK one two\n",
        b"ERR ARITY usage: ECHO <text>\n",
        b"OK\n",
        b"OK connections=1 total_connections=1 requests=5 errors=1 keys=1\n",
    ]


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_read_of_only_fast_requests_is_counted_before_the_next_read() -> None:
    # One read of nothing but PING and ECHO takes the all-fast branch (no per-line loop); its
    # requests must still be counted, in order, before a later STATS reads the count.
    server = Server()
    link = MemoryLink(server)
    link.connection.write(b"PING\n#a ECHO one\necho two\r\n")
    replies = [await link.connection.read_line() for _ in range(3)]
    link.connection.write(b"#s STATS\n")
    replies.append(await link.connection.read_line())
    await link.close()
    assert replies == [
        b"OK PONG\n",
        b"#a OK one\n",
        b"OK two\n",
        b"#s OK connections=1 total_connections=1 requests=4 errors=0 keys=0\n",
    ]


# ------------------------------------------------------------------------------ the idle sweeper
# No timer in the event loop enforces the idle timeout: activity only moves a deadline, and a
# background thread asks the loop a few times per timeout to close the connections idle past theirs.


def sweeper_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "sockrace idle sweeper"]


@pytest.mark.anyio
@pytest.mark.timeout(20)
async def test_a_busy_connection_outlives_many_sweeps_and_silence_still_ends_it() -> None:
    # Requests every 20 ms for 1 s against a 0.25 s timeout: about sixteen sweeps look at the
    # connection (a 12x margin each), and none may close it.
    async with Server(ServerConfig(port=0, idle_timeout_s=0.25)) as server:
        conn = await LineClient.connect(server.address)
        try:
            for index in range(50):
                assert await conn.request(b"ECHO %d\n" % index) == b"OK %d\n" % index
                await anyio.sleep(0.02)
            assert server.store.counters.connections == 1
            # Then silence: a sweep ends it, with the same goodbye as ever.
            assert await conn.read_to_eof() == b"ERR IDLE no complete request in 0.25 s; closing\n"
        finally:
            await conn.aclose()


@pytest.mark.anyio
@pytest.mark.timeout(20)
async def test_serving_requests_leaves_no_timer_pending_in_the_event_loop() -> None:
    # A pending timer makes asyncio's loop compute a select() timeout on every pass; the idle
    # timeout must not cost that on the hot path. asyncio has no public list of pending timers:
    # BaseEventLoop keeps them in _scheduled.
    loop = asyncio.get_running_loop()

    def pending_timers() -> list[asyncio.TimerHandle]:
        return [timer for timer in loop._scheduled if not timer.cancelled()]  # type: ignore[attr-defined]

    async with Server(ServerConfig(port=0, idle_timeout_s=60)) as server:
        conn = await LineClient.connect(server.address)
        try:
            for index in range(20):
                assert await conn.request(b"ECHO %d\n" % index) == b"OK %d\n" % index
                assert pending_timers() == []
        finally:
            await conn.aclose()


@pytest.mark.anyio
@pytest.mark.timeout(20)
async def test_the_sweeper_thread_lives_as_long_as_its_server() -> None:
    assert sweeper_threads() == []
    async with Server(ServerConfig(port=0, idle_timeout_s=60)):
        assert len(sweeper_threads()) == 1
    assert sweeper_threads() == []
    async with Server(ServerConfig(port=0, idle_timeout_s=0)):  # no timeout: nothing to sweep
        assert sweeper_threads() == []
