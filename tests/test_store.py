from __future__ import annotations

import tracemalloc

import pytest

from sockrace.protocol import INT64_MAX, Echo, Err, Get, Incr, Ok, Ping, Quit, Set, Sleep, Stats
from sockrace.store import DEFAULT_MAX_VALUE_BYTES, Store, StoreLimits


def test_ping_echo_sleep_quit() -> None:
    store = Store()
    assert store.apply(Ping()) == Ok(payload="PONG")
    assert store.apply(Echo(tag="t", text="a b")) == Ok(tag="t", payload="a b")
    assert store.apply(Sleep(ms=5, text="late")) == Ok(payload="late")
    assert store.apply(Quit()) == Ok(payload="BYE")


def test_set_get_incr() -> None:
    store = Store()
    assert store.apply(Get(key="k")) == Err(code="NOKEY", message="no such key 'k'")
    assert store.apply(Incr(key="k")) == Ok(payload="1")
    assert store.apply(Incr(key="k", amount=41)) == Ok(payload="42")
    assert store.apply(Get(key="k")) == Ok(payload="42")
    assert store.apply(Set(key="k", value="text here")) == Ok()
    assert store.apply(Get(key="k")) == Ok(payload="text here")


def test_incr_refuses_text_and_overflow() -> None:
    store = Store()
    store.apply(Set(key="k", value="abc"))
    reply = store.apply(Incr(key="k"))
    assert isinstance(reply, Err)
    assert reply.code == "NOTINT"
    store.apply(Set(key="n", value=str(INT64_MAX)))
    overflow = store.apply(Incr(key="n"))
    assert isinstance(overflow, Err)
    assert overflow.code == "RANGE"
    assert store.apply(Get(key="n")) == Ok(payload=str(INT64_MAX))


@pytest.mark.parametrize("amount", [1, -3, 1000])
def test_incr_amounts_accumulate(amount: int) -> None:
    store = Store()
    for _ in range(5):
        store.apply(Incr(key="k", amount=amount))
    assert store.apply(Get(key="k")) == Ok(payload=str(5 * amount))


def test_stats_reports_counters_and_keys() -> None:
    store = Store()
    store.apply(Set(key="a", value="1"))
    store.counters.requests = 7
    reply = store.apply(Stats())
    assert isinstance(reply, Ok)
    assert "requests=7" in reply.payload
    assert "keys=1" in reply.payload


def test_text_beyond_ascii_round_trips_and_is_counted_in_utf8_bytes() -> None:
    store = Store(StoreLimits(max_keys=10, max_key_bytes=8, max_value_bytes=8))
    assert store.apply(Set(key="clé", value="😀ab")) == Ok()  # 4 and 6 bytes in UTF-8
    assert store.apply(Get(key="clé")) == Ok(payload="😀ab")
    too_big_value = Err(code="TOOBIG", message="value longer than 8 bytes")
    assert store.apply(Set(key="k", value="😀😀😀")) == too_big_value
    assert store.apply(Set(key="😀😀😀", value="v")) == Err(code="TOOBIG", message="key longer than 8 bytes")


def held_bytes_per_value(value: str, count: int) -> float:
    """What storing `count` distinct keys holding `value` costs the store, per key, traced."""
    store = Store(StoreLimits(max_keys=count))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(count):
            assert store.apply(Set(key=f"k{index}", value=value)) == Ok()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return held / count


def test_memory_held_follows_the_utf8_size_not_the_widest_character() -> None:
    # A str with one character beyond U+FFFF spends 4 bytes on every character; the limits count
    # UTF-8 bytes, so a value of 4,096 UTF-8 bytes with one emoji must cost about what ASCII does.
    ascii_value = "a" * DEFAULT_MAX_VALUE_BYTES
    emoji_value = "😀" + "a" * (DEFAULT_MAX_VALUE_BYTES - 4)
    assert len(emoji_value.encode()) == DEFAULT_MAX_VALUE_BYTES
    ascii_cost = held_bytes_per_value(ascii_value, 500)
    emoji_cost = held_bytes_per_value(emoji_value, 500)
    assert ascii_cost < DEFAULT_MAX_VALUE_BYTES + 300  # the value, its key and the dict's share
    assert emoji_cost < ascii_cost + 64
