"""Fuzzing: arbitrary byte streams, cut at arbitrary points, against the server's engine and the live server.

The property, both times: nothing raises out of the server's code (its sans-IO session, then the
whole server over a socket), and every line gets exactly one reply line. The expected count is
worked out here from the raw bytes, independently of LineBuffer: one reply per newline-terminated
line and one for a non-empty unterminated tail, stopping after QUIT.
"""

from __future__ import annotations

import asyncio
import re

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import LoopErrors, cut_at, session_replies
from sockrace.protocol import parse_reply
from sockrace.server import Server, ServerConfig
from sockrace.session import Session, SessionConfig
from sockrace.store import Store

MAX_LINE = 64  # small, so that over-long lines are common
QUIT_LINE = re.compile(rb"(#[A-Za-z0-9_.-]{1,32} )?quit\r?", re.IGNORECASE)

FRAGMENTS = st.sampled_from([
    b"PING", b"ECHO hi there", b"SET k v", b"GET k", b"INCR k", b"INCR k -3", b"INCR k 99999999999999999999",
    b"SLEEP 1 z", b"QUIT", b"#t1 ", b"#bad/tag ", b" ", b"\r", b"\n", b"\r\n", b"\x00", b"\xff",
    b"\xc3", b"\xa9", b"\x1b", "\u00e9".encode(), b"x" * 70,
])
# STATS is left out: its figures differ between the live server and the in-memory store.
STREAMS = st.lists(st.one_of(FRAGMENTS, st.binary(max_size=40)), max_size=30).map(b"".join)
CUTS = st.lists(st.integers(min_value=0, max_value=1200), max_size=12)


def expected_replies(stream: bytes) -> int:
    *complete, tail = stream.split(b"\n")
    for count, line in enumerate(complete, start=1):
        if QUIT_LINE.fullmatch(line):
            return count
    return len(complete) + (1 if tail else 0)


def sans_io_replies(pieces: list[bytes]) -> list[bytes]:
    """The server's own engine, fed the pieces as reads, with no I/O at all: its reply lines."""
    replies = session_replies(Session(Store(), SessionConfig(max_line=MAX_LINE)), pieces)
    return [line + b"\n" for line in replies.split(b"\n")[:-1]]


def assert_one_line_replies(replies: list[bytes]) -> None:
    for reply in replies:
        assert reply.endswith(b"\n")
        assert reply.count(b"\n") == 1
        parse_reply(reply)  # raises when it is not a well-formed reply


@settings(max_examples=500, deadline=None)
@given(STREAMS, CUTS)
def test_parser_gives_one_reply_per_line_however_the_stream_is_cut(stream: bytes, cuts: list[int]) -> None:
    replies = sans_io_replies(cut_at(stream, cuts))
    assert len(replies) == expected_replies(stream)
    assert_one_line_replies(replies)
    assert replies == sans_io_replies([stream])  # cutting changes nothing


async def exchange_with_live_server(pieces: list[bytes]) -> bytes:
    errors = LoopErrors().install()
    async with (
        Server(ServerConfig(port=0, max_line=MAX_LINE)) as server,
        await anyio.connect_tcp(*server.address) as stream,
    ):
        for piece in pieces:
            await stream.send(piece)
            await asyncio.sleep(0)  # give the server a chance to read this piece on its own
        await stream.send_eof()
        received = bytearray()
        while True:
            try:
                received += await stream.receive()
            except anyio.EndOfStream:
                break
    errors.check()
    return bytes(received)


@pytest.mark.timeout(120)
@settings(max_examples=150, deadline=None)
@given(STREAMS, CUTS)
def test_live_server_gives_one_reply_per_line_however_cut(stream: bytes, cuts: list[int]) -> None:
    received = asyncio.run(exchange_with_live_server(cut_at(stream, cuts)))
    replies = [line + b"\n" for line in received.split(b"\n")[:-1]]
    assert b"".join(replies) == received  # nothing after the last newline
    assert len(replies) == expected_replies(stream)
    assert_one_line_replies(replies)
    assert replies == sans_io_replies([stream])
