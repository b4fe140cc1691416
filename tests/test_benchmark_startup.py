"""benchmarks/startup.py runs end to end in one round (its figures are not judged here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "startup.py"

pytestmark = pytest.mark.timeout(120)


def test_one_round_prints_every_process_the_ratio_and_the_phases() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--runs", "1"], capture_output=True, text=True,
                            timeout=90, check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for name in ("seed tutorial's program", "python -m sockrace counter", 'python -c "import sockrace.cli"',
                 "imports", "in-memory race", "server INCR race"):
        assert f"  {name} " in out
    assert "python -m sockrace counter / the seed tutorial's program: " in out
    assert "(goal <= 1.1x: " in out
    assert "the counter less its server INCR race / the seed tutorial's program: " in out


def test_a_bad_ref_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--against", "no-such-ref"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "startup.py: error: " in result.stderr
