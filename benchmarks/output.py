"""The results document as a terminal table, or as the Markdown tables of benchmarks/README.md."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

HEADER: Final = ("group", "measured", "req/s", "p50 ms", "p99 ms", "client CPU", "server CPU", "ratio")


def who(row: dict[str, Any]) -> str:
    text = f"{row['client']} c={row['concurrency']} -> {row['server']} server"
    return text + (" (uvloop)" if row["loop"] == "uvloop" else "")


def _cpu(us_per_request: float | None) -> str:
    return "-" if us_per_request is None else f"{us_per_request:.1f} us"


def _table_rows(document: dict[str, Any]) -> Iterator[tuple[str, ...]]:
    for group in document["groups"]:
        for row in group["rows"]:
            if row["error"]:
                figures: tuple[str, ...] = ("-", "-", "-", "-", "-", "FAILED")
            else:
                ratio = "1.00 (ref)" if row["reference"] else f"{row['ratio']:.2f}"
                figures = (f"{row['req_per_s']:,.0f}", f"{row['p50_ms']:.3f}", f"{row['p99_ms']:.3f}",
                           _cpu(row["client_cpu_us_per_req"]), _cpu(row["server_cpu_us_per_req"]), ratio)
            yield (group["name"], who(row), *figures)
    for command in document["commands"]:
        shown = "skipped" if command["error"] else f"{command['median_s']:.2f} s"
        yield ("end to end", command["command"], shown, "", "", "", "", "")
    for figure in document["memory"]:
        shown = figure["error"] or f"{figure['kib_per_connection']:.1f} KiB/conn"
        yield ("idle memory", f"{figure['server']} server, {figure['connections']} connections", shown,
               "", "", "", "", "")


def aligned(rows: list[tuple[str, ...]], left: int) -> list[str]:
    """`rows` (the first is the header) in columns, the first `left` columns left-aligned, a rule below
    the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(row: tuple[str, ...]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in pairs]
        return "  ".join(cells).rstrip()

    return [line(rows[0]), "  ".join("-" * w for w in widths), *(line(r) for r in rows[1:])]


def goal_value(goal: dict[str, Any]) -> str:
    if goal["value"] is None:
        return f"- ({goal['note']})" if goal.get("note") else "-"
    unit = goal["unit"]
    shown = f"{goal['value']:.2f}x" if unit == "x" else f"{goal['value']:.2f} {unit}"
    rounds = goal.get("per_round") or []
    if len(rounds) > 1:
        low, high = (f"{min(rounds):.2f}", f"{max(rounds):.2f}")
        shown += f" (rounds: {low} to {high})" if unit == "x" else f" (rounds: {low} to {high} {unit})"
    return shown


def format_table(document: dict[str, Any]) -> str:
    out = [*aligned([HEADER, *_table_rows(document)], left=2), ""]
    out += [f"{who(row)}: {row['error']}"
            for group in document["groups"] for row in group["rows"] if row["error"]]
    out += [f"{c['command']}: {c['error']}" for c in document["commands"] if c["error"]]
    out += [""] if out[-1] else []
    out += [f"[{goal['status']:^13}] {goal['goal']}: {goal_value(goal)}" for goal in document["goals"]]
    out += ["", *document["notes"]] if document.get("notes") else []
    return "\n".join(out)


def format_markdown(document: dict[str, Any]) -> str:
    """The tables of benchmarks/README.md, from a results document."""
    m = document["machine"]
    s = document["settings"]
    out = [
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['os']}, {m['python']}, "
        f"event loop {m['loop']}{' (uvloop ' + m['uvloop'] + ' installed)' if m['uvloop'] else ''}; "
        f"median of {s['runs']} runs, servers in {'the same' if s['inproc'] else 'their own'} process.",
        "",
        "| group | measured | req/s | p50 ms | p99 ms | client CPU/req | server CPU/req | ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    out += [f"| {' | '.join(cell.replace('|', '/') for cell in row)} |" for row in _table_rows(document)]
    out += ["", "| goal | measured | status |", "|---|---:|---|"]
    out += [f"| {g['goal']} | {goal_value(g)} | {g['status']} |" for g in document["goals"]]
    out += ["", *(f"Note: {note}." for note in document["notes"])] if document.get("notes") else []
    return "\n".join(out)
