"""What every command of the command line shares on the way out: exit codes, printing, one-line errors.

The exit codes are documented once, in EXIT_CODES, which every command's --help shows.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, TextIO

from sockrace.errors import OutputError as OutputError  # defined there, named here too
from sockrace.errors import UsageError as UsageError

if TYPE_CHECKING:  # every command imports this module: what it prints is imported when printed
    import asyncio

    from sockrace.check.result import HammerResult
    from sockrace.outcome import RunResult

EXIT_OK: Final = 0
EXIT_CHECK_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NETWORK: Final = 3
EXIT_OUTPUT: Final = 4
EXIT_SCENARIO: Final = 5
EXIT_INTERRUPTED: Final = 130
EXIT_BROKEN_PIPE: Final = 141  # 128 + SIGPIPE, what a shell reports for a C program cut off by `| head`

EXIT_CODES = f"""exit codes:
  {EXIT_OK}    success (check: no call crossed, none returned a wrong value, none was stuck)
  {EXIT_CHECK_FAILED}    --check: some request was not answered correctly (check: a call crossed, was wrong or
       was stuck; with --seeds a seed failed, with --replay the failure came back, with --shrink one
       was shrunk)
  {EXIT_USAGE}    bad command line (including an --html FILE that cannot be written, a scenario not found)
  {EXIT_NETWORK}    could not listen or connect (address in use, server not running, too many open files, ...)
  {EXIT_OUTPUT}    could not write the results (disk full, ...)
  {EXIT_SCENARIO}    check: the scenario failed (its code raised, SystemExit included, in its set-up, a call
       or its clean-up, or called os._exit() or stopped the event loop; or gave no (call, expect); or
       the run went past --deadline with the server still owing replies; or the watchdog ended a run
       5 s past --deadline)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C) before the run finished
  {EXIT_BROKEN_PIPE}  the reader of the output went away (e.g. `| head`); nothing more is printed
"""






def emit(text: str = "", out: TextIO | None = None, *, flush: bool = False) -> None:
    """print(), with a failed write turned into OutputError (a closed stdout too: print() would
    drop the text without a word)."""
    stream = sys.stdout if out is None else out
    if stream is None:
        raise OutputError("the standard output is closed")
    try:
        print(text, file=stream, flush=flush)
    except OSError as exc:
        raise OutputError(exc.strerror or str(exc)) from exc


def emit_lines(lines: Iterable[str], out: TextIO | None = None) -> None:
    for line in lines:
        emit(line, out)


def fail(message: str, code: int) -> int:
    with contextlib.suppress(OSError):  # stderr itself gone: the exit code is all that is left to say it
        print(f"sockrace: {message}", file=sys.stderr)
    return code


def print_results(results: Sequence[RunResult]) -> None:
    from sockrace import report

    emit(report.format_table(results))
    emit()
    emit_lines(report.sentence(result) for result in results)


def print_check_result(result: HammerResult) -> None:
    """A check run in its own words: the table, the sentence of counts, the values no call
    expects, a note on uncalibrated deadlines, then the story of its first failure."""
    from sockrace import check_report

    emit(check_report.format_table(result))
    emit()
    emit(check_report.sentence(result))
    emit_lines(check_report.wrong_lines(result))
    if (note := check_report.calibration_note(result)) is not None:
        emit(note)
    emit()
    emit(result.explain())


def print_check_timeline(result: HammerResult, out: TextIO) -> None:
    """The timeline of a check run, in the check's words (tasks and calls)."""
    from sockrace import timeline

    colour = timeline.colour_wanted(out)
    emit_lines(timeline.legend(words=timeline.CHECK_WORDS), out)
    emit(out=out)
    words = timeline.CHECK_WORDS
    emit_lines(timeline.format_timeline(result.run_result("check"), colour=colour, words=words), out)
    emit(out=out)


def print_timelines(results: Sequence[RunResult], out: TextIO) -> None:
    from sockrace import timeline

    colour = timeline.colour_wanted(out)
    emit_lines(timeline.legend(), out)
    for result in results:
        emit(out=out)
        emit_lines(timeline.format_timeline(result, colour=colour), out)
    emit(out=out)


class LoopErrors:
    """An event loop's exception handler for a run of the user's code: what asyncio reports outside
    any await (a task whose exception nobody retrieved, a callback that raised) is the scenario's,
    and is summed up in one line after the run instead of a traceback per error; `debug` shows each
    as asyncio would. An error `fatal` picks out is kept apart, in `fatal_error`, for the caller."""

    def __init__(self, debug: bool, fatal: Callable[[BaseException], bool] | None = None) -> None:
        self.debug = debug
        self.reported: list[dict[str, Any]] = []
        self._fatal = fatal
        self.fatal_error: BaseException | None = None  # the first reported error `fatal` picked out

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exception = context.get("exception")
        if self._fatal is not None and isinstance(exception, BaseException) and self._fatal(exception):
            if self.fatal_error is None:
                self.fatal_error = exception
            return
        self.reported.append(context)
        if self.debug:
            loop.default_exception_handler(context)

    def summary(self) -> str | None:
        """e.g. "asyncio reported 3 errors outside the calls (first: Task exception was never
        retrieved: ConnectionError: Connection closed by server.)"; None when there were none."""
        if not self.reported:
            return None
        first = self.reported[0]
        exception = first.get("exception")
        cause = f": {type(exception).__name__}: {exception}" if exception is not None else ""
        count = len(self.reported)
        hint = "" if self.debug else "; --debug shows them"
        return (f"asyncio reported {count} error{'s' if count != 1 else ''} of the scenario outside the "
                f"calls (first: {first.get('message', 'no message')}{cause}){hint}")
