"""benchmarks/proxy.py runs end to end on a small load (its figures are not judged here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "proxy.py"

pytestmark = pytest.mark.timeout(120)


def run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True,
                          timeout=90, check=False)


def test_a_stream_through_split_and_delay_comes_back_exact() -> None:
    result = run("--only", "exactness", "--stream", "2M", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "exact: 2,097,152 bytes back" in result.stdout
    assert "(equal)" in result.stdout


def test_throughput_prints_the_three_figures_and_the_ratios() -> None:
    result = run("--only", "throughput", "--requests", "2000", "--rounds", "2")
    assert result.returncode in (0, 1), result.stderr  # 1: the ratio goal missed on a busy machine
    lines = [line.lstrip() for line in result.stdout.splitlines()]
    assert lines[1].startswith("direct")
    assert lines[2].startswith("through proxy")
    assert lines[3].startswith("through relay")
    assert lines[4].startswith("through epoll")
    assert lines[5].startswith("ratio")
    assert ("goal >= 0.6x: met" in lines[5]) == (result.returncode == 0)
    assert lines[6].startswith("the bare relay ")


@pytest.mark.parametrize("arguments", [["--stream", "0"], ["--stream", "12X"], ["--rounds", "-1"]])
def test_bad_options_are_usage_errors(arguments: list[str]) -> None:
    result = run(*arguments)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"proxy.py: error: argument {arguments[0]}: ")
