"""Turn run results into what a person reads (table, sentences, trace) or a tool reads (JSON)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sockrace.outcome import CounterResult, IncrRace, Outcome, RunResult
from sockrace.protocol import ProtocolError, parse_reply
from sockrace.workload import Verdict

# A reply quoted in a sentence is cut here: enough to recognise "HTTP/1.1 400 Bad Request".
MAX_QUOTED_REPLY = 60

COLUMNS = (
    "scenario", "mode", "requests", "correct", "crossed", "corrupted", "errors", "lost", "dropped", "req/s",
)


def _row(result: RunResult) -> tuple[str, ...]:
    c = result.count
    return (
        result.scenario,
        result.mode,
        str(result.requests),
        str(c(Verdict.CORRECT)),
        str(c(Verdict.CROSSED)),
        str(c(Verdict.CORRUPTED)),
        str(c(Verdict.ERROR)),
        str(c(Verdict.LOST)),
        str(result.dropped),
        f"{result.req_per_s:,.0f}",
    )


def table_rows(results: Sequence[RunResult]) -> list[tuple[str, ...]]:
    """The cells of `format_table` below its header (`COLUMNS`), as text, one row per result."""
    return [_row(r) for r in results]


def format_table(results: Sequence[RunResult]) -> str:
    rows = [COLUMNS, *(_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(row: tuple[str, ...]) -> str:
        # Names left-aligned, figures right-aligned, as in any table of numbers.
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in pairs]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


def _it_them(n: int) -> str:
    return "it" if n == 1 else "them"


def _first_error(result: RunResult, kind: str) -> str:
    for outcome in result.outcomes:
        if outcome.error and outcome.error.partition(":")[0] == kind:
            return outcome.error
    return kind


def sentence(result: RunResult) -> str:
    """One plain sentence saying what happened in this run."""
    if not result.protocol_replies:
        return _call_sentence(result)
    n = result.requests
    head = f"{result.mode} ({result.scenario}):"
    if result.perfect:
        return f"{head} all {n} replies reached the coroutine that sent the request." + _aftermath(result)
    c = result.count
    parts = []
    if c(Verdict.CROSSED):
        went = _plural(c(Verdict.CROSSED), "reply")
        parts.append(f"{went} went to a coroutine that had not asked for {_it_them(c(Verdict.CROSSED))}")
    if c(Verdict.CORRUPTED):
        answered = _plural(c(Verdict.CORRUPTED), "reply")
        parts.append(f"{answered} answered a request nobody sent (torn or garbled lines)")
    for kind, count in result.error_types.most_common():
        parts.append(f"{_plural(count, 'request')} failed with {_first_error(result, kind)}")
    if c(Verdict.LOST):
        parts.append(f"{c(Verdict.LOST)} were never answered")
    summary = f"{head} only {c(Verdict.CORRECT)} of {n} correct; " + "; ".join(parts) + "."
    return summary + _stranger_hint(result) + _aftermath(result)


def _call_sentence(result: RunResult) -> str:
    """The sentence of a run of calls through somebody else's client: its values are no protocol
    lines, so nothing is said of torn lines or of what the peer looks like."""
    n = result.requests
    head = f"{result.mode} ({result.scenario}):"
    if result.perfect:
        return f"{head} all {n} calls returned their own value."
    c = result.count
    parts = []
    if c(Verdict.CROSSED):
        parts.append(f"{_plural(c(Verdict.CROSSED), 'call')} returned the value of another call")
    if c(Verdict.CORRUPTED):
        parts.append(f"{_plural(c(Verdict.CORRUPTED), 'call')} returned a value no call expects")
    for kind, count in result.error_types.most_common():
        parts.append(f"{_plural(count, 'call')} failed with {_first_error(result, kind)}")
    if c(Verdict.LOST):
        parts.append(f"{c(Verdict.LOST)} never finished")
    return f"{head} only {c(Verdict.CORRECT)} of {n} correct; " + "; ".join(parts) + "."


def _stranger_hint(result: RunResult) -> str:
    """When not one reply of the run reads as a sockrace reply: the peer is some other service.

    Torn or crossed replies from a sockrace server still parse (OK ... or ERR ...), so a run that
    only went wrong gets no hint; the search stops at the first reply that parses.
    """
    if result.count(Verdict.CORRECT) or result.count(Verdict.CROSSED):
        return ""
    received = [o.received for o in result.outcomes if o.received is not None]
    if not received:
        return ""
    for line in received:
        try:
            parse_reply(line)
        except ProtocolError:
            continue
        return ""
    first = received[0].decode("utf-8", "replace").rstrip("\r\n")
    if len(first) > MAX_QUOTED_REPLY:
        first = first[: MAX_QUOTED_REPLY - 3] + "..."
    return f" The peer does not look like a sockrace server: first reply {first!r}."


def _aftermath(result: RunResult) -> str:
    """What the strategy did with the replies nobody waited for any more."""
    notes = []
    if result.dropped:
        replies = "1 late reply" if result.dropped == 1 else f"{result.dropped} late replies"
        notes.append(f"{replies} dropped, handed to nobody")
    if result.reopened:
        notes.append(f"the connection was closed and reopened {_plural(result.reopened, 'time')}")
    text = "; ".join(notes)
    return f" {text[:1].upper()}{text[1:]}." if notes else ""


def trace_line(outcome: Outcome) -> str:
    """One line per request, free of timings, so that two runs can be compared with `diff`."""
    step = outcome.step
    sent = step.line.decode().rstrip("\n")
    got = "-" if outcome.received is None else outcome.received.decode("utf-8", "replace").rstrip("\r\n")
    verdict = outcome.verdict.value
    if outcome.verdict is Verdict.CROSSED and outcome.owner is not None:
        verdict += f" (answers c{outcome.owner.coroutine}.{outcome.owner.index})"
    elif outcome.verdict is Verdict.ERROR:
        verdict += f" ({outcome.error})"
    return f"c{step.coroutine}.{step.index}\tsent {sent!r}\tgot {got!r}\t{verdict}"


def format_trace(result: RunResult) -> Iterable[str]:
    return (trace_line(o) for o in result.outcomes)


def result_dict(result: RunResult) -> dict[str, Any]:
    c = result.count
    return {
        "mode": result.mode,
        "scenario": result.scenario,
        "requests": result.requests,
        "correct": c(Verdict.CORRECT),
        "crossed": c(Verdict.CROSSED),
        "corrupted": c(Verdict.CORRUPTED),
        "errors": c(Verdict.ERROR),
        "lost": c(Verdict.LOST),
        "dropped": result.dropped,
        "reopened": result.reopened,
        "request_timeout_ms": None if result.request_timeout_s is None else result.request_timeout_s * 1000,
        "req_per_s": round(result.req_per_s, 1),
        "elapsed_s": round(result.elapsed_s, 6),
        "error_types": dict(result.error_types),
        "summary": sentence(result),
    }


def workload_dict(result: RunResult) -> dict[str, Any]:
    config = result.plan.config
    return {
        "seed": config.seed,
        "concurrency": config.concurrency,
        "requests_per_coroutine": config.requests,
        "max_yields": config.max_yields,
    }


def compare_document(
    results: Sequence[RunResult],
    *,
    descriptions: Mapping[str, str] | None = None,
    throughput_ratio: float | None = None,
) -> dict[str, Any]:
    """The `--json` document of `compare`: `modes` holds the first scenario, one object per mode;
    `scenarios` holds every scenario with its description, its own workload and `modes` list;
    `throughput_ratio` is multiplexed req/s over locked req/s in the first scenario, or null."""
    scenarios: dict[str, list[dict[str, Any]]] = {}
    workloads: dict[str, dict[str, Any]] = {}
    for result in results:
        scenarios.setdefault(result.scenario, []).append(result_dict(result))
        config = result.plan.config
        workloads.setdefault(result.scenario, {
            **workload_dict(result), "split_writes": config.split_writes,
            "slow_every": config.slow_every, "slow_ms": config.slow_ms,
        })
    first = next(iter(scenarios.values()), [])
    described = descriptions or {}
    return {
        "workload": workload_dict(results[0]) if results else {},
        "modes": first,
        "scenarios": [
            {"name": name, "description": described.get(name, ""), "workload": workloads[name],
             "modes": modes}
            for name, modes in scenarios.items()
        ],
        "throughput_ratio": None if throughput_ratio is None else {
            "mode": "multiplexed", "baseline": "locked", "ratio": round(throughput_ratio, 2),
        },
    }


def client_document(result: RunResult) -> dict[str, Any]:
    return {"workload": workload_dict(result), "modes": [result_dict(result)]}


def format_counter(result: CounterResult) -> Iterable[str]:
    n = result.coroutines
    yield f"shared memory: {n} coroutines each read the value, yield, add 1, yield, write it back"
    yield f"  without a lock:    {result.without_lock:>7}   (expected {n})"
    yield f"  with asyncio.Lock: {result.with_lock:>7}"
    race = result.unsafe_incr
    yield (f"server INCR: {race.clients} clients x {race.increments} INCRs of one key, "
           f"one connection each (expected {race.expected})")
    yield f"  --unsafe-incr:     {race.final:>7}   ({_plural(race.lost, 'update')} lost)"
    yield f"  atomic INCR:       {result.atomic_incr.final:>7}"


def counter_document(result: CounterResult) -> dict[str, Any]:
    def incr(race: IncrRace) -> dict[str, Any]:
        return {"clients": race.clients, "increments": race.increments, "expected": race.expected,
                "final": race.final, "lost": race.lost}

    return {
        "shared_memory": {"coroutines": result.coroutines, "expected": result.coroutines,
                          "without_lock": result.without_lock, "with_lock": result.with_lock},
        "server_incr": {"unsafe": incr(result.unsafe_incr), "atomic": incr(result.atomic_incr)},
    }
