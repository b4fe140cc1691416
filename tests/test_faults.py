"""The pure fault plan: validation, determinism, and byte exactness of every fault but reset."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockrace.check.faults import (
    COALESCE_LIMIT_BYTES,
    Direction,
    DirectionPlan,
    FaultRecord,
    Faults,
)
from sockrace.check.forwarding import simulate

chunk_lists = st.lists(st.binary(min_size=0, max_size=300), max_size=40)
seeds = st.integers(min_value=-(2**63), max_value=2**63)


@st.composite
def faults_without_reset(draw: st.DrawFn) -> Faults:
    delay = draw(st.none() | st.tuples(st.floats(0, 5), st.floats(0, 5)).map(lambda r: (min(r), max(r))))
    return Faults(
        delay_ms=delay,
        split=draw(st.sampled_from([0.0, 0.5, 1.0])),
        split_max_fragments=draw(st.integers(2, 8)),
        coalesce=draw(st.sampled_from([0.0, 0.5, 1.0])),
        coalesce_max_chunks=draw(st.integers(2, 6)),
        direction=draw(st.sampled_from(["both", "to_server", "to_client"])),
    )


@given(faults=faults_without_reset(), seed=seeds, chunks=chunk_lists,
       direction=st.sampled_from(list(Direction)))
def test_what_leaves_is_what_entered_in_order(
    faults: Faults, seed: int, chunks: list[bytes], direction: Direction,
) -> None:
    result = simulate(faults, seed, chunks, direction=direction)
    assert b"".join(result.writes) == b"".join(chunks)
    assert all(result.writes), "no empty write"
    assert not result.reset


@given(faults=faults_without_reset(), seed=seeds, chunks=chunk_lists)
def test_the_same_seed_makes_the_same_decisions(faults: Faults, seed: int, chunks: list[bytes]) -> None:
    first = simulate(faults, seed, chunks, connection=3)
    again = simulate(faults, seed, chunks, connection=3)
    assert first == again


@given(seed=seeds, chunks=chunk_lists, low=st.integers(0, 2000), span=st.integers(0, 2000))
@settings(max_examples=200)
def test_a_reset_cuts_the_stream_exactly_at_its_offset(
    seed: int, chunks: list[bytes], low: int, span: int,
) -> None:
    faults = Faults(reset=1.0, reset_after_bytes=(low, low + span), split=0.5, coalesce=0.5)
    stream = b"".join(chunks)
    reset_at = DirectionPlan(faults, seed, 0, Direction.TO_SERVER).reset_at
    assert reset_at is not None
    assert low <= reset_at <= low + span
    result = simulate(faults, seed, chunks)
    if stream and len(stream) >= reset_at:  # the reset fires when bytes reach its offset
        assert result.reset
        assert b"".join(result.writes) == stream[:reset_at]
        assert [(d.fault, d.offset) for d in result.decisions if d.fault == "reset"] == [("reset", reset_at)]
    else:
        assert not result.reset
        assert b"".join(result.writes) == stream


def test_split_cuts_every_unit_into_fragments_with_a_pause_between() -> None:
    chunks = [b"ECHO c%d.0.abcd\n" % i for i in range(50)]
    result = simulate(Faults(split=True, split_max_fragments=3), 7, chunks)
    splits = [d for d in result.decisions if d.fault == "split"]
    assert len(splits) == 50
    assert len(result.writes) == sum(len(d.params["fragments"]) for d in splits)
    assert all(2 <= len(d.params["fragments"]) <= 3 for d in splits)
    assert all(len(d.params["pauses_ms"]) == len(d.params["fragments"]) - 1 for d in splits)
    assert all(0.5 <= p <= 2.0 for d in splits for p in d.params["pauses_ms"])


def test_coalesce_merges_reads_into_one_write() -> None:
    chunks = [b"OK c%d\n" % i for i in range(100)]
    result = simulate(Faults(coalesce=True, coalesce_max_chunks=5), 7, chunks)
    merges = [d for d in result.decisions if d.fault == "coalesce"]
    assert len(result.writes) == len(merges) < 50
    assert all(2 <= d.params["chunks"] <= d.params["target"] <= 5 for d in merges[:-1])
    assert sum(d.params["chunks"] for d in merges) == 100


def test_coalesce_stops_growing_a_unit_at_its_limit() -> None:
    chunks = [b"x" * 40_000] * 6
    result = simulate(Faults(coalesce=True, coalesce_max_chunks=6), 1, chunks)
    assert all(len(write) < COALESCE_LIMIT_BYTES + 40_000 for write in result.writes)
    assert len(result.writes) >= 3


def test_delays_are_drawn_in_the_range_and_logged() -> None:
    result = simulate(Faults(delay_ms=(2, 3)), 5, [b"a"] * 20)
    delays = [d.params["ms"] for d in result.decisions if d.fault == "delay"]
    assert len(delays) == 20
    assert all(2 <= ms <= 3 for ms in delays)
    assert len(set(delays)) > 1


def test_faults_apply_only_in_their_direction() -> None:
    faults = Faults(split=True, delay_ms=(1, 1), direction="to-server")
    assert faults.direction == "to_server"
    to_client = simulate(faults, 1, [b"hello"] * 5, direction=Direction.TO_CLIENT)
    assert to_client.writes == (b"hello",) * 5
    assert to_client.decisions == ()
    to_server = simulate(faults, 1, [b"hello"] * 5, direction=Direction.TO_SERVER)
    assert len(to_server.writes) > 5


def test_each_fault_draws_from_its_own_stream() -> None:
    chunks = [b"line %d\n" % i for i in range(30)]

    def delays(faults: Faults) -> list[Any]:
        return [d.params["ms"] for d in simulate(faults, 11, chunks).decisions if d.fault == "delay"]

    assert delays(Faults(delay_ms=(0, 5))) == delays(Faults(delay_ms=(0, 5), split=True))


def test_seeds_connections_and_directions_draw_differently() -> None:
    faults = Faults(split=True, delay_ms=(0, 5))
    chunks = [b"ECHO abcdefgh\n"] * 10
    runs = {
        (seed, connection, direction): simulate(faults, seed, chunks, connection=connection,
                                                direction=direction).decisions
        for seed in (1, 2) for connection in (0, 1) for direction in Direction
    }
    decisions = [tuple((d.fault, tuple(sorted(d.params.items(), key=str))) for d in run)
                 for run in runs.values()]
    assert len({repr(d) for d in decisions}) == len(runs)


def test_no_faults_forward_each_read_untouched() -> None:
    faults = Faults()
    assert not faults.enabled
    assert faults.describe() == "none"
    assert simulate(faults, 1, [b"a", b"", b"bc"]).writes == (b"a", b"bc")


def test_describe_names_the_faults() -> None:
    faults = Faults(delay_ms=(1, 5), split=True, coalesce=0.5, reset=0.1, direction="to_client")
    assert faults.describe() == (
        "delay 1-5 ms, split, coalesce 0.5, reset 0.1 after 0-4096 bytes, to_client only")
    assert Faults(split=True).split == 1.0


def test_a_record_is_one_line_of_json() -> None:
    decision = simulate(Faults(split=True), 1, [b"hello world"]).decisions[0]
    record = FaultRecord.of(decision, 12.34567)
    line = record.to_json()
    assert "\n" not in line
    assert json.loads(line) == {
        "at_ms": 12.346, "connection": 0, "direction": "to_server", "offset": 0, "fault": "split",
        "params": {"fragments": decision.params["fragments"], "pauses_ms": decision.params["pauses_ms"]},
    }


def test_a_unit_has_at_least_one_byte() -> None:
    plan = DirectionPlan(Faults(split=True), 1, 0, Direction.TO_SERVER)
    with pytest.raises(ValueError, match="a unit has at least one byte, got 0"):
        plan.deliver(0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay_ms": (5, 1)},
         r"delay_ms must be \(lo, hi\), numbers with 0 <= lo <= hi <= 60000, got \(5, 1\)"),
        ({"delay_ms": (-1, 1)}, r"delay_ms must be .* got \(-1, 1\)"),
        ({"delay_ms": (0, float("nan"))}, r"delay_ms must be .* got \(0, nan\)"),
        ({"delay_ms": 5}, r"delay_ms must be .* got 5"),
        ({"delay_ms": ("1", 2)}, r"delay_ms must be .* got \('1', 2\)"),
        ({"split": 1.5}, r"split must be a share between 0 and 1 \(True means 1\), got 1.5"),
        ({"coalesce": -0.1}, r"coalesce must be a share between 0 and 1"),
        ({"reset": "yes"}, r"reset must be a share between 0 and 1 \(True means 1\), got 'yes'"),
        ({"split_max_fragments": 1}, r"split_max_fragments must be an integer from 2 to 64, got 1"),
        ({"split_pause_ms": (0, 2000)},
         r"split_pause_ms must be \(lo, hi\), numbers with 0 <= lo <= hi <= 1000"),
        ({"coalesce_max_chunks": 2.5}, r"coalesce_max_chunks must be an integer from 2 to 1024, got 2.5"),
        ({"coalesce_window_ms": 0},
         r"coalesce_window_ms must be a number of ms above 0 and at most 60000, got 0"),
        ({"reset_after_bytes": (1.5, 3)},
         r"reset_after_bytes must be \(lo, hi\), integers with 0 <= lo <= hi"),
        ({"direction": "up"}, r"direction must be one of to_server, to_client, both, got 'up'"),
    ],
)
def test_bad_options_are_refused_in_one_sentence(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Faults(**options)
