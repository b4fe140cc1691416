"""A check run in the check's own words, for a person (table, one sentence) or a tool (the JSON
documents of `check --json`, with or without --seeds, --replay, --shrink, and of `replay FILE --json`).

The counts, each defined once (docs/json.md says the same), add up to the run's calls:

    correct     returned the value it expects
    crossed     returned the value another call expects: a reply that went to the wrong caller
    wrong       returned a value no call of the run expects
    stuck       still waiting when nothing was left to wait for (the server owed nothing, no byte
                moved, no call finished for the stuck bound)
    errors      raised an exception of its own (not one of our cuts)
    timeouts    cut by its deadline, at its drawn moment
    cancelled   cut by task.cancel(), at its drawn moment
    unfinished  never made (its task was stuck on an earlier call), or still running when the run's
                --deadline ended it

crossed, wrong and stuck fail a check; the others are what a client may answer to being cut short.

Pure formatting: no asyncio, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from sockrace.check.decisions import Interrupt
from sockrace.check.oracle import CallVerdict, Tally, quote
from sockrace.check.result import HammerResult

if TYPE_CHECKING:  # results the documents read: their modules run things, this one only formats
    from sockrace.check.explore import Replay, SeedRun, Sweep
    from sockrace.check.record import RunRecord
    from sockrace.check.runner import CheckRun
    from sockrace.check.shrink import Shrunk

COUNTS: Final = ("correct", "crossed", "wrong", "stuck", "errors", "timeouts", "cancelled", "unfinished")
COLUMNS: Final = ("client", "tasks", "calls", *COUNTS, "calls/s")
# Values no call expects, listed in full in JSON and the text: enough to see the pattern.
MAX_WRONG_SHOWN: Final = 10
MAX_WRONG_IN_TEXT: Final = 3


_NAMES: Final = {
    CallVerdict.CORRECT: "correct", CallVerdict.CROSSED: "crossed", CallVerdict.WRONG: "wrong",
    CallVerdict.STUCK: "stuck", CallVerdict.ERROR: "errors", CallVerdict.TIMEOUT: "timeouts",
    CallVerdict.CANCELLED: "cancelled", CallVerdict.UNFINISHED: "unfinished",
}


def counts(run: HammerResult | Tally) -> dict[str, int]:
    """Every count of a run (or of its tally), by its name in COUNTS."""
    verdicts = (run.tally if isinstance(run, HammerResult) else run).verdicts
    return {name: verdicts[call_verdict] for call_verdict, name in _NAMES.items()}


def verdict(run: HammerResult | Tally) -> str:
    """A run in one word: its first kind of failure (crossed, then wrong, then stuck), or "ok"."""
    counted = counts(run)
    return next((name for name in ("crossed", "wrong", "stuck") if counted[name]), "ok")


def format_table(result: HammerResult) -> str:
    """One row of the counts under COLUMNS: names left-aligned, figures right-aligned."""
    decisions = result.decisions
    row = (result.label, str(decisions.tasks), str(result.calls), *map(str, counts(result).values()),
           f"{result.calls_per_s:,.0f}")
    widths = [max(len(a), len(b)) for a, b in zip(COLUMNS, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(COLUMNS), "  ".join("-" * w for w in widths), line(row)])


def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def cut_range(result: HammerResult, interrupt: Interrupt) -> tuple[float, float] | None:
    """The lowest and highest moment (ms after the call started) of the cuts of one kind drawn."""
    moments = [d.at_ms for lane in result.decisions.lanes for d in lane
               if d.interrupt is interrupt and d.at_ms is not None]
    return (min(moments), max(moments)) if moments else None


def _cut_words(result: HammerResult, interrupt: Interrupt) -> str:
    drawn = cut_range(result, interrupt)
    if drawn is None:
        return ""
    lo, hi = drawn
    kind = "deadlines" if interrupt is Interrupt.DEADLINE else "cancels"
    return (f" ({kind} drawn at {_ms(lo)})" if lo == hi
            else f" ({kind} drawn {_ms(lo)} to {_ms(hi)} after the call started)")


def first_error(result: HammerResult) -> str | None:
    """The first error raised ("Type: message", one line), by end time."""
    errors = [o for o in result.outcomes if o.verdict is CallVerdict.ERROR]
    if not errors:
        return None
    return min(errors, key=lambda o: (o.record.ended_ns or 0, o.index)).record.error


def sentence(result: HammerResult) -> str:
    """The run's counts in one sentence, what fails a check first."""
    calls = result.calls
    if result.crossed:
        seconds = result.seconds_to_first_crossed()
        when = "" if seconds is None else f", the first {_seconds(seconds)} into the run"
        head = f"{result.crossed} of {calls} calls returned another call's value{when}"
    elif result.wrong:
        head = f"{result.wrong} of {calls} calls returned a value no call expects"
    elif result.stuck:
        head = f"{result.stuck} of {calls} calls were stuck"
    else:
        head = (f"no call crossed, none returned a wrong value, none was stuck: {result.correct} of {calls} "
                "correct")
    parts = [head]
    if result.crossed or result.wrong or result.stuck:
        parts.append(f"{result.correct} correct")
        if result.crossed and result.wrong:
            parts.append(f"{result.wrong} returned a value no call expects")
        if result.stuck and (result.crossed or result.wrong):
            parts.append(f"{result.stuck} stuck")
    if result.errors:
        parts.append(f"{_plural(result.errors, 'raised an error', 'raised errors')} (first: "
                     f"{first_error(result)})")
    if result.timeouts:
        cut = _plural(result.timeouts, "cut by its deadline", "cut by their deadlines")
        parts.append(f"{cut}{_cut_words(result, Interrupt.DEADLINE)}")
    if result.cancelled:
        parts.append(f"{result.cancelled} cancelled by task.cancel(){_cut_words(result, Interrupt.CANCEL)}")
    if result.unfinished:
        parts.append(f"{result.unfinished} unfinished")
    return f"{result.label}: " + "; ".join(parts) + "."


def calibration_note(result: HammerResult) -> str | None:
    """Said when "auto" cuts were drawn before any call had returned a latency to draw them from."""
    if not result.uncalibrated:
        return None
    return (f"auto deadlines: {_plural(result.uncalibrated, 'cut was', 'cuts were')} drawn before any call "
            "had returned, at 1 ms (no latency to draw from: every call so far had raised or been cut)")


def wrong_values(result: HammerResult, limit: int = MAX_WRONG_SHOWN) -> list[dict[str, object]]:
    """The first `limit` calls that returned a value no call expects: call, what it expects, what
    it returned (both quoted: repr(), cut to a sentence's length)."""
    wrong = sorted((o for o in result.outcomes if o.verdict is CallVerdict.WRONG),
                   key=lambda o: (o.record.ended_ns or 0, o.index))
    return [{"call": o.index, "expects": quote(o.expected), "value": quote(o.value)} for o in wrong[:limit]]


def wrong_lines(result: HammerResult) -> list[str]:
    """The text's lines for the values no call expects (the first few), e.g.
    "wrong: call 12 (expects 'v12') returned 'ERR unknown'"."""
    shown = wrong_values(result, MAX_WRONG_IN_TEXT)
    lines = [f"wrong: call {w['call']} (expects {w['expects']}) returned {w['value']}" for w in shown]
    if result.wrong > len(shown):
        lines.append(f"wrong: {result.wrong - len(shown)} more (--json lists {MAX_WRONG_SHOWN})")
    return lines


def _range(pair: tuple[float, float] | None) -> list[float] | None:
    return None if pair is None else [round(pair[0], 3), round(pair[1], 3)]


def run_fields(result: HammerResult) -> dict[str, Any]:
    """The judged run, as every check document has it (a single run, a sweep's seed, a shrink)."""
    first = result.seconds_to_first_crossed()
    return {
        "ok": result.ok,
        "verdict": verdict(result),
        "counts": counts(result),
        "error_types": dict(result.error_types),
        "first_error": first_error(result),
        "wrong_values": wrong_values(result),
        "cuts": {"deadline_ms": _range(cut_range(result, Interrupt.DEADLINE)),
                 "cancel_ms": _range(cut_range(result, Interrupt.CANCEL)),
                 "uncalibrated": result.uncalibrated},
        "seconds_to_first_crossed": None if first is None else round(first, 6),
        "stuck_after_s": result.stalled_s,
        "deadline_hit": result.deadline_hit,
        "elapsed_s": round(result.elapsed_s, 6),
        "calls_per_s": round(result.calls_per_s, 1),
        "explanation": result.explain(),
    }


def seed_record(seed: int, tally: Tally, seconds: float) -> dict[str, Any]:
    """One seed of a sweep: its verdict, counts, and the seconds its run took as a whole (the
    proxy, the scenario's set-up and clean-up included)."""
    return {"seed": seed, "verdict": verdict(tally), "counts": counts(tally), "seconds": round(seconds, 6)}


# ------------------------------------------------------------------ the documents of `check --json`
# Built here, from the library's results and the words the command line made (a replay command is
# the command line's to spell): docs/json.md lists their keys, tests/test_docs.py checks them.


def _timeout_field(timeout: object) -> object:
    return list(timeout) if isinstance(timeout, tuple) else timeout


def check_document(run: CheckRun, *, schedule: Mapping[str, object] | None, replay: str) -> dict[str, Any]:
    """`check --json`: the configuration, the judged run, the schedule and the replay command."""
    config = run.config
    return {
        "scenario": config.scenario,
        "upstream": list(config.upstream),
        "proxy": list(run.proxy_address),
        "seed": config.seed,
        "tasks": config.tasks,
        "calls": config.calls,
        "timeout_ms": _timeout_field(config.timeout_ms),
        "stall_timeout_s": None if config.stall_s == "auto" else config.stall_s,
        "faults": config.faults.describe(),
        **run_fields(run.result),
        "schedule": None if schedule is None else dict(schedule),
        "replay": replay,
    }


def sweep_document(found: Sweep[SeedRun], *, scenario: str, upstream: tuple[str, int], seeds: str,
                   keep_going: bool, replay: str | None) -> dict[str, Any]:
    """`check --seeds LO-HI --json`: every seed's record, the failing ones, the first failure in full."""
    first = found.first
    return {
        "scenario": scenario,
        "upstream": list(upstream),
        "seeds": seeds,
        "all": keep_going,
        "tried": len(found.tried),
        "failing_seeds": list(found.failing_seeds),
        "failing": [{"seed": run.seed, "verdict": verdict(run.result)} for run in found.failures],
        "failure_rate": found.failure_rate,
        "elapsed_s": round(found.elapsed_s, 3),
        "runs": [seed_record(r.seed, r.tally, r.seconds) for r in found.records],
        "first_failure": None if first is None else {
            "seed": first.seed,
            "failure": first.failure.describe() if first.failure else None,
            **run_fields(first.result),
        },
        "replay": replay,
    }


def replay_document(again: Replay, *, scenario: str, upstream: tuple[str, int],
                    replay: str) -> dict[str, Any]:
    """`check --replay SEED --json`: how often the failure came back."""
    return {
        "scenario": scenario,
        "upstream": list(upstream),
        "seed": again.setting.seed,
        "repeat": again.repeat,
        "failed": again.failed,
        "same": again.same,
        "failure": again.reference.describe() if again.reference else None,
        "exact": again.exact,
        "followed": [round(share, 3) for share in again.followed],
        "elapsed_s": round(again.elapsed_s, 3),
        "replay": replay,
    }


def shrink_document(shrunk: Shrunk, *, minimal_arguments: list[str], replay: str) -> dict[str, Any]:
    """The `shrink` object of `check --shrink --json`: the minimal run, how it was found, its story."""
    failure = shrunk.failure
    return {
        "original": shrunk.original.describe(),
        "minimal": shrunk.minimal.describe(),
        "minimal_arguments": minimal_arguments,
        "steps": list(shrunk.steps),
        "runs": shrunk.runs,
        "elapsed_s": round(shrunk.elapsed_s, 3),
        "budget_spent": shrunk.budget_spent,
        "failure": failure.describe() if failure else None,
        "story": shrunk.story(),
        "result": run_fields(shrunk.result),
        "replay": replay,
    }


def record_replay_document(record: RunRecord, again: Replay, *, file: str,
                           upstream: tuple[str, int]) -> dict[str, Any]:
    """`replay FILE --json`: a run record brought back, how often, how far its tape was followed."""
    followed = again.followed
    return {
        "file": file,
        "scenario": record.scenario,
        "upstream": list(upstream),
        "seed": record.setting.seed,
        "failure": None if record.failure is None else record.failure.describe(),
        "repeat": again.repeat,
        "came_back": again.same,
        "failed": again.failed,
        "followed": [round(share, 3) for share in followed],
        "followed_median": None if not followed else round(sorted(followed)[len(followed) // 2], 3),
        "misaligned_at": again.misaligned_at,
        "story": record.story,
        "elapsed_s": round(again.elapsed_s, 3),
    }
