"""A whole benchmark run: measure what the settings select, and gather it into the results document.

The document (`python benchmarks/run.py --json`, benchmarks/results.json) holds the machine, the
settings, every group's rows, the end-to-end timings, the idle memory, the goals and the notes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from benchmarks import check_speed, verbs_goals
from benchmarks.commands import Timing
from benchmarks.counter_demo import counter_notes
from benchmarks.end_to_end import time_end_to_end
from benchmarks.goals import (
    LOCKSTEP_GOAL_ROUNDS,
    LOCKSTEP_GOAL_SCALE,
    Goal,
    evaluate_goals,
    machine_notes,
    server_cpu_notes,
)
from benchmarks.memory import IDLE_CONNECTIONS, MemoryFigure, measure_idle_memory
from benchmarks.rounds import Measurement, measure_variants, median_ratio
from benchmarks.variants import REPO_ROOT, Group, Settings, Variant, build_groups
from sockrace import loop as loops

DEFAULT_OUTPUT: Final = REPO_ROOT / "benchmarks" / "results.json"
END_TO_END: Final = "end to end"
IDLE_MEMORY: Final = "idle memory"
LOCKSTEP_GROUP: Final = "lock-step server"


def machine_description(loop: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    try:
        uvloop_version: str | None = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        uvloop_version = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "loop": loop,
        "uvloop": uvloop_version,
        "sockrace": importlib.metadata.version("sockrace"),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def section_names(loop: str) -> list[str]:
    """What `--only` chooses from: the groups, then the end-to-end timings and the idle memory."""
    return ([g.name for g in build_groups(loop, uvloop_installed())]
            + [END_TO_END, IDLE_MEMORY, check_speed.SECTION, verbs_goals.SECTION])


def selected_groups(settings: Settings) -> list[Group]:
    return [g for g in build_groups(settings.loop, uvloop_installed()) if settings.selects(g.name)]


def run_suite(settings: Settings, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Measure everything `settings` selects and return the results document (see `--json`).

    Raises LoopUnavailable when `settings.loop` is uvloop and uvloop is not installed.
    """
    loops.loop_factory(settings.loop)  # fail before measuring anything
    groups = selected_groups(settings)
    variants = list(dict.fromkeys(v for g in groups for v in g.variants))
    results = measure_variants(variants, settings, progress)

    timings: dict[str, Timing] = {}
    if settings.end_to_end and settings.selects(END_TO_END):
        timings = time_end_to_end(settings.trees[:1], settings.loop, settings.runs, progress,
                                  seed_program=True)[0]
    memory: dict[str, MemoryFigure] = {}
    if settings.memory and settings.selects(IDLE_MEMORY):
        for kind in ("readline", "sockrace"):
            progress(f"memory of {IDLE_CONNECTIONS} idle connections, {kind} server")
            memory[kind] = measure_idle_memory(kind, settings.trees[0])

    lockstep = None
    if any(g.name == LOCKSTEP_GROUP for g in groups):
        lockstep = measure_lockstep_rounds(groups, settings, progress)
    goals = evaluate_goals(results, timings, memory, settings.loop, lockstep)
    notes = server_cpu_notes(results, settings.loop) + machine_notes(results) + counter_notes(timings)
    for section in (check_speed, verbs_goals):
        if settings.selects(section.SECTION):
            section_goals, section_notes = section.measure(settings, progress)
            goals += section_goals
            notes += section_notes
    return {
        "machine": machine_description(settings.loop),
        "settings": {"runs": settings.runs, "scale": settings.scale, "inproc": settings.inproc,
                     "loop": settings.loop},
        "groups": [group_document(g, results, settings) for g in groups],
        "commands": [timing_document(t) for t in timings.values()],
        "memory": [
            {"server": m.server, "connections": IDLE_CONNECTIONS,
             "kib_per_connection": round(m.bytes_per_connection / 1024, 2), "error": m.error}
            for m in memory.values()
        ],
        "goals": [goal_document(g) for g in goals],
        "notes": notes,
        "failed": [m.variant.key for m in results.values() if not m.ok],
    }


def measure_lockstep_rounds(groups: list[Group], settings: Settings,
                            progress: Callable[[str], None]) -> dict[Variant, Measurement]:
    """The lock-step group again, in many short interleaved rounds: the lock-step goal's figures."""
    lockstep_group = next(g for g in groups if g.name == LOCKSTEP_GROUP)
    short = dataclasses.replace(settings, runs=max(LOCKSTEP_GOAL_ROUNDS, settings.runs),
                                scale=settings.scale * LOCKSTEP_GOAL_SCALE)
    return measure_variants(lockstep_group.variants, short,
                            lambda text: progress(f"lock-step goal, {text}"))


def goal_document(goal: Goal) -> dict[str, Any]:
    return {"goal": goal.text, "value": None if goal.value is None else round(goal.value, 3),
            "per_round": [round(r, 3) for r in goal.per_round], "target": goal.target, "unit": goal.unit,
            "at_most": goal.at_most, "status": goal.status, "note": goal.note}


def timing_document(timing: Timing) -> dict[str, Any]:
    return {"name": timing.name, "command": " ".join(timing.command), "median_s": round(timing.median_s, 3),
            "runs_s": [round(s, 3) for s in timing.seconds], "error": timing.error}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def group_document(group: Group, results: dict[Variant, Measurement], settings: Settings) -> dict[str, Any]:
    rows = []
    for variant in group.variants:
        m = results[variant]
        ratio = median_ratio(results, variant, group.reference)
        rows.append({
            "client": variant.client,
            "server": variant.server,
            "concurrency": variant.concurrency,
            "loop": variant.loop,
            "requests_per_run": settings.requests(variant),
            "req_per_s": round(m.median_rate, 1) if m.ok else None,
            "runs_req_per_s": [round(r, 1) for r in m.rates],
            "p50_ms": round(m.percentile_ms(0.50), 4) if m.ok else None,
            "p99_ms": round(m.percentile_ms(0.99), 4) if m.ok else None,
            "client_cpu_us_per_req": _rounded(m.median_client_us) if m.ok else None,
            "server_cpu_us_per_req": _rounded(m.median_server_us) if m.ok else None,
            "ratio": None if ratio is None else round(ratio, 3),
            "reference": variant == group.reference,
            "wrong_replies": m.wrong,
            "error": m.error or (f"{m.wrong} wrong replies" if m.wrong else None),
        })
    return {"name": group.name, "reference": group.reference.key, "rows": rows}
