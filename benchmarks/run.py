"""Run the sockrace benchmark: `python benchmarks/run.py` (see `--help` and benchmarks/README.md).

Examples:
  python benchmarks/run.py                     every group, the end-to-end timings, the idle memory,
                                               how fast the check finds a bug and the verbs against
                                               redis-server (2 to 2.5 minutes on 2 cores)
  python benchmarks/run.py --only "check speed"  hammer, the proxy, a sweep, a shrink, redis-py 4.5.3
  python benchmarks/run.py --only verbs        a C pipelining client against sockrace and redis-server
  python benchmarks/run.py --only strategies   locked, locked-cancel-safe, pipelined and multiplexed
                                               at 100 coroutines, each divided by `locked`
  python benchmarks/run.py --against e952412   A/B: every row that runs sockrace, on this tree and on
                                               that commit's src/, interleaved round by round
  python benchmarks/run.py --markdown          the tables of benchmarks/README.md, from results.json

Exit codes: 0 every variant was measured (whether or not each goal is met: goals are reported,
not enforced, because figures vary between machines; likewise the A/B threshold); 1 some variant
failed or got wrong replies; 2 bad command line (a bad --against ref, `--loop uvloop` without uvloop).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

# Run as a script, this file's directory is on sys.path, not the repository: add the repository so
# that `benchmarks` is importable as a package (the tests import it the same way).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import ab
from benchmarks.arguments import positive_float, positive_int
from benchmarks.output import format_markdown, format_table
from benchmarks.results import DEFAULT_OUTPUT, run_suite, section_names
from benchmarks.variants import Settings
from sockrace import loop as loops


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Measure sockrace against minimal reference servers and clients in the same run, "
        "print the figures, the ratios and each goal, and write them to a results file.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=positive_int, default=Settings().runs,
                        help="rounds of measured runs, every variant once per round; req/s is the median "
                             "run, a ratio the median of its round-by-round ratios (default: %(default)s)")
    parser.add_argument("--scale", type=positive_float, default=1.0,
                        help="multiply every run's request count by this (default: %(default)s)")
    parser.add_argument("--inproc", action="store_true",
                        help="run each server on the client's event loop instead of its own process")
    parser.add_argument("--loop", choices=loops.LOOPS, default=loops.DEFAULT_LOOP,
                        help="event loop for the servers and clients (default: %(default)s)")
    parser.add_argument("--only", default="",
                        help="comma-separated words: run only the groups whose name contains one "
                             "('end to end', 'idle memory', 'check speed' and 'verbs' count as groups)")
    parser.add_argument("--against", metavar="REF",
                        help="A/B: measure every selected row that runs sockrace on this tree and on the "
                             "src/ of git ref REF, interleaved; print both and their ratio (writes no file)")
    parser.add_argument("--no-end-to-end", action="store_true",
                        help="skip timing the `sockrace compare` and counter commands")
    parser.add_argument("--no-memory", action="store_true", help="skip the idle-connection memory figure")
    parser.add_argument("--json", action="store_true", help="print the results document instead of a table")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="write the results document here (default: benchmarks/results.json)")
    parser.add_argument("--no-output", action="store_true", help="do not write a results file")
    parser.add_argument("--markdown", nargs="?", type=Path, const=DEFAULT_OUTPUT, metavar="RESULTS",
                        help="measure nothing: print the tables of benchmarks/README.md from a results "
                        "file (default: benchmarks/results.json)")
    return parser


def _progress(text: str) -> None:
    print(f"... {text}", file=sys.stderr)


def _print_markdown(path: Path) -> int:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"run.py: cannot read results from {path}: {exc}", file=sys.stderr)
        return 2
    try:
        print(format_markdown(document))
    except (KeyError, TypeError, AttributeError) as exc:
        print(f"run.py: {path} is not a results document of run.py ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return 2
    return 0


def _run_ab(ref: str, settings: Settings, as_json: bool) -> dict[str, Any] | None:
    """The A/B document, or None (the reason printed) when `ref` cannot be exported."""
    with tempfile.TemporaryDirectory(prefix="sockrace-ab-") as directory:
        try:
            other = ab.export_tree(ref, Path(directory))
        except ab.ExportError as exc:
            print(f"run.py: --against: {exc}", file=sys.stderr)
            return None
        document = ab.run_ab(settings, other, _progress)
    print(json.dumps(document, indent=2) if as_json else ab.format_ab(document))
    return document


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.markdown is not None:
        return _print_markdown(args.markdown)
    settings = Settings(
        runs=args.runs, scale=args.scale, inproc=args.inproc, loop=args.loop,
        sections=tuple(w.strip() for w in args.only.split(",") if w.strip()),
        end_to_end=not args.no_end_to_end, memory=not args.no_memory,
    )
    names = section_names(settings.loop)
    if not any(settings.selects(name) for name in names):
        print(f"run.py: --only {args.only!r} selects nothing; choose words from: {', '.join(names)}",
              file=sys.stderr)
        return 2
    if args.against is None and not args.no_output and not args.output.parent.is_dir():
        print(f"run.py: cannot write results to {args.output}: no such directory", file=sys.stderr)
        return 2
    try:
        if args.against is not None:
            document = _run_ab(args.against, settings, args.json)
            return 2 if document is None else (1 if document["failed"] else 0)
        document = run_suite(settings, progress=_progress)
    except loops.LoopUnavailable as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(document, indent=2) if args.json else format_table(document))
    if not args.no_output:
        try:
            args.output.write_text(json.dumps(document, indent=2) + "\n")
        except OSError as exc:
            print(f"run.py: cannot write results to {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 1 if document["failed"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        # The reader left early (`| head`): stop quietly, as a shell pipeline expects.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
