"""The server's sans-IO engine: the same replies however the bytes are cut, and the actions it asks for."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import cut_at, session_replies
from sockrace.protocol import MAX_SLEEP_MS, Echo, Incr, Quit, Sleep
from sockrace.session import (
    AWAIT_OWED,
    CLOSE,
    ENDED,
    NEED_DATA,
    Action,
    Session,
    SessionConfig,
    Wait,
    Yield,
)
from sockrace.store import Store

STREAM = (
    b"PING\r\n#a ECHO one two\necho three\nSET k v\n#g GET k\nINCR n 5\n#i INCR n\nFLY\n#m3 SLEEP 70000 x\n"
    b"SLEEP 0 zero\n" + b"x" * 40 + b"\nECHO caf\xc3\xa9\nECHO \xff\nSTATS\nECHO tail"
)
EXPECTED = (
    b"OK PONG\n#a OK one two\nOK three\nOK\n#g OK v\nOK 5\n#i OK 6\nERR UNKNOWN unknown verb 'FLY'\n"
    + f"#m3 ERR RANGE ms must be between 0 and {MAX_SLEEP_MS}\n".encode()
    + b"OK zero\nERR TOOLONG line longer than 32 bytes\nOK caf\xc3\xa9\nERR BADLINE line is not valid UTF-8\n"
    b"OK connections=0 total_connections=0 requests=14 errors=4 keys=2\nOK tail\n"
)


def new_session(**options: object) -> Session:
    return Session(Store(), SessionConfig(max_line=32, **options))  # type: ignore[arg-type]


def actions(session: Session) -> list[Action]:
    """Every action until NEED_DATA, CLOSE or ENDED (included), completing nothing."""
    found: list[Action] = []
    while True:
        action = session.next_action()
        found.append(action)
        if action is NEED_DATA or action is CLOSE or action is ENDED:
            return found


def test_a_stream_read_whole_gets_every_reply_in_order() -> None:
    assert session_replies(new_session(), [STREAM]) == EXPECTED


def test_a_stream_fed_byte_by_byte_gets_the_same_replies() -> None:
    pieces = [STREAM[index:index + 1] for index in range(len(STREAM))]
    assert session_replies(new_session(), pieces) == EXPECTED


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_a_stream_split_at_any_point_gets_the_same_replies(cut: int) -> None:
    assert session_replies(new_session(), [STREAM[:cut], STREAM[cut:]]) == EXPECTED


@pytest.mark.parametrize("options", [{"delay_ms": 1.0}, {"jitter_ms": 2.0}, {"unsafe_incr": True},
                                     {"out_of_order": True}])
def test_latency_unsafe_incr_and_out_of_order_change_actions_not_replies(options: dict[str, object]) -> None:
    # With latency every request is a Wait (no fast path); completed at once, the bytes are the same.
    assert session_replies(new_session(**options), [STREAM]) == EXPECTED


FRAGMENTS = st.sampled_from([
    b"PING", b"ECHO a b", b"#t ECHO x", b"GET k", b"SET k 1", b"INCR k", b"SLEEP 3 s", b"QUIT", b"STATS",
    b"\r", b"\n", b"\r\n", b" ", b"\x00", b"\xc3", b"#", b"y" * 20,
])


@settings(max_examples=200, deadline=None)
@given(stream=st.lists(FRAGMENTS, max_size=25).map(b"".join),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_the_fast_path_and_the_full_path_agree_however_cut(stream: bytes, cuts: list[int]) -> None:
    pieces = cut_at(stream, cuts)
    fast = session_replies(new_session(), pieces)
    assert fast == session_replies(new_session(delay_ms=0.5), pieces)
    assert fast == session_replies(new_session(), [stream])


def test_nothing_before_a_complete_line() -> None:
    session = new_session()
    session.receive_data(b"PI")
    assert session.next_action() is NEED_DATA
    session.receive_data(b"NG\r")
    assert session.next_action() is NEED_DATA
    session.receive_data(b"\nECHO x\n")
    assert session.next_action() == b"OK PONG\nOK x\n"
    assert session.next_action() is NEED_DATA
    assert session.counters.requests == 2


def test_sleep_and_latency_are_waits_drawn_from_the_seeded_rng() -> None:
    def waits(seed: int) -> list[Action]:
        session = Session(Store(), SessionConfig(delay_ms=5, jitter_ms=10), random.Random(seed))
        session.receive_data(b"SLEEP 100 s\nECHO e\n")
        return actions(session)

    first = waits(4)
    assert first == waits(4)  # the same seed, the same latencies
    assert first != waits(5)
    sleep, echo, need_data = first
    assert isinstance(sleep, Wait)
    assert isinstance(echo, Wait)
    assert sleep.request == Sleep(ms=100, text="s")
    assert echo.request == Echo(text="e")
    assert 105 <= sleep.ms <= 115
    assert 5 <= echo.ms <= 15
    assert need_data is NEED_DATA


def test_a_plain_sleep_is_a_wait_between_fast_replies() -> None:
    session = new_session()
    session.receive_data(b"PING\nSLEEP 20 late\nECHO after\n")
    ping, sleep, echo, need_data = actions(session)
    assert ping == b"OK PONG\n"
    assert sleep == Wait(20.0, Sleep(ms=20, text="late"))
    assert session.complete(sleep) == b"OK late\n"
    assert echo == b"OK after\n"
    assert need_data is NEED_DATA


def test_quit_closes_after_its_reply_and_later_lines_are_ignored() -> None:
    session = new_session()
    session.receive_data(b"PING\nQUIT\nECHO never\n")
    assert actions(session) == [b"OK PONG\n", b"OK BYE\n", CLOSE]
    assert session.next_action() is CLOSE
    assert session.counters.requests == 2


def test_out_of_order_quit_first_awaits_what_is_owed() -> None:
    session = new_session(out_of_order=True, delay_ms=1.0)
    session.receive_data(b"#s SLEEP 5 x\nQUIT\nECHO never\n")
    sleep, await_owed, quit_, close = actions(session)
    assert isinstance(sleep, Wait)
    assert await_owed is AWAIT_OWED
    assert isinstance(quit_, Wait)
    assert quit_.request == Quit()
    assert close is CLOSE


@pytest.mark.parametrize(("out_of_order", "expected"), [(False, [b"OK tail\n", ENDED]),
                                                        (True, [AWAIT_OWED, b"OK tail\n", ENDED])])
def test_an_unterminated_last_line_is_answered_at_eof(out_of_order: bool, expected: list[Action]) -> None:
    session = new_session(out_of_order=out_of_order)
    session.receive_data(b"ECHO tail")
    assert session.next_action() is NEED_DATA
    session.feed_eof()
    assert actions(session) == expected
    assert session.next_action() is ENDED


def test_unsafe_incr_reads_then_yields_then_writes() -> None:
    store = Store()
    first, second = (Session(store, SessionConfig(unsafe_incr=True)) for _ in range(2))
    first.receive_data(b"INCR k\n")
    second.receive_data(b"INCR k\n")
    read_first, read_second = first.next_action(), second.next_action()
    assert read_first == Yield(Incr(key="k"), 0)
    assert read_second == Yield(Incr(key="k"), 0)
    assert isinstance(read_first, Yield)
    assert isinstance(read_second, Yield)
    # Both read 0 before either wrote: one update is lost, the seed tutorial's race.
    assert first.complete(read_first) == b"OK 1\n"
    assert second.complete(read_second) == b"OK 1\n"


@pytest.mark.parametrize("read", [b"INCR k\nINCR n\n", b"INCR k\nINCR k\n", b"INCR k\nINCR n\nINCR k\n"])
def test_an_unsafe_incr_yields_even_in_a_read_the_fast_path_would_answer_whole(read: bytes) -> None:
    # The whole-read answer of INCR lines writes without yielding: with --unsafe-incr it must not run.
    session = Session(Store(), SessionConfig(unsafe_incr=True))
    session.receive_data(read)
    assert session.next_action() == Yield(Incr(key="k"), 0)


def test_counters_count_requests_and_errors_as_stats_reports_them() -> None:
    session = new_session()
    assert session_replies(session, [b"PING\nECHO a\nFLY\n" + b"z" * 40 + b"\n#s STATS\n"]) == (
        b"OK PONG\nOK a\nERR UNKNOWN unknown verb 'FLY'\nERR TOOLONG line longer than 32 bytes\n"
        b"#s OK connections=0 total_connections=0 requests=5 errors=2 keys=0\n"
    )


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_a_line_of_exactly_the_limit_is_served_with_either_ending(ending: bytes) -> None:
    line = b"ECHO " + b"e" * 27  # 32 bytes, the session's limit here
    assert session_replies(new_session(), [line + ending]) == b"OK " + b"e" * 27 + b"\n"
    too_long = b"ERR TOOLONG line longer than 32 bytes\n"
    assert session_replies(new_session(), [b"E" + line + ending]) == too_long


def test_tagged_requests_that_fail_get_tagged_errors() -> None:
    assert session_replies(new_session(), [b"#m3 SLEEP 70000 x\n#m4 ECHO a\tb\n#m5 GET\n"]) == (
        f"#m3 ERR RANGE ms must be between 0 and {MAX_SLEEP_MS}\n".encode()
        + b"#m4 ERR BADLINE line contains control characters\n#m5 ERR ARITY GET takes 1 argument\n"
    )


def test_the_session_module_imports_no_asyncio() -> None:
    import ast
    import inspect

    import sockrace.session as module

    tree = ast.parse(inspect.getsource(module))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.startswith(("asyncio", "socket", "sockrace.serv"))}


def test_fast_replies_are_counted_like_the_full_paths() -> None:
    session = Session(Store())
    assert session_replies(session, [b"PING\n#a ECHO one two\nECHO\nSET k v\nSTATS\n"]) == (
        b"OK PONG\n#a OK one two\nERR ARITY usage: ECHO <text>\nOK\n"
        b"OK connections=0 total_connections=0 requests=5 errors=1 keys=1\n"
    )


def test_a_read_of_only_fast_requests_is_counted_before_the_next_read() -> None:
    # One read of nothing but PING and ECHO takes the all-fast branch (no per-line loop); its
    # requests must still be counted, in order, before a later STATS reads the count.
    session = Session(Store())
    assert session_replies(session, [b"PING\n#a ECHO one\necho two\r\n", b"#s STATS\n"]) == (
        b"OK PONG\n#a OK one\nOK two\n#s OK connections=0 total_connections=0 requests=4 errors=0 keys=0\n"
    )
