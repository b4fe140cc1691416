"""connection.py: how SharedConnection.read_lines frames what arrives, read by read.

read_lines answers the usual read (whole lines, nothing held over, no b"\\r") with one C call and
everything else through protocol.LineBuffer; either way it must give exactly what LineBuffer alone
gives, the same lines and the same LineTooLong errors, however the bytes are cut into reads.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from helpers import MemoryWriter, settle
from sockrace.connection import SharedConnection
from sockrace.protocol import LineBuffer, LineTooLong

TOO_LONG = "LineTooLong"

Framed = list[list[bytes] | str]


def framed_by_line_buffer(reads: list[bytes], max_line: int) -> Framed:
    """What each read gives when every byte goes through LineBuffer: its lines (each with its
    newline), TOO_LONG, or nothing (an empty read list is left out)."""
    buffer = LineBuffer(max_line)
    framed: Framed = []
    for data in reads:
        buffer.feed(data)
        lines: list[bytes] = []
        try:
            while batch := buffer.next_lines():
                lines += [line + b"\n" for line in batch]
        except LineTooLong:
            framed.append(TOO_LONG)
            continue
        if lines:
            framed.append(lines)
    return framed


async def framed_by_read_lines(reads: list[bytes], max_line: int) -> Framed:
    """What read_lines() returns (or raises) as the reads arrive one at a time."""
    reader = asyncio.StreamReader()
    connection = SharedConnection(reader, MemoryWriter(asyncio.StreamReader()), max_line=max_line)
    framed: Framed = []
    reading = asyncio.ensure_future(connection.read_lines())
    for data in reads:
        reader.feed_data(data)
        await settle()  # read_lines takes this read, and only this one, before the next arrives
        if reading.done():
            try:
                framed.append(reading.result())
            except LineTooLong:
                framed.append(TOO_LONG)
            reading = asyncio.ensure_future(connection.read_lines())
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    return framed


READS = [
    pytest.param([b"OK a\nOK b\n"], id="whole lines"),
    pytest.param([b"OK a\nOK", b" b\n"], id="a line across two reads"),
    pytest.param([b"OK a\r\nOK b\n"], id="CRLF endings"),
    pytest.param([b"OK a\rb\n"], id="a CR inside a line"),
    pytest.param([b"OK a\n", b"\r\n"], id="a read of one CRLF"),
    pytest.param([b"123456789\nOK\n", b"OK b\n"], id="an over-long line, then whole lines"),
    pytest.param([b"12345678", b"9", b"tail\nOK\n", b"OK b\n"], id="an over-long line across reads"),
    pytest.param([b"OK\n", b"\n", b"\n\n"], id="empty lines"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("reads", READS)
async def test_read_lines_frames_each_read_as_line_buffer_does(reads: list[bytes]) -> None:
    assert await framed_by_read_lines(reads, max_line=8) == framed_by_line_buffer(reads, max_line=8)


@pytest.mark.asyncio
async def test_read_lines_keeps_every_newline_of_a_read_of_whole_lines() -> None:
    reads = [b"#1 OK a\n#2 OK b\n\n"]
    assert await framed_by_read_lines(reads, max_line=64) == [[b"#1 OK a\n", b"#2 OK b\n", b"\n"]]


@given(
    reads=st.lists(st.binary(min_size=1, max_size=12).map(
        lambda data: bytes(b"ab\r\n "[byte % 5] for byte in data)), max_size=8),
    max_line=st.integers(1, 6),
)
@example(reads=[b"abcdefg", b"\n"], max_line=6)
@example(reads=[b"ab\n", b"\rab\n"], max_line=6)
def test_read_lines_frames_any_reads_as_line_buffer_does(reads: list[bytes], max_line: int) -> None:
    got = asyncio.run(framed_by_read_lines(reads, max_line))
    assert got == framed_by_line_buffer(reads, max_line)
