"""The fast paths (fastpath.py) must answer exactly like the full parser and store, or not at all."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from helpers import session_replies
from sockrace.fastpath import (
    GET_BYTES_PER_CALL,
    block_replies,
    is_printable_ascii,
    stateless_replies,
    stateless_reply,
    store_block_replies,
    store_replies,
    whole_read_replies,
)
from sockrace.protocol import (
    MAX_TAG_LENGTH,
    TAG_CHARS,
    ProtocolError,
    error_reply,
    format_reply,
    parse_request,
    strip_line_ending,
)
from sockrace.session import Session
from sockrace.store import Store, StoreLimits

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


# --------------------------------------------------------------------- GET, SET and INCR over the store

# Small limits, so that TOOBIG and FULL are common; keys around those sizes, values that are and are
# not integers (int() also takes b" 5" and b"1_0": the store's own conversion, which the fast path keeps).
SMALL_LIMITS = StoreLimits(max_keys=4, max_key_bytes=6, max_value_bytes=8)
KEYS = st.sampled_from(["k", "n", "key:1", "k6six6", "a", "b", "c", "toolong7", "caf\u00e9", "x\x7fy", "",
                        "forty-five-characters-long-for-the-NOKEY-text"])
VALUES = st.sampled_from(["v", "5", "-3", " 7", "1_0", "abc", "a b", "9223372036854775807",
                          "-9223372036854775808", "123456789", "\u00e9", "\x85", " "])
AMOUNTS = st.sampled_from(["", " 1", " -2", " +3", " 999999999999999999", " 9999999999999999999",
                           " 99999999999999999999", " x", " 1 2", " ", "  4", " 0x1"])
store_lines = st.one_of(
    st.builds("GET {}{}".format, KEYS, st.sampled_from(["", " ", " x"])),
    st.builds("SET {} {}".format, KEYS, VALUES),
    st.builds("INCR {}{}".format, KEYS, AMOUNTS),
    st.sampled_from(["PING", "PING ", "PING x", "ECHO  two", "ECHO", "STATS", "SLEEP 0 z", "SET k",
                     "SET  k v"]),
)


def cased(line: str, case: str) -> str:
    verb, space, rest = line.partition(" ")
    if case == "lower":
        verb = verb.lower()
    elif case == "mixed":
        verb = verb[:1] + verb[1:].lower()
    return verb + space + rest


request_lines = st.builds(
    lambda tag, case, line, ending: (tag + cased(line, case) + ending).encode(),
    st.sampled_from(["", "", "#t1 ", "#bad/tag ", "#", "# "]),
    st.sampled_from(["", "", "lower", "mixed"]),
    store_lines,
    st.sampled_from(["", "", "\r", "\r\r"]),
)
starting_data = st.dictionaries(st.sampled_from([b"k", b"n", b"key:1"]),
                                st.sampled_from([b"1", b"v", b"9223372036854775806", b" 2"]), max_size=3)


# QUIT ends the connection and SLEEP waits: both are the session's tests' business.
QUIT_OR_SLEEP = re.compile(rb"(#\S* )?(?i:quit|sleep)\b.*")


def full_path_replies(lines: list[bytes], store: Store) -> bytes:
    """Each line through parse_request, Store.apply and format_reply, counted as the session counts."""
    replies = []
    for line in lines:
        store.counters.requests += 1
        try:
            request = parse_request(line)
        except ProtocolError as exc:
            store.counters.errors += 1
            replies.append(format_reply(error_reply(exc)))
        else:
            replies.append(format_reply(store.apply(request)))
    return b"".join(replies)


def stores(data: dict[bytes, bytes]) -> tuple[Store, Store]:
    fast, full = Store(SMALL_LIMITS), Store(SMALL_LIMITS)
    fast.data.update(data)
    full.data.update(data)
    return fast, full


@given(lines=st.lists(request_lines, max_size=10), data=starting_data, start=st.integers(0, 3))
@example(lines=[b"INCR n", b"INCR n 1"], data={b"n": b"9223372036854775806"}, start=0)
@example(lines=[b"SET a 1", b"SET b 2", b"SET k 3", b"INCR c"], data={b"k": b"1", b"n": b"1"}, start=0)
@example(lines=[b"GET caf\xc3\xa9", b"#t1 get n\r"], data={b"n": b" 2"}, start=0)
@example(lines=[b"SET a 12345678", b"SET b 123456789"], data={}, start=0)
@example(lines=[b"GET k", b"#t GET k"], data={b"k": b""}, start=0)
@example(lines=[b"SET a 1", b"SET b 1", b"SET c 1", b"SET k 1", b"SET n 1"], data={}, start=0)
@example(lines=[b"SET k  ", b"INCR k", b"SET n \xc2\x85", b"INCR n"], data={}, start=0)
@example(lines=[b"GET forty-five-characters-long-for-the-NOKEY-text"], data={}, start=0)
def test_store_replies_are_the_full_paths_replies_and_leave_the_same_store(
        lines: list[bytes], data: dict[bytes, bytes], start: int) -> None:
    start = min(start, len(lines))  # the session never starts past the end
    fast, full = stores(data)
    plain = is_printable_ascii(b"\n".join(lines[start:]))
    replies, end = store_replies(lines, start, fast, plain=plain)
    assert start <= end <= len(lines)
    assert replies == full_path_replies(lines[start:end], full)
    assert fast.data == full.data
    # The check of every line is the same as the check of the whole block.
    assert store_replies(lines, start, stores(data)[0], plain=False) == (replies, end)


@given(lines=st.lists(request_lines, max_size=12), data=starting_data)
@example(lines=[b"STATS", b"GET nokey", b"SET k 5", b"INCR k 2", b"STATS"], data={})
def test_a_session_answers_like_the_full_path_and_counts_alike(lines: list[bytes],
                                                               data: dict[bytes, bytes]) -> None:
    # Whatever the fast path answers and whatever it leaves to the parser: the same bytes, the same
    # store and the same STATS counters as a server with the full path only.
    fast, full = stores(data)
    lines = [line for line in lines if QUIT_OR_SLEEP.fullmatch(line) is None]
    got = session_replies(Session(fast), [b"".join(line + b"\n" for line in lines)])
    assert got == full_path_replies(lines, full)
    assert fast.data == full.data
    assert fast.counters == full.counters


@given(keys=st.lists(st.from_regex(r"[!-~]{1,6}", fullmatch=True), min_size=1, max_size=8),
       case=st.sampled_from(["GET", "SET", "INCR", "mixed"]))
def test_ordinary_requests_within_the_limits_all_take_the_fast_path(keys: list[str], case: str) -> None:
    fast, _ = stores({})
    fast.limits = StoreLimits(max_keys=100, max_key_bytes=6, max_value_bytes=8)
    verbs_in_turn = ["SET {} 1", "INCR {}", "GET {}", "#a INCR {} -2", "ECHO {}", "PING"]
    templates = {"GET": ["GET {}"], "SET": ["SET {} 7"], "INCR": ["INCR {}"], "mixed": verbs_in_turn}[case]
    lines = [templates[index % len(templates)].format(key).encode() for index, key in enumerate(keys)]
    assert store_replies(lines, 0, fast, plain=True)[1] == len(lines)
    # CRLF endings too, once each line is checked on its own.
    assert store_replies([line + b"\r" for line in lines], 0, fast, plain=False)[1] == len(lines)


def test_an_unsafe_incr_is_left_to_the_caller() -> None:
    store = Store()
    assert store_replies([b"SET k 1", b"INCR k", b"GET k"], 0, store, plain=True, incr=False) == (b"OK\n", 1)
    assert store.data == {b"k": b"1"}


def test_a_read_of_many_gets_of_a_big_value_is_answered_in_bounded_pieces() -> None:
    store = Store()
    store.data[b"k"] = b"v" * 4096
    lines = [b"GET k"] * 100
    replies, end = store_replies(lines, 0, store, plain=True)
    assert end == GET_BYTES_PER_CALL // 4096
    assert replies == (b"OK " + b"v" * 4096 + b"\n") * end
    assert store_replies(lines, end, store, plain=True)[1] == 2 * end


homogeneous_reads = st.one_of(
    st.lists(st.builds("GET {}".format, KEYS), min_size=1, max_size=6),
    st.lists(st.builds("SET {} {}".format, KEYS, VALUES), min_size=1, max_size=6),
    st.lists(st.builds("INCR {}".format, KEYS), min_size=1, max_size=6),
    st.lists(st.builds("{} {}".format, st.sampled_from(["GET", "SET", "INCR", "get"]), KEYS), max_size=4),
).map(lambda lines: [line.encode() for line in lines])
bigger_data = st.dictionaries(st.sampled_from([b"k", b"n", b"a", b"key:1"]),
                              st.sampled_from([b"1", b"v", b"", b"9223372036854775807", b" 2",
                                               b"-99999999999999999999", b"99999999999999999999"]),
                              max_size=3)


@given(lines=homogeneous_reads, data=bigger_data, incr=st.booleans())
@example(lines=[b"INCR n", b"INCR k"], data={b"n": b"-99999999999999999999"}, incr=True)
@example(lines=[b"INCR n", b"INCR n"], data={}, incr=True)
@example(lines=[b"GET a", b"GET k"], data={b"a": b"", b"k": b"1"}, incr=True)
@example(lines=[b"SET a 1", b"SET b 2"], data={b"k": b"1", b"n": b"1", b"key:1": b"1"}, incr=True)
@example(lines=[b"SET a 123456789", b"SET b 2"], data={}, incr=True)
@example(lines=[b"SET toolong7 1", b"SET b 2"], data={}, incr=True)
@example(lines=[b"INCR toolong7", b"INCR b"], data={}, incr=True)
@example(lines=[b"SET a 1", b"SET b "], data={}, incr=True)
@example(lines=[b"GET k", b"GET "], data={b"": b"x", b"k": b"1"}, incr=True)
def test_a_whole_read_answered_at_once_is_the_full_paths_answer(lines: list[bytes], data: dict[bytes, bytes],
                                                                incr: bool) -> None:
    fast, full = stores(data)
    block = b"\n".join(lines)
    assume(is_printable_ascii(block))  # the session's condition for asking
    replies = store_block_replies(lines, block, fast, incr=incr)
    if replies is None:
        assert fast.data == full.data  # nothing done: every line goes to store_replies
    else:
        assert replies == full_path_replies(lines, full)
        assert fast.data == full.data
        assert incr or not lines[0].startswith(b"INCR")


@pytest.mark.parametrize("lines", [
    [b"GET key:1", b"GET key:2"], [b"SET key:1 v", b"SET key:2 w"], [b"INCR n1", b"INCR n2", b"INCR key:1"],
])
def test_ordinary_reads_are_answered_whole(lines: list[bytes]) -> None:
    store = Store()
    store.data.update({b"key:1": b"5", b"key:2": b"6"})
    assert store_block_replies(lines, b"\n".join(lines), store) is not None


# ------------------------------------------------------- whole reads of tagged ECHO and of INCR lines

# Mostly the multiplexed clients' line, b"#<tag> ECHO <text>", and now and then one a whole-read
# answer must not take as it is: a bad or over-long tag, no tag, lower case, PING, a CR, no text,
# b" ECHO " inside the text, control characters, non-ASCII.
tagged_echo_lines = st.one_of(
    st.builds("#{} ECHO {}".format, st.from_regex(r"[A-Za-z0-9_.-]{1,32}", fullmatch=True),
              st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
                      max_size=8)),
    st.builds("#{} ECHO {}".format, st.from_regex(r"[A-Za-z0-9_.-]{1,4}", fullmatch=True),
              st.sampled_from(["x", "ECHO y", "a ECHO b", " ", "  ", "caf\u00e9", "\x7f", "\t", "x\r"])),
    st.sampled_from(["#t ECHO x", "#t echo x", "#t Echo x", "#t PING", "#t ping", "ECHO x", "#t ECHO ",
                     "#t ECHO", "# ECHO x", "#bad/tag ECHO x", "#" + "t" * 33 + " ECHO x",
                     "#" + "t" * 32 + " ECHO x", "#t  ECHO x", "#t ECHO x\r", "", "#t GET k",
                     "#t\u00e9 ECHO x"]),
).map(lambda line: line.encode())


@given(lines=st.lists(tagged_echo_lines, min_size=1, max_size=10))
@example(lines=[b"#1 ECHO a", b"#2 ECHO b"])
@example(lines=[b"#1 ECHO a ECHO b", b"#2 ECHO c"])
@example(lines=[b"#1 ECHO ECHO b", b"#2 ECHO c"])
@example(lines=[b"#1 ECHO a", b"#2 echo b"])
@example(lines=[b"#1 ECHO a", b"#" + b"t" * 33 + b" ECHO b"])
@example(lines=[b"#1 ECHO a", b"#2 ECHO b\r"])
@example(lines=[b"#1 ECHO a", b"#2 ECHO "])
@example(lines=[b"#1 ECHO a", b"ECHO b"])
@example(lines=[b"#1 ECHO a", b"#bad/tag ECHO b"])
@example(lines=[b"#1 ECHO a", b"#2 ECHO caf\xc3\xa9"])
def test_a_read_of_tagged_echoes_gets_the_line_by_line_replies(lines: list[bytes]) -> None:
    one_by_one = [stateless_reply(line) for line in lines]
    assert stateless_replies(lines) == joined_or_none(one_by_one)
    # block_replies alone: the whole-read answer, or nothing (the caller then goes line by line).
    whole = block_replies(lines)
    assert whole is None or whole == joined_or_none(one_by_one)


def test_a_read_of_tagged_echoes_is_answered_whole() -> None:
    lines = [b"#%d ECHO c%d.%d.k3j4l5 and more" % (i, i, i) for i in range(100)]
    expected = b"".join(b"#%d OK c%d.%d.k3j4l5 and more\n" % (i, i, i) for i in range(100))
    assert block_replies(lines) == expected
    assert block_replies([*lines[:-1], b"#a echo x"]) is None  # lower case: one match a line instead


INT64_VALUES = [b"9223372036854775806", b"9223372036854775807", b"-9223372036854775808",
                b"-9223372036854775809", b"-9223372036854775810", b"99999999999999999999", b"0", b"-1",
                b" 5", b"1_0", b"+4", b"007", b"v", b"", b"1.5", b"\xc3\xa9"]
incr_keys = st.sampled_from([b"k", b"n", b"a", b"key:1", b"seven77", b"toolong7", b"caf\xc3\xa9", b"x\x7fy",
                             b"", b"a b"])


@st.composite
def incr_reads(draw: st.DrawFn) -> list[bytes]:
    """A read of INCR lines whose keys are all distinct, all the same, a few distinct ones over and
    over in turn, or anything; now and then a line that is not a plain INCR by 1 (an amount, lower
    case, a tag, a CR, another verb)."""
    shape = draw(st.sampled_from(["distinct", "same", "in turn", "any"]))
    if shape == "distinct":
        keys = draw(st.lists(incr_keys, min_size=1, max_size=6, unique=True))
    elif shape == "in turn":
        cycle = draw(st.lists(incr_keys, min_size=2, max_size=4, unique=True))
        keys = (cycle * 4)[:draw(st.integers(len(cycle) + 1, 4 * len(cycle)))]
    elif shape == "same":
        keys = [draw(incr_keys)] * draw(st.integers(1, 8))
    else:
        keys = draw(st.lists(incr_keys, min_size=1, max_size=8))
    lines = [b"INCR " + key for key in keys]
    if draw(st.integers(0, 3)) == 0:
        odd = draw(st.sampled_from([b"INCR k 1", b"INCR k 2", b"incr k", b"#t INCR k", b"INCR k\r", b"INCR",
                                    b"INCR ", b"INCR  k", b"GET k", b"INCR k ", b"INCR k -1", b"PING"]))
        lines.insert(draw(st.integers(0, len(lines))), odd)
    return lines


@given(lines=incr_reads(),
       data=st.dictionaries(st.sampled_from([b"k", b"n", b"a", b"key:1"]), st.sampled_from(INT64_VALUES),
                            max_size=4),
       max_keys=st.sampled_from([1, 4, 100]))
@example(lines=[b"INCR k", b"INCR k"], data={b"k": b"9223372036854775806"}, max_keys=100)
@example(lines=[b"INCR k", b"INCR k"], data={b"k": b"9223372036854775805"}, max_keys=100)
@example(lines=[b"INCR k", b"INCR n"], data={b"k": b"9223372036854775807"}, max_keys=100)
@example(lines=[b"INCR k", b"INCR k"], data={b"k": b"-9223372036854775809"}, max_keys=100)
@example(lines=[b"INCR k", b"INCR n"], data={b"k": b"1"}, max_keys=1)
@example(lines=[b"INCR n"], data={b"k": b"1"}, max_keys=1)
@example(lines=[b"INCR k", b"PING"], data={}, max_keys=100)
@example(lines=[b"INCR k", b"INCR n", b"INCR k"], data={}, max_keys=100)
@example(lines=[b"INCR k", b"INCR n", b"INCR n", b"INCR k"], data={b"n": b"4"}, max_keys=100)
@example(lines=[b"INCR k", b"INCR n", b"INCR k", b"INCR n"], data={b"n": b"9223372036854775806"},
         max_keys=100)
@example(lines=[b"INCR k", b"INCR n", b"INCR k", b"INCR n"], data={b"n": b"9223372036854775805"},
         max_keys=100)
@example(lines=[b"INCR k", b"INCR n", b"INCR a", b"INCR k"], data={b"n": b"4", b"k": b"-7"}, max_keys=100)
@example(lines=[b"INCR k", b"INCR seven77"], data={}, max_keys=100)
@example(lines=[b"INCR k", b"INCR n"], data={b"k": b"-9223372036854775810"}, max_keys=100)
@example(lines=[b"INCR k", b"INCR k"], data={b"k": b"-9223372036854775810"}, max_keys=100)
@example(lines=[b"INCR k", b"INCR k"], data={b"k": b"-9223372036854775809"}, max_keys=100)
@example(lines=[b"INCR k", b"INCR k"], data={b"n": b"1"}, max_keys=1)
@example(lines=[b"INCR k", b"INCR k"], data={b"k": b" 5"}, max_keys=1)
@example(lines=[b"INCR k", b"INCR n"], data={b"k": b"1_0", b"n": b"007"}, max_keys=100)
def test_a_read_of_incrs_gets_the_full_paths_replies(lines: list[bytes], data: dict[bytes, bytes],
                                                      max_keys: int) -> None:
    # Through a whole session (every path it chooses) and through the whole-read answer alone.
    limits = StoreLimits(max_keys=max_keys, max_key_bytes=6, max_value_bytes=32)
    fast, full, whole = Store(limits), Store(limits), Store(limits)
    for store in (fast, full, whole):
        store.data.update(data)
    expected = full_path_replies(lines, full)
    assert session_replies(Session(fast), [b"".join(line + b"\n" for line in lines)]) == expected
    assert fast.data == full.data
    assert fast.counters == full.counters
    block = b"\n".join(lines)
    replies = store_block_replies(lines, block, whole) if is_printable_ascii(block) else None
    if replies is None:
        assert whole.data == data  # nothing done: every line goes to store_replies
    else:
        assert replies == expected
        assert whole.data == full.data


@pytest.mark.parametrize("keys", [
    [b"counter:%d" % i for i in range(100)],  # the verbs benchmark's read: distinct keys
    [b"counter"] * 100,  # the lost-update demo's key, pipelined
    [b"counter:%d" % (i % 7) for i in range(100)],  # a few counters in turn
    [b"counter"],
])
def test_reads_of_incrs_of_distinct_keys_or_of_one_key_are_answered_whole(keys: list[bytes]) -> None:
    store = Store()
    store.data[b"counter:7"] = b"41"
    store.data[b"counter"] = b"-3"
    lines = [b"INCR " + key for key in keys]
    replies = store_block_replies(lines, b"\n".join(lines), store)
    reference = Store()
    reference.data.update({b"counter:7": b"41", b"counter": b"-3"})
    assert replies == full_path_replies(lines, reference)
    assert store.data == reference.data


any_read = st.one_of(
    st.lists(tagged_echo_lines, min_size=1, max_size=8),
    st.lists(echo_lines, min_size=1, max_size=8),
    st.lists(request_lines, min_size=1, max_size=8),
    incr_reads(),
    homogeneous_reads.filter(bool),
    st.lists(st.sampled_from([b"PING", b"PING", b"ping", b"PING ", b"PING\r", b"#t PING"]), min_size=1,
             max_size=5),
).filter(lambda lines: all(b"\n" not in line for line in lines))


@given(lines=any_read, data=bigger_data)
@example(lines=[b"PING", b"PING"], data={})
@example(lines=[b"PING", b"PING "], data={})
@example(lines=[b"ECHO a", b"ECHO "], data={})
@example(lines=[b"ECHO a", b"ECHO b", b"ECHO "], data={})
@example(lines=[b"ECHO "], data={})
@example(lines=[b"ECHO a\r"], data={})  # one line a read, the lock-step shortcut
@example(lines=[b"ECHO a\x01b"], data={})
@example(lines=[b"ECHO caf\xc3\xa9"], data={})
@example(lines=[b"GET k", b"GET "], data={b"k": b"1"})
def test_a_read_answered_as_it_came_is_the_full_paths_answer(lines: list[bytes],
                                                             data: dict[bytes, bytes]) -> None:
    fast, full = stores(data)
    read = b"".join(line + b"\n" for line in lines)
    replies = whole_read_replies(read, len(lines), fast)
    if replies is None:
        assert fast.data == full.data  # nothing done: the session splits the read into lines
    else:
        assert replies == full_path_replies(lines, full)
        assert fast.data == full.data


@pytest.mark.parametrize("lines", [
    [b"PING"] * 3, [b"ECHO a"], [b"ECHO a", b"ECHO b c"], [b"#1 ECHO a", b"#2 ECHO b"], [b"GET k"] * 2,
    [b"SET k 1", b"SET n 2"], [b"INCR k", b"INCR n"], [b"INCR k"] * 3,
])
def test_ordinary_reads_are_answered_as_they_came(lines: list[bytes]) -> None:
    store = Store()
    store.data[b"k"] = b"5"
    assert whole_read_replies(b"".join(line + b"\n" for line in lines), len(lines), store) is not None
