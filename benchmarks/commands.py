"""End to end: the wall time of whole `python -m sockrace ...` commands, as a user runs them."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Final

from benchmarks.processes import environment
from benchmarks.variants import REPO_ROOT, Tree

# A command taking longer than this is broken, not slow.
COMMAND_TIMEOUT_S: Final = 120.0


@dataclass(slots=True)
class Timing:
    """Wall time of a command or a program, several runs; `error` when it could not be timed."""

    name: str
    command: list[str]
    seconds: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds) if self.seconds else 0.0


def time_once(timing: Timing, args: list[str], tree: Tree) -> None:
    """Run `python -m sockrace *args` once with `tree`'s sockrace; add its wall time, or set the error."""
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "sockrace", *args], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S, check=False, cwd=REPO_ROOT, env=environment(tree))
    except subprocess.TimeoutExpired:
        timing.error = f"not finished after {COMMAND_TIMEOUT_S:.0f} s"
        return
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        timing.error = f"exit {done.returncode}: {lines[-1] if lines else ''}"
        return
    timing.seconds.append(elapsed)
