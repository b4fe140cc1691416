"""Run the sockrace benchmark suite: `python benchmarks/run.py` (see `--help`).

Exit codes: 0 every variant was measured (whether or not each goal is met: goals are reported,
not enforced, because figures vary between machines); 1 some variant failed or got wrong replies;
2 bad command line (including `--loop uvloop` without uvloop installed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Run as a script, this file's directory is on sys.path, not the repository: add the repository so
# that `benchmarks` is importable as a package (the tests import it the same way).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import suite
from sockrace import loop as loops


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Measure sockrace against minimal reference servers and clients in the same run, "
        "print the figures, the ratios and each goal, and write them to a results file.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=_positive_int, default=suite.Settings().runs,
                        help="rounds of measured runs, every variant once per round; req/s is the median "
                             "run, a ratio the median of its round-by-round ratios (default: %(default)s)")
    parser.add_argument("--scale", type=_positive_float, default=1.0,
                        help="multiply every run's request count by this (default: %(default)s)")
    parser.add_argument("--inproc", action="store_true",
                        help="run each server on the client's event loop instead of its own process")
    parser.add_argument("--loop", choices=loops.LOOPS, default=loops.DEFAULT_LOOP,
                        help="event loop for the servers and clients (default: %(default)s)")
    parser.add_argument("--only", default="",
                        help="comma-separated words: run only the groups whose name contains one")
    parser.add_argument("--no-end-to-end", action="store_true",
                        help="skip timing the `sockrace compare` and counter commands")
    parser.add_argument("--no-memory", action="store_true", help="skip the idle-connection memory figure")
    parser.add_argument("--json", action="store_true", help="print the results document instead of a table")
    parser.add_argument("--output", type=Path, default=suite.DEFAULT_OUTPUT,
                        help="write the results document here (default: benchmarks/results.json)")
    parser.add_argument("--no-output", action="store_true", help="do not write a results file")
    parser.add_argument("--markdown", nargs="?", type=Path, const=suite.DEFAULT_OUTPUT, metavar="RESULTS",
                        help="measure nothing: print the README tables from a results file "
                        "(default: benchmarks/results.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.markdown is not None:
        try:
            document = json.loads(args.markdown.read_text())
        except (OSError, ValueError) as exc:
            print(f"run.py: cannot read results from {args.markdown}: {exc}", file=sys.stderr)
            return 2
        print(suite.format_markdown(document))
        return 0
    settings = suite.Settings(
        runs=args.runs, scale=args.scale, inproc=args.inproc, loop=args.loop,
        groups=tuple(w.strip() for w in args.only.split(",") if w.strip()),
        end_to_end=not args.no_end_to_end, memory=not args.no_memory,
    )
    try:
        document = suite.run_suite(settings, progress=lambda text: print(f"... {text}", file=sys.stderr))
    except loops.LoopUnavailable as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
    if not args.no_output:
        args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2) if args.json else suite.format_table(document))
    return 1 if document["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
