from __future__ import annotations

import pytest

from sockrace.protocol import INT64_MAX, Echo, Err, Get, Incr, Ok, Ping, Quit, Set, Sleep, Stats
from sockrace.store import Store


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
