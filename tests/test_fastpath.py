"""The stateless fast path (fastpath.py) must answer exactly like the full parser, or not at all."""

from __future__ import annotations

import re

from hypothesis import assume, example, given
from hypothesis import strategies as st

from sockrace.fastpath import stateless_replies, stateless_reply
from sockrace.protocol import (
    MAX_TAG_LENGTH,
    TAG_CHARS,
    ProtocolError,
    format_reply,
    parse_request,
    strip_line_ending,
)
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
