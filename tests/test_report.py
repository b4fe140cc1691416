"""report.py: the table, the sentences, the trace and the JSON documents made from run results."""

from __future__ import annotations

import pytest

from sockrace import report
from sockrace.outcome import Outcome, RunResult
from sockrace.workload import Plan, Verdict, WorkloadConfig


def _result(verdicts: list[Verdict], *, dropped: int = 0, reopened: int = 0, mode: str = "m") -> RunResult:
    plan = Plan.build(WorkloadConfig(concurrency=len(verdicts), requests=1))
    outcomes = [
        Outcome(row[0], v, error="TimeoutError: no reply within 10 ms" if v is Verdict.ERROR else None)
        for row, v in zip(plan.steps, verdicts, strict=True)
    ]
    return RunResult(mode, "timeouts", plan, outcomes, 0.5, dropped=dropped, reopened=reopened,
                     request_timeout_s=0.01)


def test_sentence_tells_what_became_of_the_late_replies() -> None:
    result = _result([Verdict.CORRECT, Verdict.ERROR], dropped=1, reopened=2)
    assert report.sentence(result) == (
        "m (timeouts): only 1 of 2 correct; 1 request failed with TimeoutError: no reply within 10 ms. "
        "1 late reply dropped, handed to nobody; the connection was closed and reopened 2 times."
    )
    perfect = _result([Verdict.CORRECT], dropped=3)
    assert report.sentence(perfect).endswith("sent the request. 3 late replies dropped, handed to nobody.")
    assert report.sentence(_result([Verdict.CORRECT])).endswith("sent the request.")


def test_table_and_json_carry_dropped_reopened_and_the_timeout() -> None:
    result = _result([Verdict.CORRECT, Verdict.ERROR], dropped=4, reopened=1)
    header, _, row = report.format_table([result]).splitlines()
    assert header.split()[8] == "dropped"
    assert row.split()[8] == "4"
    entry = report.result_dict(result)
    assert (entry["dropped"], entry["reopened"], entry["request_timeout_ms"]) == (4, 1, 10.0)


def test_compare_document_has_descriptions_workloads_and_the_ratio() -> None:
    first, second = _result([Verdict.CORRECT], mode="locked"), _result([Verdict.CORRECT], mode="multiplexed")
    document = report.compare_document(
        [first, second], descriptions={"timeouts": "d"}, throughput_ratio=6.789
    )
    assert document["throughput_ratio"] == {"mode": "multiplexed", "baseline": "locked", "ratio": 6.79}
    (scenario,) = document["scenarios"]
    assert scenario["description"] == "d"
    assert scenario["workload"]["slow_every"] == 0
    assert [m["mode"] for m in scenario["modes"]] == [m["mode"] for m in document["modes"]]
    assert report.compare_document([first])["throughput_ratio"] is None


def test_sentence_counts_in_good_english() -> None:
    one = _result([Verdict.CROSSED, Verdict.CORRUPTED, Verdict.CORRECT])
    assert report.sentence(one) == (
        "m (timeouts): only 1 of 3 correct; 1 reply went to a coroutine that had not asked for it; "
        "1 reply answered a request nobody sent (torn or garbled lines)."
    )
    two = _result([Verdict.CROSSED, Verdict.CROSSED, Verdict.CORRUPTED, Verdict.CORRUPTED])
    expected = "2 replies went to a coroutine that had not asked for them; 2 replies answered"
    assert expected in report.sentence(two)


def _answered(*replies: bytes | None) -> RunResult:
    """A run whose requests received these lines (None: the request failed), judged as a run is."""
    plan = Plan.build(WorkloadConfig(concurrency=len(replies), requests=1))
    outcomes = []
    for row, reply in zip(plan.steps, replies, strict=True):
        if reply is None:
            outcomes.append(Outcome(row[0], Verdict.ERROR, error="ConnectionBrokenError: the server closed"))
        else:
            verdict, owner = plan.judge(row[0], reply)
            outcomes.append(Outcome(row[0], verdict, reply, owner))
    return RunResult("locked", "shared connection", plan, outcomes, 0.5)


def test_a_peer_that_speaks_something_else_is_named_with_its_first_reply() -> None:
    result = _answered(None, b"HTTP/1.1 400 Bad Request\r\n", b"Content-Type: text/html\r\n")
    assert report.sentence(result).endswith(
        "; 1 request failed with ConnectionBrokenError: the server closed. "
        "The peer does not look like a sockrace server: first reply 'HTTP/1.1 400 Bad Request'."
    )


def test_a_long_foreign_reply_is_cut() -> None:
    result = _answered(b"<" + b"x" * 500 + b">\n")
    hint = report.sentence(result).partition("first reply ")[2]
    assert hint == repr("<" + "x" * 56 + "...") + "."


@pytest.mark.parametrize(
    "replies",
    [
        (b"OK torn\n", b"HTTP/1.1 200 OK\r\n"),  # one sockrace reply, torn: a race, not a stranger
        (b"ERR BADLINE bad request line\n",),
        (None, None),  # nothing received: nothing to judge the peer by
    ],
)
def test_no_hint_while_any_reply_reads_as_sockrace(replies: tuple[bytes | None, ...]) -> None:
    assert "does not look like" not in report.sentence(_answered(*replies))


def test_a_trace_line_names_whose_reply_a_crossed_request_got() -> None:
    plan = Plan.build(WorkloadConfig(concurrency=2, requests=1))
    (mine,), (theirs,) = plan.steps
    crossed = Outcome(mine, Verdict.CROSSED, f"OK {theirs.payload}\n".encode(), theirs)
    assert report.trace_line(crossed) == (
        f"c0.0\tsent {mine.line.decode().rstrip()!r}\tgot 'OK {theirs.payload}'\tcrossed (answers c1.0)"
    )
