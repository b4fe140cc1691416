"""The server's verbs against redis-server (benchmarks/verbs.py) as goals of the suite: PING >= 1.0x,
INCR >= 0.8x, GET, SET and the mixed pipeline >= 0.5x, each the median of the round-by-round ratios.

Skipped with a note without a C compiler or without redis-server.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

from benchmarks import verbs
from benchmarks.goals import Goal, median_goal
from benchmarks.variants import Settings

SECTION: Final = "verbs"
# A quarter of verbs.py's default run per round: ten runs a round stay under a minute in all.
REQUESTS: Final = 50_000


def goals_of(figures: dict[str, dict[str, list[verbs.Run]]], anchor: str) -> list[Goal]:
    """One goal per mix of verbs.GOALS: sockrace's req/s over `anchor`'s, round by round."""
    goals = []
    for mix, target in verbs.GOALS.items():
        by_server = figures.get(mix, {})
        pairs = zip(by_server.get("sockrace", []), by_server.get(anchor, []), strict=False)
        ratios = [mine.rate / theirs.rate for mine, theirs in pairs if theirs.rate > 0]
        goals.append(median_goal(
            f"{mix} from a C client, {verbs.WINDOW} in flight: >= {target:.1f}x {anchor}",
            ratios, target, "x", note="not measured"))
    return goals


def unavailable(reason: str) -> list[Goal]:
    return [Goal(f"{mix} from a C client, {verbs.WINDOW} in flight: >= {target:.1f}x redis-server",
                 None, target, "x", note=reason) for mix, target in verbs.GOALS.items()]


def measure(settings: Settings, progress: Callable[[str], None]) -> tuple[list[Goal], list[str]]:
    """The section's goals and a note of the figures, or goals not available with the reason."""
    with tempfile.TemporaryDirectory(prefix="sockrace-verbs-") as directory:
        program = verbs.compile_client(Path(directory))
        if program is None:
            return unavailable("no C compiler"), []
        with verbs.redis_server() as redis, verbs.sockrace_server(settings.trees[0], "sockrace") as mine:
            if redis is None:
                return unavailable("redis-server is not installed"), []
            progress(f"verbs, {settings.runs} rounds against redis-server")
            requests = max(verbs.WINDOW, round(REQUESTS * settings.scale))
            try:
                figures = verbs.measure(program, [mine, redis], settings.runs, requests, list(verbs.GOALS))
            except verbs.BenchmarkError as exc:
                return unavailable(str(exc)), []
    rates = [f"{record['mix']} {record['server']} {record['req_s']:,.0f}"
             for record in verbs.summarize(figures, redis.name)]
    note = f"verbs, req/s (median of {settings.runs} rounds): {', '.join(rates)}"
    return goals_of(figures, redis.name), [note]
