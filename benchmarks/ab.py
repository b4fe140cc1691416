"""A/B: the same rows on this tree and on another git ref's `src/`, interleaved round by round, in one run.

`python benchmarks/run.py --against REF` exports REF's `src/` (`git archive REF src | tar -x`) into a
temporary directory. Every row that runs sockrace code (a sockrace client or server) is measured on
both trees, the two runs of a row back to back in each round and in the other order in the next, each
in processes whose PYTHONPATH names one tree. Rows made only of reference code are left out: they run
the same code on both sides. A ratio is this tree's speed over the other's (above 1: this tree is
faster), the median of the round-by-round ratios.
"""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from benchmarks.commands import Timing
from benchmarks.end_to_end import time_end_to_end
from benchmarks.memory import measure_idle_memory
from benchmarks.output import aligned
from benchmarks.results import END_TO_END, IDLE_MEMORY, machine_description, selected_groups
from benchmarks.rounds import Measurement, measure_variants, round_ratios
from benchmarks.variants import REPO_ROOT, THIS_TREE, Settings, Tree, Variant
from sockrace import loop as loops

# The acceptance line of a change that must not slow anything down: no row below this ratio.
THRESHOLD: Final = 0.95


class ExportError(Exception):
    """The ref cannot be exported: unknown, or without a sockrace package under src/."""


def _run(*command: str) -> subprocess.CompletedProcess[bytes]:
    """Run a program to completion. Raises ExportError when it cannot be started."""
    try:
        return subprocess.run(command, capture_output=True, check=False)
    except OSError as exc:
        raise ExportError(f"cannot run {command[0]}: {exc.strerror or exc}") from None


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return _run("git", "-C", str(REPO_ROOT), *args)


def _check(done: subprocess.CompletedProcess[bytes], ref: str) -> None:
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise ExportError(f"cannot export src/ of {ref}: {reason[-1] if reason else 'no reason given'}")


def export_tree(ref: str, into: Path) -> Tree:
    """Extract `ref`'s `src/` under `into` (`git archive`, then `tar -x`); the tree is named by the
    commit's short hash.

    Raises ExportError with a one-line reason.
    """
    found = _git("rev-parse", "--verify", "--quiet", "--short", f"{ref}^{{commit}}")
    if found.returncode != 0:
        raise ExportError(f"{ref!r} is not a commit of this repository")
    commit = found.stdout.decode().strip()
    archive = into / "src.tar"
    _check(_git("archive", "-o", str(archive), commit, "src"), ref)
    _check(_run("tar", "-x", "-f", str(archive), "-C", str(into)), ref)
    archive.unlink()
    src = into / "src"
    if not (src / "sockrace" / "__init__.py").is_file():
        raise ExportError(f"{ref} has no src/sockrace package")
    return Tree(commit, src)


def describe_this_tree() -> str:
    """This tree's commit, and whether src/ differs from it."""
    head = _git("rev-parse", "--short", "HEAD").stdout.decode().strip()
    changed = _git("status", "--porcelain", "--", "src").stdout.strip()
    return f"{head}{' + uncommitted changes in src/' if changed else ''}"


def _row(measured: str, unit: str, this: float | None, other: float | None, ratios: list[float],
         error: str | None, cpu_ratios: Sequence[float] = ()) -> dict[str, Any]:
    return {"measured": measured, "unit": unit, "this": this, "other": other,
            "ratio": statistics.median(ratios) if ratios else None, "rounds": ratios,
            "cpu_ratio": statistics.median(cpu_ratios) if cpu_ratios else None, "error": error}


def _cpu_per_request(m: Measurement) -> list[float]:
    """Client plus server CPU per request (µs), round by round; [] when either was not measured."""
    if not m.ok or not len(m.rates) == len(m.client_cpu_us) == len(m.server_cpu_us):
        return []
    return [c + s for c, s in zip(m.client_cpu_us, m.server_cpu_us, strict=True)]


def _paired_timings(name: str, sides: tuple[Timing, ...], unit: str = "s") -> dict[str, Any]:
    this, other = sides
    ratios = [o / t for t, o in zip(this.seconds, other.seconds, strict=False) if t > 0]
    error = this.error or other.error
    return _row(name, unit, None if error else this.median_s, None if error else other.median_s,
                [] if error else ratios, error)


def time_both_end_to_end(settings: Settings, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """`sockrace compare`, the counter demo and `sockrace counter` on both trees, alternating."""
    this, other = time_end_to_end(settings.trees, settings.loop, settings.runs, progress)
    return [_paired_timings(" ".join(timing.command), (timing, other[name])) for name, timing in this.items()]


def measure_memory(settings: Settings) -> dict[str, Any]:
    this, other = (measure_idle_memory("sockrace", tree) for tree in settings.trees)
    error = this.error or other.error
    kib = [figure.bytes_per_connection / 1024 for figure in (this, other)]
    return _row("sockrace server, memory per idle connection", "KiB", None if error else kib[0],
                None if error else kib[1], [] if error or not kib[0] else [kib[1] / kib[0]], error)


def _variant_row(this: Measurement, other: Measurement, measured: str) -> dict[str, Any]:
    error = this.error or other.error or ("wrong replies" if this.wrong or other.wrong else None)
    results = {this.variant: this, other.variant: other}
    cpu = [o / t for t, o in zip(_cpu_per_request(this), _cpu_per_request(other), strict=False) if t > 0]
    return _row(measured, "req/s", this.median_rate if this.ok else None,
                other.median_rate if other.ok else None, round_ratios(results, this.variant, other.variant),
                error, cpu)


def run_ab(
    settings: Settings, other: Tree, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Measure the selected rows that run sockrace on this tree and on `other`; the A/B document."""
    loops.loop_factory(settings.loop)  # fail before measuring anything
    settings = dataclasses.replace(settings, trees=(settings.trees[0], other))
    rows = [v for g in selected_groups(settings) for v in g.variants if v.runs_sockrace]
    rows = list(dict.fromkeys(rows))
    paired: list[Variant] = [v.on(tree) for v in rows for tree in (THIS_TREE, other.name)]
    results = measure_variants(paired, settings, progress)
    document_rows = [_variant_row(results[v.on(THIS_TREE)], results[v.on(other.name)], v.key) for v in rows]
    if settings.end_to_end and settings.selects(END_TO_END):
        document_rows += time_both_end_to_end(settings, progress)
    if settings.memory and settings.selects(IDLE_MEMORY):
        progress("memory per idle connection, sockrace server on each tree")
        document_rows.append(measure_memory(settings))
    return {
        "machine": machine_description(settings.loop),
        "settings": {"runs": settings.runs, "scale": settings.scale, "inproc": settings.inproc,
                     "loop": settings.loop},
        "this": describe_this_tree(),
        "other": other.name,
        "threshold": THRESHOLD,
        "rows": document_rows,
        "below": [r["measured"] for r in document_rows if r["ratio"] is not None and r["ratio"] < THRESHOLD],
        "failed": [r["measured"] for r in document_rows if r["error"]],
    }


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} req/s" if unit == "req/s" else f"{value:.2f} {unit}"


def format_ab(document: dict[str, Any]) -> str:
    other = document["other"]
    header = ("measured", f"this tree ({document['this']})", other, "ratio", "rounds", "CPU/req ratio")
    table: list[tuple[str, ...]] = [header]
    for row in document["rows"]:
        rounds = row["rounds"]
        spread = f"{min(rounds):.2f} to {max(rounds):.2f}" if len(rounds) > 1 else ""
        ratio = "FAILED" if row["error"] or row["ratio"] is None else f"{row['ratio']:.2f}x"
        cpu = "" if row.get("cpu_ratio") is None else f"{row['cpu_ratio']:.2f}x"
        table.append((row["measured"], _figure(row["this"], row["unit"]), _figure(row["other"], row["unit"]),
                      ratio, spread, cpu))
    out = aligned(table, left=1)
    out += ["", *(f"{row['measured']}: {row['error']}" for row in document["rows"] if row["error"])]
    below = document["below"]
    out += [
        f"ratio: this tree's speed over {other}'s (for seconds and KiB, {other}'s figure over this tree's), "
        f"the median of {document['settings']['runs']} round-by-round ratios; above 1: this tree does better",
        f"CPU/req ratio: {other}'s client and server CPU per request over this tree's, the median of the "
        "rounds' ratios (above 1: this tree spends less); on a busy machine it moves less than req/s",
        f"rows below {document['threshold']:.2f}x: {', '.join(below) if below else 'none'}",
    ]
    return "\n".join(out)
