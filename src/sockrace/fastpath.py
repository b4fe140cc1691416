"""Stateless PING and ECHO answered straight from their bytes, over whole blocks of lines.

These two verbs touch no data, so their reply depends on the line alone. The functions here give
exactly `format_reply(store.apply(parse_request(line)))` for a well-formed PING or ECHO (property
tests check it) without decoding or building events, and None for anything else, which then takes
the full parser and gets its exact error. The server's session runs them on every read when it
adds no artificial latency: they are the hot path of every benchmark.
"""

from __future__ import annotations

import re
from itertools import repeat
from typing import Final, cast

from sockrace.protocol import MAX_TAG_LENGTH, TAG_CHARS, strip_line_ending

# A well-formed PING or ECHO line (its line ending removed), in one C-level match: group 1 is the
# tag prefix b"#tag " or None, group 2 ECHO's text or None for PING. Only ASCII letters fold under
# IGNORECASE in a bytes pattern, and [ -~] is printable ASCII: the grammar's allowed ASCII (no C0
# control, no DEL), so non-ASCII text is left to the full parser.
PLAIN_PING_OR_ECHO: Final = re.compile(
    rf"(#{TAG_CHARS}{{1,{MAX_TAG_LENGTH}}} )?(?:(?i:ECHO) ([ -~]+)|(?i:PING) ?)".encode()
)
# The same match with the optional b"\r" a line keeps once LineBuffer.next_lines() took its b"\n".
_PLAIN_LINE: Final = re.compile(PLAIN_PING_OR_ECHO.pattern + rb"\r?")
# For the whole-batch check below: with its separators made spaces, a block of lines is printable
# ASCII exactly when every line is.
_NEWLINES_TO_SPACES: Final = bytes.maketrans(b"\n", b" ")


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
