"""Run a workload: N coroutines share one connection through a strategy; record every outcome."""

from __future__ import annotations

import asyncio
import time
from typing import Final

from sockrace.client import Strategy
from sockrace.connection import SharedConnection
from sockrace.events import EventKind, Recorder
from sockrace.outcome import Outcome, RunResult
from sockrace.workload import Plan, Step, Verdict, WorkloadConfig

# A run is stalled when no reply arrives and no request finishes for this long; whoever is still
# waiting then will never be answered, and their requests count as lost instead of hanging the run.
DEFAULT_STALL_TIMEOUT_S: Final = 1.0


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Lanes:
    """The coroutines of one run, one lane per row of the plan, and what each request came to.

    Each lane sends its requests one after another through the strategy; a reply is kept as it
    came, to be judged after the clock stops, and an exception becomes an ERROR outcome at once.
    """

    def __init__(self, strategy: Strategy, request_timeout: float | None) -> None:
        self.strategy = strategy
        self.recorder = strategy.recorder
        self.request_timeout = request_timeout
        self.timeout_error = "TimeoutError" if request_timeout is None else (
            f"TimeoutError: no reply within {request_timeout * 1000:g} ms"
        )
        self.errors: dict[tuple[int, int], Outcome] = {}
        self.replies: dict[tuple[int, int], bytes] = {}
        self.last_outcome_at = 0.0

    async def run(self, plan: Plan, stall_timeout: float) -> None:
        """Run every lane at once; stop waiting once nothing has moved for `stall_timeout` seconds."""
        pending = {asyncio.create_task(self._lane(row)) for row in plan.steps}
        try:
            while pending:
                progress = self._progress()
                _, pending = await asyncio.wait(pending, timeout=stall_timeout)
                if pending and progress == self._progress():
                    break  # stalled: what is still waiting will never be answered
        finally:
            for task in pending:
                task.cancel()
            if pending:  # a strategy ends a cancelled request at once; the bound is for one that does not
                await asyncio.wait(pending, timeout=stall_timeout)

    def _progress(self) -> tuple[int, int, int]:
        return len(self.errors), len(self.replies), self.strategy.connection.lines_received

    async def _lane(self, row: tuple[Step, ...]) -> None:
        roundtrip, recorder, timeout = self.strategy.roundtrip, self.recorder, self.request_timeout
        for step in row:
            if recorder is not None:
                recorder.mark(EventKind.START, step)
            try:
                if timeout is None:
                    reply = await roundtrip(step)
                else:
                    async with asyncio.timeout(timeout):
                        reply = await roundtrip(step)
            except Exception as exc:  # every failure is a finding to count, never a crash
                error = self.timeout_error if isinstance(exc, TimeoutError) else _describe(exc)
                if recorder is not None:
                    recorder.error(step, error)
                self.errors[step.coroutine, step.index] = Outcome(step, Verdict.ERROR, error=error)
            else:
                if recorder is not None:
                    recorder.reply(step, reply)
                self.replies[step.coroutine, step.index] = reply  # judged after the clock stops
            self.last_outcome_at = time.perf_counter()

    def outcome(self, plan: Plan, step: Step) -> Outcome:
        key = step.coroutine, step.index
        if key in self.replies:
            reply = self.replies[key]
            verdict, owner = plan.judge(step, reply)
            return Outcome(step, verdict, reply, owner)
        return self.errors.get(key) or Outcome(step, Verdict.LOST)


async def race(
    strategy: Strategy,
    plan: Plan,
    *,
    mode: str | None = None,
    scenario: str = "shared connection",
    stall_timeout: float = DEFAULT_STALL_TIMEOUT_S,
    request_timeout: float | None = None,
) -> RunResult:
    """Run every coroutine of `plan` through `strategy` at once and judge every reply.

    `request_timeout` (seconds) bounds each request with asyncio.timeout, as a caller would: a
    request that runs out of time is cancelled wherever it is and counts as an ERROR
    (TimeoutError), never as a wrong answer.

    Never raises for what happens on the wire: exceptions become ERROR outcomes, requests that a
    stall leaves unanswered become LOST outcomes, so the counts always sum to the requests planned.
    When the strategy was given a recorder, every request's start, write, read and reply (or
    error) is recorded too and the result carries the events.
    """
    lanes = _Lanes(strategy, request_timeout)
    started = time.perf_counter()
    await lanes.run(plan, stall_timeout)
    # Throughput counts the time spent answering, not the stall detector's wait at the end.
    elapsed = max(lanes.last_outcome_at, started) - started
    ordered = [lanes.outcome(plan, step) for row in plan.steps for step in row]
    recorder = strategy.recorder
    events = recorder.events(ordered) if recorder is not None else ()
    return RunResult(
        mode or strategy.name, scenario, plan, ordered, elapsed, events=events,
        dropped=strategy.dropped, reopened=strategy.connection.reopened, request_timeout_s=request_timeout,
    )


async def run_mode(
    host: str,
    port: int,
    strategy_class: type[Strategy],
    workload: Plan | WorkloadConfig,
    *,
    scenario: str = "shared connection",
    stall_timeout: float = DEFAULT_STALL_TIMEOUT_S,
    request_timeout: float | None = None,
    recorder: Recorder | None = None,
) -> RunResult:
    """Open one connection, race the workload over it with `strategy_class`, close it.

    `workload` is a ready Plan, or a WorkloadConfig whose plan is built only once the connection
    is open: a huge workload aimed at a server that cannot be reached fails at once, having built
    nothing. Raises OSError when the server cannot be reached.
    """
    connection = await SharedConnection.open(host, port)
    strategy = strategy_class(connection, recorder)
    try:
        plan = workload if isinstance(workload, Plan) else Plan.build(workload)
        return await race(strategy, plan, scenario=scenario, stall_timeout=stall_timeout,
                          request_timeout=request_timeout)
    finally:
        await strategy.aclose()
        await connection.close()
