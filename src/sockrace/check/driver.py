"""A check whose scenario runs in a child process, a *driver*, spoken to as docs/driver.md says.

    run = await run_driver_check(config, driver_command(python="/usr/bin/python3.8"))

Everything that judges stays here: the FaultProxy, the seeded decisions, the stuck watch (hammer's
StallWatch, with the proxy as the wire), the oracle and the result (hammer.judged). The driver loads
the scenario, makes the calls it is told with the cuts it is told, and says how each ended; its
messages become CallRecords. With "auto" deadlines the first call of every task runs first, without
cuts, and the other calls' moments are drawn from those latencies (decisions.Moments) before they
run. A driver that exits, writes what is not a protocol message, or misses its time ends the check
with ScenarioError (HammerError for a call that would end the program), in one line with the last
lines of its standard error; a driver still running when the check ends is killed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import shlex
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sockrace.check.decisions import (
    MAX_CALLS,
    CallDecision,
    Decisions,
    Interrupt,
    Moments,
    Timeout,
    check_timeout,
    draw,
)
from sockrace.check.faults import FaultRecord
from sockrace.check.hammer import CANCEL_GRACE_S, Ending, StallWatch, Wire, ended_records, judged
from sockrace.check.oracle import CallRecord, End
from sockrace.check.proxy import CONNECT_TIMEOUT_S, FaultProxy
from sockrace.check.result import HammerResult
from sockrace.check.runner import CLEANUP_MIN_S, CheckConfig, CheckRun, probe
from sockrace.check.scenario import Address
from sockrace.errors import DriverNotStarted, HammerError, ScenarioError

PROTOCOL: Final = 1
# The lines of a driver's standard error a failure quotes, each cut to a readable length.
STDERR_LINES: Final = 5
STDERR_LINE_CHARS: Final = 200
# A driver answers `stop` once its calls have unwound (it grants them CANCEL_GRACE_S): this is the
# margin for the answer to arrive before the driver is taken for hung.
STOP_SLACK_S: Final = 2.0
# A driver gets this long to exit once its input is closed, and is then killed.
EXIT_GRACE_S: Final = 2.0
# One message may carry every expected value of a run (up to MAX_CALLS of them).
MAX_MESSAGE_BYTES: Final = 256 * 1024 * 1024
_OUTCOMES: Final = {"returned": End.RETURNED, "raised": End.RAISED, "deadline": End.DEADLINE,
                    "cancelled": End.CANCELLED, "stopped": End.UNFINISHED}
# The backends whose calls sockrace cannot cut: a thread cannot be cancelled.
UNCUTTABLE_BACKENDS: Final = frozenset({"threads"})
_CUTS: Final = {Interrupt.NONE: "none", Interrupt.DEADLINE: "deadline", Interrupt.CANCEL: "cancel"}


@dataclass(frozen=True, slots=True)
class Foreign:
    """A value the driver could only describe (docs/driver.md, Values): equal when described alike."""

    type_name: str
    shown: str

    def __repr__(self) -> str:
        return self.shown


def decode(value: Any) -> object:
    """A value as the driver encoded it, back in Python: arrays as tuples, {"$bytes"} as bytes."""
    if isinstance(value, list):
        return tuple(decode(v) for v in value)
    if isinstance(value, dict):
        if set(value) == {"$bytes"} and isinstance(value["$bytes"], str):
            with contextlib.suppress(binascii.Error, ValueError):
                return base64.b64decode(value["$bytes"], validate=True)
        if set(value) == {"$repr", "$type"}:
            return Foreign(str(value["$type"]), str(value["$repr"]))
        return {k: decode(v) for k, v in value.items()}
    return value


class DriverTraceback(Exception):
    """The traceback a driver sent with `failed`: what --debug shows (the cause of the ScenarioError)."""


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class DriverProcess:
    """A running driver: requests out, messages in, the tail of its standard error kept."""

    def __init__(self, command: Sequence[str], process: asyncio.subprocess.Process) -> None:
        self.command = tuple(command)
        self._process = process
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._stderr_task = asyncio.get_running_loop().create_task(self._read_stderr())
        # How a failure names it: its script (python_driver.py, driver.js), else its command line.
        script = Path(self.command[-1])
        shown = shlex.join(self.command)[:80]
        self.name = script.name if len(self.command) > 1 and script.is_file() else shown
        self.backend: str | None = None  # the way it runs a scenario (hello's first backend)

    @classmethod
    async def start(cls, command: Sequence[str]) -> DriverProcess:
        try:
            process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, limit=MAX_MESSAGE_BYTES)
        except OSError as exc:
            raise DriverNotStarted(
                f"driver {shlex.join(command)} cannot start: {exc.strerror or exc}") from exc
        return cls(command, process)

    async def _read_stderr(self) -> None:
        stream = self._process.stderr
        assert stream is not None
        with contextlib.suppress(ValueError, OSError):  # a line beyond the limit: the tail is lost
            async for line in stream:
                text = " ".join(line.decode("utf-8", "replace").split())
                if text:
                    self._stderr.append(text[:STDERR_LINE_CHARS])

    def failure(self, what: str, error: type[Exception] = ScenarioError) -> Exception:
        """`error` saying in one line that the driver `what`, with the last lines of its stderr."""
        tail = " | ".join(self._stderr)
        return error(f"driver {self.name} {what}" + (f"; its stderr ended: {tail}" if tail else ""))

    async def send(self, message: dict[str, Any]) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
            await stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise await self._ended("exited", exc) from exc

    async def receive(self, ends_at: float | None, step: str) -> dict[str, Any]:
        """The next message; raises ScenarioError when the driver exits, garbles or misses `ends_at`
        (loop time), or says it `failed`."""
        stdout = self._process.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout_at(ends_at):
                line = await stdout.readline()
        except TimeoutError:
            raise self.failure(f"did not answer within its time ({step})") from None
        except ValueError as exc:  # beyond MAX_MESSAGE_BYTES
            raise self.failure(f"wrote a line longer than {MAX_MESSAGE_BYTES} bytes ({step})") from exc
        if not line:
            raise await self._ended(f"exited ({step})")
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            shown = line.decode("utf-8", "replace").strip()
            raise self.failure(f"wrote what is not a protocol message ({step}): {shown[:80]!r}")
        if message["op"] == "failed":
            error = _mapping(message.get("error"))
            what = f"{error.get('type', 'Error')}: {error.get('message', '')}".strip(": ")
            where = message.get("where", step)
            traceback = message.get("traceback")
            cause = DriverTraceback(traceback) if isinstance(traceback, str) and traceback else None
            raise ScenarioError(f"driver {self.name} failed in its {where}: {what}") from cause
        return message

    async def _ended(self, what: str, cause: BaseException | None = None) -> Exception:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_GRACE_S):
                await self._process.wait()
                await self._stderr_task
        code = self._process.returncode
        return self.failure(what if code is None else f"{what} with code {code}")

    async def close(self) -> None:
        """Close its input (a driver exits then) and wait for it; kill it if it does not exit."""
        stdin = self._process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        try:
            async with asyncio.timeout(EXIT_GRACE_S):
                await self._process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
        finally:
            if self._process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
        self._stderr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._stderr_task

    def kill(self) -> None:
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()


class _GuestEnded(Exception):
    """A call raised what would end a program (the driver said `ends_program`)."""


class DriverRun:
    """The calls of one run, made by a driver: requests out, its messages turned into CallRecords."""

    def __init__(self, driver: DriverProcess, decisions: Decisions, wire: Wire | None,
                 first_round_ran: Callable[[list[float]], None] | None = None) -> None:
        self._driver = driver
        self._decisions = decisions
        self._wire = wire
        # Told the latencies (ms) of the first round's calls that returned, before the rest run; its
        # presence asks for that round even without "auto" moments (delays calibrated on it).
        self._first_round_ran = first_round_ran
        self._latencies_ms: list[float] = []
        self._stall = StallWatch(wire)
        self.recorded: dict[int, CallRecord] = {}
        self._offset_ns: int | None = None  # host loop ns minus driver ns: one clock for both
        self.moments = Moments()
        self.moments_used: dict[int, float] = {}

    async def run(self, ends_at: float | None, stall_s: Any) -> Ending:
        """Every call of the decisions, calibrating "auto" moments on the first call of each task."""
        by_index = self._decisions.by_index()
        if self._decisions.calibrate or self._first_round_ran is not None:
            first = [d for d in by_index if d.position == 0]
            ending = await self._round(first, ends_at, stall_s)
            if ending.deadline_hit or ending.stalled_s is not None:
                return ending
            if self._first_round_ran is not None:
                self._first_round_ran(list(self._latencies_ms))
            rest = [d for d in by_index if d.position > 0]
        else:
            rest = by_index
        return await self._round(rest, ends_at, stall_s)

    def _request(self, decision: CallDecision) -> dict[str, Any]:
        at_ms = decision.at_ms
        if at_ms is None and decision.interrupt is not Interrupt.NONE:
            at_ms = self.moments_used[decision.index] = self.moments.at(decision.draw)
        call: dict[str, Any] = {"index": decision.index, "task": decision.task, "yields": decision.yields,
                                "cut": _CUTS[decision.interrupt] if at_ms is not None else "none"}
        if at_ms is not None:
            call["at_ms"] = at_ms
        return call

    async def _round(self, decisions: list[CallDecision], ends_at: float | None, stall_s: Any) -> Ending:
        loop = asyncio.get_running_loop()
        # In each task's order: by_index() is by call index, a lane by position.
        ordered = sorted(decisions, key=lambda d: (d.task, d.position))
        await self._driver.send({"op": "run", "calls": [self._request(d) for d in ordered]})
        reader = loop.create_task(self._messages())
        try:
            pending, stalled_s = await self._stall.watch({reader}, ends_at, stall_s)
        except asyncio.CancelledError:
            reader.cancel()
            raise
        at_ns = round(loop.time() * 1e9)
        if pending:
            await self._driver.send({"op": "stop"})
            done, _ = await asyncio.wait({reader}, timeout=CANCEL_GRACE_S + STOP_SLACK_S)
            if not done:
                reader.cancel()
                raise self._driver.failure("did not answer stop with ran in time")
        exception = reader.exception()
        if isinstance(exception, _GuestEnded):
            await self._stop_after_guest_ended(reader)
        if exception is not None:
            raise exception
        return Ending(bool(pending) and stalled_s is None, stalled_s, (), at_ns)

    async def _stop_after_guest_ended(self, reader: asyncio.Task[None]) -> None:
        """The run ends with the guest's exit: the other calls are stopped, the driver kept in step."""
        await self._driver.send({"op": "stop"})
        ends_at = asyncio.get_running_loop().time() + CANCEL_GRACE_S + STOP_SLACK_S
        while (await self._driver.receive(ends_at, "run"))["op"] != "ran":
            pass

    def _host_ns(self, at_ms: object) -> int:
        loop_ns = round(asyncio.get_running_loop().time() * 1e9)
        if not isinstance(at_ms, int | float) or isinstance(at_ms, bool):
            return loop_ns
        driver_ns = round(at_ms * 1e6)
        if self._offset_ns is None:
            self._offset_ns = loop_ns - driver_ns
        return driver_ns + self._offset_ns

    async def _messages(self) -> None:
        """Read the driver's messages until `ran`."""
        total = self._decisions.total
        while True:
            message = await self._driver.receive(None, "run")
            op = message["op"]
            if op == "ran":
                return
            index = message.get("index")
            if op not in ("start", "end") or type(index) is not int or not 0 <= index < total:
                raise self._driver.failure(f"sent {json.dumps(message)[:80]} during a run")
            at_ns = self._host_ns(message.get("at_ms"))
            if op == "start":
                self.recorded[index] = CallRecord(index, End.UNFINISHED, at_ns)
                continue
            self._ended(message, index, at_ns)

    def _ended(self, message: dict[str, Any], index: int, at_ns: int) -> None:
        end = _OUTCOMES.get(message.get("outcome"))  # type: ignore[arg-type]
        started = self.recorded.get(index)
        if end is None or started is None:
            raise self._driver.failure(f"sent {json.dumps(message)[:80]} for a call it had not started"
                                       if started is None else f"sent an unknown outcome for call {index}")
        started_ns = started.started_ns or at_ns
        if end is End.UNFINISHED:  # stopped: the run gave up on it (STUCK when it ended stuck)
            self.recorded[index] = CallRecord(index, End.UNFINISHED, started_ns)
            return
        took_ns = max(at_ns - started_ns, 0)
        self._stall.finished(took_ns / 1e9)
        value, described = None, None
        if end is End.RETURNED:
            value = decode(message.get("value"))
            self.moments.observe(took_ns / 1e6)
            self._latencies_ms.append(took_ns / 1e6)
        elif end is End.RAISED:
            error = _mapping(message.get("error"))
            name, text = str(error.get("type", "Exception")), " ".join(str(error.get("message", "")).split())
            described = f"{name}: {text}" if text else name
        self.recorded[index] = CallRecord(index, end, started_ns, started_ns + took_ns, value, described)
        if end is End.RAISED and message.get("ends_program"):
            raise _GuestEnded(f"call {index} raised {described}")


async def driven(driver: DriverProcess, decisions: Decisions, expected: Sequence[object], *, label: str,
                 deadline_s: float | None, stall_s: Any, wire: Wire | None,
                 first_round_ran: Callable[[list[float]], None] | None = None) -> HammerResult:
    """Make the run's calls through `driver` and judge them as hammer() judges its own (with
    `first_round_ran`, told the first round's latencies before the rest, see DriverRun)."""
    run = DriverRun(driver, decisions, wire, first_round_ran)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    try:
        ending = await run.run(None if deadline_s is None else loop.time() + deadline_s, stall_s)
    except _GuestEnded as exc:
        raise HammerError(f"{exc}, which would end the program: a call must return a value or raise an "
                          "Exception") from None
    elapsed = time.perf_counter() - started
    resolved = decisions.resolved(run.moments_used.items())
    return judged(label, resolved, ended_records(run.recorded, decisions.total, ending), expected,
                  elapsed, ending, wire is not None, run.moments.uncalibrated)


@contextlib.asynccontextmanager
async def running_driver(command: Sequence[str], ends_at: float) -> AsyncIterator[DriverProcess]:
    """A started driver that answered `hello` in protocol 1; closed (killed if need be) afterwards."""
    driver = await DriverProcess.start(command)
    try:
        await driver.send({"op": "hello", "protocol": PROTOCOL})
        hello = await driver.receive(ends_at, "hello")
        if hello.get("op") != "hello" or hello.get("protocol") != PROTOCOL:
            raise driver.failure(f"answered hello with {json.dumps(hello)[:80]}")
        backends = hello.get("backends")
        if isinstance(backends, list) and backends and isinstance(backends[0], str):
            driver.backend = backends[0]  # its first: the one it runs when not told otherwise
        yield driver
    finally:
        await driver.close()


async def setup(driver: DriverProcess, scenario: str, address: Address, total: int,
                ends_at: float) -> list[object]:
    """Set the scenario up in the driver; the values the calls must return."""
    request: dict[str, Any] = {"op": "setup", "scenario": scenario, "address": list(address), "total": total}
    if driver.backend is not None:
        request["backend"] = driver.backend
    await driver.send(request)
    ready = await driver.receive(ends_at, "setup")
    expected = ready.get("expected")
    if ready["op"] != "ready" or not isinstance(expected, list) or len(expected) != total:
        raise driver.failure(f"answered setup with {json.dumps(ready)[:80]}")
    return [decode(v) for v in expected]


async def cleanup(driver: DriverProcess, ends_at: float) -> None:
    await driver.send({"op": "cleanup"})
    cleaned = await driver.receive(ends_at, "cleanup")
    if cleaned["op"] != "cleaned":
        raise driver.failure(f"answered cleanup with {json.dumps(cleaned)[:80]}")


# The sleeps a hold-lateness probe makes (s): fractions of a millisecond apart, as the proxy's are.
LATENESS_PROBES_S: Final = (0.0003, 0.0011, 0.0017, 0.0024, 0.0008)


def delays_around(timeout_ms: float, direction: str, round_trip_ms: float = 0.0,
                  lateness_ms: float = 0.0) -> tuple[float, float]:
    """The range of the proxy's delays that puts a reply's round trip at a seeded 0.5x-1.5x of the
    client's own timeout: what the round trip takes without faults (`round_trip_ms`) and how late
    each of the proxy's holds fires (`lateness_ms`, the event loop's timer granularity) taken off;
    a round trip crosses the proxy both ways with --direction both, so each way gets half."""
    holds = 2 if direction == "both" else 1
    lo = max(0.0, (0.5 * timeout_ms - round_trip_ms) / holds - lateness_ms)
    hi = max(lo, (1.5 * timeout_ms - round_trip_ms) / holds - lateness_ms)
    return round(lo, 3), round(hi, 3)


async def hold_lateness_ms() -> float:
    """How late this loop's timers fire, on average (ms): a hold of the proxy lasts its delay plus
    this (on Linux, epoll waits whole milliseconds, rounded up, then the loop wakes its task)."""
    loop = asyncio.get_running_loop()
    late = 0.0
    for sleep_s in LATENESS_PROBES_S:
        started = loop.time()
        await asyncio.sleep(sleep_s)
        late += loop.time() - started - sleep_s
    return max(0.0, late / len(LATENESS_PROBES_S) * 1000)


class DelayCalibration:
    """The proxy's delays drawn around the client's own timeout (Setting.client_timeout_ms), for a
    backend that cannot cut a call (threads: the cut is the client's timeout): the first call of every
    task runs without faults and measures the round trip; the faults then start with delays in
    `delays_around` that round trip (the shortest latency of the round: one call alone on the wire,
    where the others queue behind a lock) and the loop's timer lateness. A replay (its decisions
    given) runs the same fault-free round and then the delays its decisions recorded."""

    def __init__(self, proxy: FaultProxy, timeout_ms: float, direction: str, lateness_ms: float,
                 recorded: tuple[float, float] | None) -> None:
        self._proxy, self._timeout_ms, self._direction = proxy, timeout_ms, direction
        self._lateness_ms = lateness_ms
        self.delay_ms = recorded

    @classmethod
    async def wanted(cls, config: CheckConfig, decisions: Decisions, backend: str | None,
                     proxy: FaultProxy) -> DelayCalibration | None:
        if config.replay is not None:
            if decisions.delay_ms is None:
                return None
            return cls(proxy, 0.0, config.faults.direction, 0.0, decisions.delay_ms)
        timeout_ms = config.setting.client_timeout_ms
        if timeout_ms is None or backend not in UNCUTTABLE_BACKENDS or config.faults.delay_ms is None:
            return None
        return cls(proxy, timeout_ms, config.faults.direction, await hold_lateness_ms(), None)

    def ran(self, latencies_ms: list[float]) -> None:
        """The first round ran: start the faults with the delays calibrated on it (or recorded)."""
        if self.delay_ms is None:
            round_trip_ms = min(latencies_ms) if latencies_ms else 0.0
            self.delay_ms = delays_around(self._timeout_ms, self._direction, round_trip_ms, self._lateness_ms)
        self._proxy.start_faults(delay_ms=self.delay_ms)


def _draw(config: CheckConfig, timeout_ms: Timeout, backend: str | None) -> Decisions:
    """The run's decisions; with a backend that cannot cut a call (threads), no cuts: "auto" and a
    range of deadlines alike mean none there (the client's own timeout is the cut, and the proxy's
    delays, --client-timeout, make it fire)."""
    if backend in UNCUTTABLE_BACKENDS:
        return draw(config.seed, config.tasks, config.calls, None, 0.0)
    return draw(config.seed, config.tasks, config.calls, timeout_ms, float(config.cancel_fraction))


async def run_driver_check(config: CheckConfig, command: Sequence[str]) -> CheckRun:
    """run_check (runner.py) with the scenario run by the driver `command` starts.

    Raises ScenarioError for the scenario's and the driver's failures, HammerError for a call that
    would end the program, UpstreamError and ValueError as run_check does. With a driver no tape is
    recorded nor followed: a replay makes the recorded decisions again (docs/driver.md).
    """
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + config.deadline_s
    timeout_ms = check_timeout(config.timeout_ms)
    if config.tasks * config.calls > MAX_CALLS:
        raise ValueError(
            f"tasks x calls must be at most {MAX_CALLS:,}, got {config.tasks:,} x {config.calls:,}")
    await probe(config.upstream, min(CONNECT_TIMEOUT_S, config.deadline_s))
    refused: list[FaultRecord] = []

    def watch(record: FaultRecord) -> None:
        if record.fault == "refused":
            refused.append(record)

    label = config.scenario.rpartition(":")[2]
    async with FaultProxy(config.upstream, config.seed, faults=config.faults, on_record=watch,
                          log_limit=0, faulting=config.faults_in_setup) as proxy:
        async with running_driver(command, ends_at) as driver:
            decisions = config.replay or _draw(config, timeout_ms, driver.backend)
            expected = await setup(driver, config.scenario, proxy.address, decisions.total, ends_at)
            calibration = await DelayCalibration.wanted(config, decisions, driver.backend, proxy)
            if calibration is None:
                proxy.start_faults()
            try:
                result = await driven(driver, decisions, expected, label=label, stall_s=config.stall_s,
                                      deadline_s=max(ends_at - loop.time(), 0.001), wire=proxy,
                                      first_round_ran=None if calibration is None else calibration.ran)
                if calibration is not None and calibration.delay_ms is not None:
                    result = dataclasses.replace(result, decisions=dataclasses.replace(
                        result.decisions, delay_ms=calibration.delay_ms))
            except HammerError:
                with contextlib.suppress(ScenarioError):  # the guest's exit is what to report
                    await cleanup(driver, loop.time() + CLEANUP_MIN_S)
                raise
            await cleanup(driver, max(ends_at, loop.time() + CLEANUP_MIN_S))
        accepted = proxy.statistics().accepted
        address = proxy.address
    return CheckRun(config, result, address, accepted, tuple(refused))
