"""The server's fast paths: ordinary requests answered straight from their bytes, over whole reads.

PING and ECHO touch no data, so their reply depends on the line alone: the functions named
stateless here give exactly `format_reply(store.apply(parse_request(line)))` for a well-formed PING
or ECHO without decoding or building events, and None for anything else. `block_replies` answers a
whole read of them in a few C calls. `whole_read_replies` answers a read of whole lines as it came,
without splitting it, when every line is the same ordinary request (PING, ECHO tagged or not, GET,
SET, INCR of distinct keys or of one key). `store_replies` answers ordinary GET, SET and INCR (and PING
and ECHO among them) line by line on the store's bytes, with no event objects, and stops at the
first line that needs the full parser, which then gives its exact error. Property tests hold every
function here to the full parser and store: the same bytes, the same store afterwards. The server's
session runs them on every read when it adds no artificial latency: they are the hot path of every
benchmark.
"""

from __future__ import annotations

import re
from itertools import chain, cycle, islice, repeat
from operator import add
from typing import Final, cast

from sockrace.protocol import INT64_MAX, INT64_MIN, MAX_TAG_LENGTH, TAG_CHARS, strip_line_ending
from sockrace.store import Store

# A well-formed PING or ECHO line (its line ending removed), in one C-level match: group 1 is the
# tag prefix b"#tag " or None, group 2 ECHO's text or None for PING. Only ASCII letters fold under
# IGNORECASE in a bytes pattern, and [ -~] is printable ASCII: the grammar's allowed ASCII (no C0
# control, no DEL), so non-ASCII text is left to the full parser.
PLAIN_PING_OR_ECHO: Final = re.compile(
    rf"(#{TAG_CHARS}{{1,{MAX_TAG_LENGTH}}} )?(?:(?i:ECHO) ([ -~]+)|(?i:PING) ?)".encode()
)
# The same match with the optional b"\r" a line keeps once LineBuffer.next_lines() took its b"\n".
_PLAIN_LINE: Final = re.compile(PLAIN_PING_OR_ECHO.pattern + rb"\r?")
# For the whole-batch check below: deleting these from a block of lines leaves nothing exactly when
# every line is printable ASCII. One C pass over the bytes, without the decode that
# str.isprintable() needs (a quarter of the time on a read of short lines).
_PRINTABLE_ASCII_OR_NEWLINE: Final = bytes(range(0x20, 0x7F)) + b"\n"
# A read of tagged upper-case ECHO lines of printable text (the multiplexed clients' load), joined
# with a b"\n" before each line, in one C-level match: no match object and no reply built per line.
# Possessive (`++`): a line starts at a b"\n" that `[ -~]+` cannot take, so a read parses one way
# only and nothing is kept to backtrack to; kept, that state grew the engine's stack past 128 KiB
# on reads of 700 lines or more (an mmap and munmap a read under a low mmap threshold).
_TAGGED_ECHOES: Final = re.compile(rf"(?:\n#{TAG_CHARS}{{1,{MAX_TAG_LENGTH}}} ECHO [ -~]+)++".encode())
# A tag with its "#", matched from index 1 (the grammar's tag) after a partition at the first space.
_TAG_BYTES: Final = re.compile(rf"{TAG_CHARS}{{1,{MAX_TAG_LENGTH}}}".encode())
# INCR amounts the fast path takes: the grammar's integer form with at most 18 digits, always inside
# the int64 range; longer ones take the full parser and its RANGE check.
_SHORT_INT: Final = re.compile(rb"[+-]?[0-9]{1,18}")
# GET is the one verb whose reply may be far longer than its request (6 bytes in, 4 KiB out): one call
# hands out at most about this many bytes of values, so that the driver writes and drains a read of
# many GETs in batches of its own size (serving.FLUSH_BYTES) instead of holding every reply at once.
GET_BYTES_PER_CALL: Final = 64 * 1024


def stateless_reply(line: bytes) -> bytes | None:
    """The reply bytes to a well-formed PING or ECHO line (with or without its line ending); None
    for any other line (other verbs, odd spacing, errors)."""
    match = PLAIN_PING_OR_ECHO.fullmatch(strip_line_ending(line))
    if match is None:
        return None
    prefix, text = match.groups(b"")
    return prefix + b"OK " + text + b"\n" if text else prefix + b"OK PONG\n"


def stateless_replies(lines: list[bytes]) -> bytes | None:
    """`b"".join(stateless_reply(line) for line in lines)` for lines without their b"\\n" (as
    `LineBuffer.next_lines()` gives them), when every one is a well-formed PING or ECHO; else None.

    No Python code runs per line (a property test checks it against `stateless_reply`). For ASCII,
    str.isprintable() is exactly [ -~], on every Python version.
    """
    replies = block_replies(lines)
    return replies if replies is not None else ping_echo_replies(lines)


def ping_echo_replies(lines: list[bytes]) -> bytes | None:
    """The replies to a read of PING and ECHO lines of any form (tags, lower case, b"\\r"), one regex
    match per line in C and no Python code per line; None when a line is anything else (the first
    line is looked at alone first, so that a read of other verbs costs one match, not one a line)."""
    if not lines or _PLAIN_LINE.fullmatch(lines[0]) is None:
        return None
    matches = list(map(_PLAIN_LINE.fullmatch, lines))
    if not all(matches):
        return None
    # groups(b""): a tag prefix or b""; ECHO's text (never empty) or b"" for PING.
    every_groups = map(re.Match.groups, cast("list[re.Match[bytes]]", matches), repeat(b""))
    return b"".join([prefix + b"OK " + text + b"\n" if text else prefix + b"OK PONG\n"
                     for prefix, text in every_groups])


def block_replies(lines: list[bytes]) -> bytes | None:
    """The replies to a read of lines (without their b"\\n") that a handful of C calls can answer
    whole: one PING or ECHO line, every line an untagged upper-case ECHO, every line a tagged
    upper-case ECHO, every line exactly b"PING". None for anything else, which is then answered
    line by line (see `store_replies`)."""
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
    count = len(lines)
    if lines.count(b"PING") == count:
        return b"OK PONG\n" * count
    return _echo_block_replies(b"\n" + b"\n".join(lines), count)


def _echo_block_replies(block: bytes, count: int) -> bytes | None:
    """The replies to `count` lines, `block` holding each with a b"\n" before it, when every line is
    an untagged upper-case ECHO or every line a tagged one, of printable text; else None."""
    if block.startswith(b"\nECHO "):
        # Every line an untagged upper-case ECHO of printable text (the pipelined benchmark's load):
        # checked and answered over the whole block at once. Lines hold no b"\n", so b"\nECHO " can
        # only be the start of a line, and it is the start of every line when it occurs once per
        # line; find() and endswith() leave out a line of b"ECHO " alone (no text: an ARITY error).
        if (block.count(b"\nECHO ") == count and block.find(b"\nECHO \n") < 0
                and not block.endswith(b"\nECHO ") and is_printable_ascii(block)):
            return block.replace(b"\nECHO ", b"\nOK ")[1:] + b"\n"
    elif block.startswith(b"\n#") and block.count(b" ECHO ") == count and _TAGGED_ECHOES.fullmatch(block):
        # Every line b"#<tag> ECHO <text>" (the match), and b" ECHO " nowhere else (the count: a
        # tag holds no space, so the first b" ECHO " of each line is the one after its tag, and
        # replace() finds exactly the occurrences count() found): b"#<tag> OK <text>" each.
        return block.replace(b" ECHO ", b" OK ")[1:] + b"\n"
    return None


def whole_read_replies(data: bytes, count: int, store: Store, *, incr: bool = True) -> bytes | None:
    """The replies to a read of `count` whole lines (`data` ends with a b"\n", each line with its
    own, as `LineBuffer.frames_whole()` says) when a handful of C calls answer them all: every line
    b"PING", every line an upper-case ECHO (untagged, or every one tagged), or what
    `store_block_replies` answers; None for anything else, with nothing done to `store`. (The
    session leaves a read of one line to block_replies' and store_block_replies' own checks of one
    line, which cost a few calls less.)

    `block_replies` and `store_block_replies` answered the same reads, after the read had been
    split into lines and joined again: here the read is looked at as it came.
    """
    block = b"\n" + data[:-1]  # a b"\n" before every line
    if block == b"\nPING" * count:
        return b"OK PONG\n" * count
    replies = _echo_block_replies(block, count)
    if replies is None and is_printable_ascii(block):
        replies = _store_block_replies(count, block, store, incr=incr)
    return replies


def is_printable_ascii(block: bytes) -> bool:
    """Whether every line of `block` (lines joined by b"\\n") is printable ASCII, [ -~]: text the
    grammar accepts as it is (no control character; ASCII is UTF-8)."""
    return not block.translate(None, _PRINTABLE_ASCII_OR_NEWLINE)


def store_block_replies(lines: list[bytes], block: bytes, store: Store, *, incr: bool = True) -> bytes | None:
    """The replies to a read of printable ASCII lines that are all untagged upper-case GET, all SET of
    a value without spaces, or all INCR by 1 of distinct keys, answered with a few C calls over the
    whole read (`block` is `b"\\n".join(lines)`); None for anything else, and whenever a reply could
    be an error or a limit could be reached, which `store_replies` then answers line by line.
    """
    return _store_block_replies(len(lines), b"\n" + block, store, incr=incr)


def _store_block_replies(count: int, block: bytes, store: Store, *, incr: bool) -> bytes | None:
    """`store_block_replies` for `count` lines, `block` holding each with a b"\\n" before it. What
    is called here is called a fixed number of times a read, never `in` on bytes (it first tries its
    argument as an integer, and builds and discards a TypeError) nor `zip(strict=True)` (a keyword
    parsed): a read of one line (lock-step traffic) feels each."""
    data, limits = store.data, store.limits
    if block.startswith(b"\nGET "):
        # One space a line, at the start of each: every line is b"GET " and one key, empty only
        # when the line is b"GET ".
        if (block.count(b"\nGET ") != count or block.count(b" ") != count or block.find(b"GET \n") >= 0
                or block.endswith(b"GET ")):
            return None
        values = list(map(data.get, block[5:].split(b"\nGET ")))
        # all(): no missing key (an error reply) and no empty value (a reply without payload).
        if not all(values) or sum(map(len, cast("list[bytes]", values))) > GET_BYTES_PER_CALL:
            return None
        return b"OK " + b"\nOK ".join(cast("list[bytes]", values)) + b"\n"
    if block.startswith(b"\nSET "):
        # Two spaces a line: b"SET ", then the one between key and value; a double space or a
        # space at the end of a line would leave the key or the value empty.
        if (block.count(b"\nSET ") != count or block.count(b" ") != 2 * count or block.find(b"  ") >= 0
                or block.find(b" \n") >= 0 or block.endswith(b" ") or len(data) + count > limits.max_keys):
            return None
        words = block[5:].replace(b"\nSET ", b" ").split(b" ")
        keys, new_values = words[0::2], words[1::2]
        if max(map(len, keys)) > limits.max_key_bytes or max(map(len, new_values)) > limits.max_value_bytes:
            return None
        data.update(zip(keys, new_values, strict=False))  # equal lengths: a key and a value a line
        return b"OK\n" * count
    if incr and block.startswith(b"\nINCR "):
        return _incr_block_replies(block[6:].split(b"\nINCR "), block, store)
    return None


def _incr_block_replies(keys: list[bytes], block: bytes, store: Store) -> bytes | None:
    """The replies to a read of INCR lines by 1 (`keys`: what follows b"INCR " on each line, when
    every line starts so; `block`: the lines joined, a b"\n" before each), when the keys are all
    distinct, all the same, or d distinct keys over and over in the same order (a pipelining client
    that INCRs a few counters in turn); None for anything else, for a line that could be an error,
    and for a write that could reach the key limit.

    No Python code runs per line: the first d keys (every key, once each) are read, converted and
    incremented by map(); line i then gets the total of line i % d plus i // d (one key read n times
    gives its value plus 1 to n); the replies are formatted in one `%` over the whole read, and the
    last d lines' totals are written back by dict.update(). Whatever is called here is called a
    fixed number of times a read (`in` on bytes, `zip(strict=True)` and keyword-parsing builtins
    cost up to a microsecond each, which a read of one line would feel).
    """
    count = len(keys)
    data, limits = store.data, store.limits
    # One piece a line: every line started with b"INCR "; one space a line: no amount and no space
    # in a key; no empty key (b"INCR " alone is an ARITY error).
    if len(keys) != block.count(b"\n") or block.count(b" ") != count or not all(keys):
        return None
    if max(map(len, keys)) > limits.max_key_bytes:
        return None
    distinct = len(set(keys))
    # With d distinct keys, line i repeats line i - d: then the first d lines hold every key once,
    # and so do the last d (for d == count there is nothing to compare).
    if distinct < count and keys[distinct:] != keys[:-distinct]:
        return None
    if len(data) + distinct > limits.max_keys:  # a key not stored yet may be refused (FULL)
        return None
    try:
        if distinct == 1:  # one key, read and written count times in a row
            current = int(data.get(keys[0], b"0"))
            if current + 1 < INT64_MIN or current + count > INT64_MAX:
                return None
            replies = (b"OK %d\n" * count) % tuple(range(current + 1, current + count + 1))
            data[keys[0]] = b"%d" % (current + count)
            return replies
        # int() as Store.read_int converts, so a value it refuses is left to the full path. add(),
        # not (1).__add__: a builtin function is called for half the cost of a slot wrapper.
        firsts = tuple(map(add, map(int, map(data.get, keys[:distinct], repeat(b"0"))), repeat(1)))
    except ValueError:
        return None
    # Every total lies between the first round's lowest and its highest plus the rounds after it
    # (SET may have stored any number, out of range already).
    if min(firsts) < INT64_MIN or max(firsts) + (count - 1) // distinct > INT64_MAX:
        return None
    totals = firsts
    if distinct < count:  # line i: firsts[i % d] + i // d
        rounds = chain.from_iterable(map(repeat, range(count), repeat(distinct)))
        totals = tuple(map(add, islice(cycle(firsts), count), rounds))
    replies = (b"OK %d\n" * count) % totals
    # Each value as its reply spells it: the text between b"OK " and b"\n"; the last d lines hold
    # each key's last total (strict=False: equal lengths by construction, and the keyword costs).
    texts = replies[3:-1].split(b"\nOK ")
    data.update(zip(keys[count - distinct:], texts[count - distinct:], strict=False))
    return replies


def store_replies(lines: list[bytes], start: int, store: Store, *, plain: bool,
                  incr: bool = True) -> tuple[bytes, int]:
    """Answer `lines[start:]` (lines without their b"\\n") while they are ordinary GET, SET, INCR,
    PING or ECHO requests, applying them to `store`; return (their replies, the index of the first
    line not answered). That line needs the full parser: it is an error (including every limit the
    store enforces), another verb, or text beyond printable ASCII. Or the replies already hold
    GET_BYTES_PER_CALL bytes of values: the next call carries on.

    `plain` says every line is known to be printable ASCII (`is_printable_ascii` of the block); else
    each line is checked. `incr=False` leaves INCR to the caller (the unsafe INCR yields midway).
    A property test holds the replies and the store's state to those of the full parser and store.
    """
    data, limits = store.data, store.limits
    max_keys, max_key_bytes, max_value_bytes = limits.max_keys, limits.max_key_bytes, limits.max_value_bytes
    # Reply pieces, joined once at the end: a tuple extended costs less than three concatenations.
    replies: list[bytes] = []
    extend = replies.extend
    index = start
    values_returned = 0
    for index in range(start, len(lines)):
        line = lines[index]
        if not plain:
            if line.endswith(b"\r"):  # a CRLF ending's b"\r" (the full parser strips one too)
                line = line[:-1]
            if not (line.isascii() and line.decode().isprintable()):
                break
        prefix = b""
        if line[:1] == b"#":  # a one-byte slice is a cached object: cheaper than a method call
            tag, _, line = line.partition(b" ")
            if _TAG_BYTES.fullmatch(tag, 1) is None:
                break
            prefix = tag + b" "
        word, _, rest = line.partition(b" ")
        verb = word.upper()
        if verb == b"GET":
            # find(), not `in`: bytes.__contains__ first tries its argument as an integer, and
            # builds and discards a TypeError message for every bytes argument.
            if not rest or rest.find(b" ") >= 0:
                break
            value = data.get(rest)
            if value is None:
                extend((prefix, b"ERR NOKEY no such key ", repr(rest[:40].decode()).encode(), b"\n"))
            else:
                extend((prefix, b"OK " if value else b"OK", value, b"\n"))
                values_returned += len(value)
                if values_returned >= GET_BYTES_PER_CALL:
                    return b"".join(replies), index + 1
        elif verb == b"SET":
            key, _, value = rest.partition(b" ")
            if (not key or not value or len(key) > max_key_bytes or len(value) > max_value_bytes
                    or (key not in data and len(data) >= max_keys)):
                break
            data[key] = value
            extend((prefix, b"OK\n"))
        elif verb == b"INCR" and incr:
            key, has_amount, amount_text = rest.partition(b" ")
            if not key or len(key) > max_key_bytes:
                break
            if has_amount and _SHORT_INT.fullmatch(amount_text) is None:
                break
            raw = data.get(key)
            if raw is None:
                if len(data) >= max_keys:
                    break
                current = 0
            else:
                try:
                    current = int(raw)  # as Store.read_int: the same conversion, the same answer
                except ValueError:
                    break
            value_int = current + (int(amount_text) if has_amount else 1)
            if not INT64_MIN <= value_int <= INT64_MAX:
                break
            data[key] = text = b"%d" % value_int
            extend((prefix, b"OK ", text, b"\n"))
        elif verb == b"ECHO" and rest:
            extend((prefix, b"OK ", rest, b"\n"))
        elif verb == b"PING" and not rest:
            extend((prefix, b"OK PONG\n"))
        else:
            break
    else:
        index = len(lines)
    return b"".join(replies), index
