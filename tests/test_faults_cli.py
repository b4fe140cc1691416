"""The kinds of fault (check/faults.py) and how the command line spells them (cli/faults.py): the same
kinds on both sides, words that read back as the same Faults, and a shrink that tries each kind's
smaller settings in a fixed order."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockrace.check.faults import (
    DIRECTION_CHOICES,
    Faults,
    fault_kinds,
    faults_from_json,
    faults_to_json,
    shrink_faults,
)
from sockrace.cli import faults as cli_faults


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    cli_faults.add_fault_options(parser)
    return parser


def test_every_kind_has_one_option_for_its_main_field_and_no_option_names_another() -> None:
    kinds = {kind.name: kind.fields[0] for kind in fault_kinds()}
    options = {option.kind: option.field for option in cli_faults.FAULT_OPTIONS}
    assert options == kinds
    assert [o.kind for o in cli_faults.FAULT_OPTIONS] == [k.name for k in fault_kinds()], "the same order"
    assert cli_faults.DIRECTION_CHOICES == DIRECTION_CHOICES


def test_no_option_sets_a_default_other_than_the_librarys() -> None:
    default = Faults()
    assert cli_faults.read_faults(parser().parse_args([])) == default
    for option in cli_faults.FAULT_OPTIONS:
        assert option.default == getattr(default, option.field), option.flag


@pytest.mark.parametrize(("faults", "words"), [
    (Faults(), []),
    (Faults(delay_ms=(1, 5), split=True), ["--delay", "1-5", "--split"]),
    (Faults(split=0.25, coalesce=1.0, reset=0.5, direction="to_client"),
     ["--split", "0.25", "--coalesce", "--reset", "0.5", "--direction", "to_client"]),
    (Faults(reset=1.0, delay_ms=(0.5, 0.5)), ["--delay", "0.5-0.5", "--reset", "1"]),
])
def test_faults_are_spelt_as_the_check_command_took_them(faults: Faults, words: list[str]) -> None:
    assert cli_faults.fault_words(faults) == words
    assert cli_faults.read_faults(parser().parse_args(words)) == faults


spellable = st.builds(
    Faults,
    delay_ms=st.none() | st.tuples(st.integers(0, 500), st.integers(0, 500)).map(
        lambda r: (min(r) / 10, max(r) / 10)),
    split=st.sampled_from([0.0, 0.125, 0.5, 1.0]),
    coalesce=st.sampled_from([0.0, 0.3, 1.0]),
    reset=st.sampled_from([0.0, 0.01, 1.0]),
    direction=st.sampled_from(DIRECTION_CHOICES),
)


@given(spellable)
def test_the_words_of_faults_read_back_as_the_same_faults(faults: Faults) -> None:
    assert cli_faults.read_faults(parser().parse_args(cli_faults.fault_words(faults))) == faults


@given(spellable)
def test_faults_survive_json(faults: Faults) -> None:
    assert faults_from_json(faults_to_json(faults)) == faults


def test_a_bad_value_is_the_options_own_one_line_error() -> None:
    with pytest.raises(argparse.ArgumentError, match=r"expected a share from 0 to 1, got '2'"):
        parser().parse_args(["--split", "2"])


def test_building_the_fault_options_imports_nothing_of_sockrace_check() -> None:
    code = ("import sys, argparse, sockrace.cli.faults as f; f.add_fault_options(argparse.ArgumentParser()); "
            "sys.exit(any(m.startswith('sockrace.check') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=30).returncode == 0


def test_shrink_turns_kinds_off_the_last_first_then_narrows_them() -> None:
    faults = Faults(delay_ms=(1, 9), split=True, coalesce=0.5, reset=0.1)
    steps = [words for words, _ in shrink_faults(faults)]
    assert steps == ["no reset", "no coalesce", "no split", "no delay", "faults to_client only",
                     "faults to_server only", "delay 1-5 ms", "delay 5-9 ms"]
    smaller = dict(shrink_faults(faults))
    assert smaller["no coalesce"] == Faults(delay_ms=(1, 9), split=True, reset=0.1)
    assert smaller["delay 5-9 ms"].delay_ms == (5, 9)
    assert list(shrink_faults(Faults(direction="to_server"))) == [], "nothing is on: nothing to narrow"
    assert [w for w, _ in shrink_faults(Faults(delay_ms=(1, 2.5)))] == ["no delay", "faults to_client only",
                                                                       "faults to_server only"]


def test_each_kind_checks_its_own_fields() -> None:
    with pytest.raises(ValueError, match=r"^coalesce_max_chunks must be an integer from 2"):
        Faults(coalesce_max_chunks=1)
    with pytest.raises(ValueError, match=r"^direction must be one of"):
        Faults(direction="up")
    assert Faults(direction="to-server").direction == "to_server"
    assert Faults(direction="to_server").describe() == "none", "a direction alone injects nothing"
    assert Faults(split=1, direction="to_server").describe() == "split, to_server only"
