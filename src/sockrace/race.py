"""Run a workload: N coroutines share one connection through a strategy; record every outcome."""

from __future__ import annotations

import asyncio
import time
from typing import Final

from sockrace.client import SharedConnection, Strategy
from sockrace.events import EventKind, Recorder
from sockrace.outcome import Outcome, RunResult
from sockrace.workload import Plan, Step, Verdict

# A run is stalled when no reply arrives and no request finishes for this long; whoever is still
# waiting then will never be answered, and their requests count as lost instead of hanging the run.
DEFAULT_STALL_TIMEOUT_S: Final = 1.0


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _outcome(
    plan: Plan, step: Step, errors: dict[tuple[int, int], Outcome], replies: dict[tuple[int, int], bytes]
) -> Outcome:
    key = step.coroutine, step.index
    if key in replies:
        reply = replies[key]
        verdict, owner = plan.judge(step, reply)
        return Outcome(step, verdict, reply, owner)
    return errors.get(key) or Outcome(step, Verdict.LOST)


async def race(
    strategy: Strategy,
    plan: Plan,
    *,
    mode: str | None = None,
    scenario: str = "shared connection",
    stall_timeout: float = DEFAULT_STALL_TIMEOUT_S,
    request_timeout: float | None = None,
    recorder: Recorder | None = None,
) -> RunResult:
    """Run every coroutine of `plan` through `strategy` at once and judge every reply.

    `request_timeout` (seconds) bounds each request with asyncio.timeout, as a caller would: a
    request that runs out of time is cancelled wherever it is and counts as an ERROR
    (TimeoutError), never as a wrong answer.

    Never raises for what happens on the wire: exceptions become ERROR outcomes, requests that a
    stall leaves unanswered become LOST outcomes, so the counts always sum to the requests planned.
    With a `recorder`, every request's start, write, read and reply (or error) is recorded too and
    the result carries the events; without one, the run does nothing extra but check for None.
    """
    strategy.recorder = recorder
    outcomes: dict[tuple[int, int], Outcome] = {}  # requests that raised
    replies: dict[tuple[int, int], bytes] = {}  # requests that received a line
    last_outcome_at = 0.0
    timeout_error = "TimeoutError" if request_timeout is None else (
        f"TimeoutError: no reply within {request_timeout * 1000:g} ms"
    )

    async def coroutine(row: tuple[Step, ...]) -> None:
        nonlocal last_outcome_at
        for step in row:
            if recorder is not None:
                recorder.mark(EventKind.START, step)
            try:
                if request_timeout is None:
                    reply = await strategy.roundtrip(step)
                else:
                    async with asyncio.timeout(request_timeout):
                        reply = await strategy.roundtrip(step)
            except TimeoutError:
                if recorder is not None:
                    recorder.error(step, timeout_error)
                outcomes[step.coroutine, step.index] = Outcome(step, Verdict.ERROR, error=timeout_error)
                last_outcome_at = time.perf_counter()
                continue
            except Exception as exc:  # every failure is a finding to count, never a crash
                if recorder is not None:
                    recorder.error(step, _describe(exc))
                outcomes[step.coroutine, step.index] = Outcome(step, Verdict.ERROR, error=_describe(exc))
                last_outcome_at = time.perf_counter()
                continue
            if recorder is not None:
                recorder.reply(step, reply)
            replies[step.coroutine, step.index] = reply  # judged after the clock stops
            last_outcome_at = time.perf_counter()

    started = time.perf_counter()
    pending = {asyncio.create_task(coroutine(row)) for row in plan.steps}
    try:
        while pending:
            progress = len(outcomes), len(replies), strategy.connection.lines_received
            _, pending = await asyncio.wait(pending, timeout=stall_timeout)
            if pending and progress == (len(outcomes), len(replies), strategy.connection.lines_received):
                break  # stalled: what is still waiting will never be answered
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    # Throughput counts the time spent answering, not the stall detector's wait at the end.
    elapsed = max(last_outcome_at, started) - started
    ordered = [_outcome(plan, step, outcomes, replies) for row in plan.steps for step in row]
    events = recorder.events(ordered) if recorder is not None else ()
    return RunResult(
        mode or strategy.name, scenario, plan, ordered, elapsed, events=events,
        dropped=strategy.dropped, reopened=strategy.connection.reopened, request_timeout_s=request_timeout,
    )


async def run_mode(
    host: str,
    port: int,
    strategy_class: type[Strategy],
    plan: Plan,
    *,
    scenario: str = "shared connection",
    stall_timeout: float = DEFAULT_STALL_TIMEOUT_S,
    request_timeout: float | None = None,
    recorder: Recorder | None = None,
) -> RunResult:
    """Open one connection, race `plan` over it with `strategy_class`, close it.

    Raises OSError when the server cannot be reached.
    """
    connection = await SharedConnection.open(host, port)
    strategy = strategy_class(connection)
    try:
        return await race(strategy, plan, scenario=scenario, stall_timeout=stall_timeout,
                          request_timeout=request_timeout, recorder=recorder)
    finally:
        await strategy.aclose()
        await connection.close()
