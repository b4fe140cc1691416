"""The `compare` command: argparse only. Read its arguments once into a CompareCommand (the
library's CompareConfig, and what to print and write), run every mode side by side (sockrace.compare),
print, return an exit code (cli/output.py, EXIT_CODES)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sockrace.cli.options import (
    Commands,
    add_command,
    add_latency_options,
    add_loop_option,
    add_report_options,
    add_timeline_option,
    add_timeout_option,
    add_workload_options,
    read_workload,
)
from sockrace.cli.output import (
    EXIT_CHECK_FAILED,
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_USAGE,
    emit,
    emit_lines,
    fail,
    print_results,
    print_timelines,
)
from sockrace.client import STRATEGIES

if TYPE_CHECKING:
    from sockrace.compare import CompareConfig, CompareResult


def add_compare_command(commands: Commands) -> None:
    parser = add_command(
        commands, "compare", "start an embedded server and run every mode side by side (the main job)",
        "Start a server on a free port, run every mode on the same seeded workload over one real TCP\n"
        "connection each, and print a side-by-side table.",
    )
    add_workload_options(parser)
    parser.add_argument("--modes", default=",".join(STRATEGIES),
                        help=f"comma-separated modes to run (default: {','.join(STRATEGIES)})")
    add_latency_options(parser)
    add_loop_option(parser)
    add_timeout_option(parser, "; for the scenarios without a timeout of their own")
    add_report_options(parser, "exit 1 if a mode that a scenario does not show failing gave a wrong "
                        "answer, lost a request, or failed one for another reason than a timeout or "
                        "(guarded) a collision it reports")
    add_timeline_option(parser)
    parser.add_argument("--html", metavar="FILE",
                        help="also write a self-contained HTML report (swimlanes, crossed replies, "
                        "throughput) to FILE")


@dataclass(frozen=True, slots=True)
class CompareCommand:
    """`sockrace compare` as its command line asked for it."""

    config: CompareConfig
    loop: str
    html: str | None = None
    json: bool = False
    timeline: bool = False
    check: bool = False


def read(args: argparse.Namespace) -> CompareCommand:
    """The comparison that `args` asks for; all that follows reads this, not `args`."""
    from sockrace.compare import CompareConfig
    from sockrace.server import ServerConfig

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    config = CompareConfig(
        workload=read_workload(args),
        server=ServerConfig(port=0, delay_ms=args.delay, jitter_ms=args.jitter, seed=args.seed),
        modes=modes,
        stall_timeout=args.stall_timeout,
        request_timeout_ms=args.timeout,
        record=args.timeline or bool(args.html),
    )
    return CompareCommand(config, args.loop, html=args.html, json=args.json, timeline=args.timeline,
                          check=args.check)


def run_compare_command(args: argparse.Namespace) -> int:
    return run(read(args))


def run(command: CompareCommand) -> int:
    from sockrace import html_report
    from sockrace import loop as loops
    from sockrace.compare import compare

    if command.html and not Path(command.html).parent.is_dir():
        # Checked before the run, so that a typo does not cost a whole run first.
        return fail(f"cannot write --html {command.html}: no such directory", EXIT_USAGE)
    try:
        outcome = loops.run(compare(command.config), command.loop)
    except ValueError as exc:
        return fail(f"--modes: {exc}", EXIT_USAGE)
    except OSError as exc:
        return fail(f"cannot start the embedded server: {exc.strerror or exc}", EXIT_NETWORK)
    if command.html:
        try:
            Path(command.html).write_text(html_report.render(outcome.results), encoding="utf-8")
        except OSError as exc:
            return fail(f"cannot write --html {command.html}: {exc.strerror or exc}", EXIT_USAGE)
        emit(f"sockrace: wrote the HTML report to {command.html}", sys.stderr)
    if command.json:
        _print_json(command, outcome)
    else:
        _print_text(command, outcome)
    problems = outcome.problems()
    if command.check and problems:
        emit_lines((f"sockrace: check failed: {problem}" for problem in problems), sys.stderr)
        return EXIT_CHECK_FAILED
    return EXIT_OK


def _print_json(command: CompareCommand, outcome: CompareResult) -> None:
    from sockrace import report

    if command.timeline:  # to stderr, so that stdout stays one JSON document
        print_timelines(outcome.results, sys.stderr)
    descriptions = {s.name: s.description for s in command.config.scenarios}
    ratio = outcome.throughput_ratio("multiplexed", "locked")
    emit(json.dumps(report.compare_document(outcome.results, descriptions=descriptions,
                                             throughput_ratio=ratio), indent=2))


def _print_text(command: CompareCommand, outcome: CompareResult) -> None:
    host, port = outcome.address
    workload = command.config.workload
    emit(f"sockrace compare: {workload.concurrency} coroutines x {workload.requests} requests, "
         f"seed {workload.seed}, one connection per run to {host}:{port}\n")
    if command.timeline:
        print_timelines(outcome.results, sys.stdout)
    print_results(outcome.results)
    ran = {r.scenario for r in outcome.results}
    emit()
    emit_lines(f"scenario {scenario.name}: {scenario.description}"
               for scenario in command.config.scenarios if scenario.name in ran)
    ratio = outcome.throughput_ratio("multiplexed", "locked")
    if ratio is not None:
        first = outcome.results[0]
        emit(f"\nthroughput, multiplexed / locked ({first.scenario}, {first.plan.config.concurrency} "
             f"coroutines on one connection): {ratio:.1f}x")
