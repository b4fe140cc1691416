"""Run a check: a FaultProxy in front of the upstream, the user's scenario through it, the hammer, and
everything stopped again. What `sockrace check` calls; usable from Python as well:

    run = await run_check(CheckConfig("examples/sockrace_naive.py:naive", ("127.0.0.1", 7777)))
    print(run.result.summary(), run.result.explain())

The whole run is bounded by `deadline_s`, counted from the call of `run_check`: the upstream's
probe, the scenario's set-up, the calls and the scenario's clean-up share it (the clean-up always
gets at least CLEANUP_MIN_S). The scenario runs in a task of its own (scenario.contained): a step of
it that swallows its cancellation is abandoned shortly after its time is up. When `run_check`
returns or raises, the proxy and its connections are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field, replace
from typing import Any, Final

from sockrace.check.decisions import MAX_CALLS, Decisions, Timeout, check_timeout
from sockrace.check.faults import FaultRecord, Faults
from sockrace.check.hammer import (
    CANCEL_GRACE_S,
    DEFAULT_CALLS,
    DEFAULT_DEADLINE_S,
    DEFAULT_TASKS,
    Stall,
    hammer,
)
from sockrace.check.pacing import Pacer
from sockrace.check.proxy import CONNECT_TIMEOUT_S, FaultProxy
from sockrace.check.result import HammerResult
from sockrace.check.scenario import Address, Scenario, Steps, contained, load, opened
from sockrace.check.tape import Tape
from sockrace.errors import UpstreamError as UpstreamError  # defined there, named here too

# The clean-up gets what is left of the deadline, and at least this: closing a client takes
# milliseconds, and a second covers a slow server's goodbye without holding up a run that failed.
CLEANUP_MIN_S: Final = 1.0




def _range_words(lo_hi: tuple[float, float]) -> str:
    return f"{lo_hi[0]:g}-{lo_hi[1]:g}"


@dataclass(frozen=True, slots=True)
class Setting:
    """What one run is drawn from: the seed, the run's size, how its calls are cut short (deadlines,
    task.cancel()), the stuck bound and the proxy's faults; with, for a run made again, the decisions
    and the tape of the run it makes again. A run record's inputs (record.py) and a CheckConfig's
    (runner.py) are this; the command line spells it as `sockrace check` options
    (cli/runs.py: setting_words)."""

    seed: int = 0
    tasks: int = DEFAULT_TASKS
    calls: int = DEFAULT_CALLS
    timeout_ms: Timeout = "auto"
    faults: Faults = field(default_factory=Faults)
    # The share of the calls cancelled by task.cancel() of a sub-task running them (hammer's
    # cancel_fraction), beside those cut by their deadline.
    cancel_fraction: float = 0.0
    # The stuck bound (hammer's stall_s): "auto" follows the latencies the run measures.
    stall_s: Stall = "auto"
    # The client's own timeout, for a backend whose calls cannot be cut (threads): the proxy's delays
    # are calibrated to land around it on a first round run without faults (check/driver.py).
    client_timeout_ms: float | None = None
    # A replay's: the decisions of the run being replayed, made again rather than drawn afresh (not an
    # option of the command line; the seed draws them the first time).
    decisions: Decisions | None = field(default=None, compare=False, repr=False)
    # And the tape of that run (tape.py), followed over real sockets (pacing.py).
    tape: Tape | None = field(default=None, compare=False, repr=False)
    # Record this run's tape (the first run of a replay: the others follow it).
    record: bool = field(default=False, compare=False, repr=False)

    def with_seed(self, seed: int) -> Setting:
        return replace(self, seed=seed)

    def describe(self) -> str:
        """In a few words, e.g. "seed 3, 1 task x 2 calls, deadlines 1-40 ms, faults: delay 20-20 ms"
        (a share of cancelled calls and a stuck bound other than "auto" are named after the deadlines)."""
        timeout = self.timeout_ms
        deadlines = ("no deadlines" if timeout is None else "auto deadlines" if timeout == "auto"
                     else f"deadlines {_range_words(timeout)} ms")
        if self.cancel_fraction:
            deadlines += f", cancel {self.cancel_fraction:g}"
        if self.stall_s != "auto":
            deadlines += ", no stuck bound" if self.stall_s is None else f", stuck after {self.stall_s:g} s"
        if self.client_timeout_ms is not None:
            deadlines += f", the client's timeout {self.client_timeout_ms:g} ms"
        tasks = f"{self.tasks} task{'s' if self.tasks != 1 else ''}"
        calls = f"{self.calls} call{'s' if self.calls != 1 else ''}"
        return f"seed {self.seed}, {tasks} x {calls}, {deadlines}, faults: {self.faults.describe()}"


# The fields of a Setting a CheckConfig may be built with, as the keywords of before the two were one.
_SETTING_FIELDS: Final = ("tasks", "calls", "timeout_ms", "faults", "seed", "stall_s", "cancel_fraction",
                          "client_timeout_ms", "tape", "record")


@dataclass(frozen=True, slots=True, init=False)
class CheckConfig:
    """What to check: the scenario by name, the server behind the proxy, the run's bound, and the
    Setting the run is drawn from (`setting`).

    Built as `CheckConfig(scenario, upstream, setting=Setting(...))`, or with the setting's fields
    as keywords (`CheckConfig(scenario, upstream, tasks=4, seed=7)`, `replay=` for its decisions),
    which then also read as attributes (`config.seed` is `config.setting.seed`).
    """

    scenario: str  # FILE.py:FUNC or module:FUNC (see scenario.py)
    upstream: Address
    setting: Setting
    deadline_s: float
    # The faults begin with the first call; True: with the scenario's set-up (loading data too).
    faults_in_setup: bool
    # The command line of a driver that runs the scenario in a process of its own (docs/driver.md,
    # check/driver.py); None: in this process.
    driver: tuple[str, ...] | None

    def __init__(self, scenario: str, upstream: Address, setting: Setting | None = None, *,
                 deadline_s: float = DEFAULT_DEADLINE_S, faults_in_setup: bool = False,
                 replay: Decisions | None = None, driver: tuple[str, ...] | None = None,
                 **fields: Any) -> None:
        unknown = set(fields) - set(_SETTING_FIELDS)
        if unknown:
            raise TypeError(f"CheckConfig got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        setting = Setting() if setting is None else setting
        if replay is not None:
            fields["decisions"] = replay
        if fields:
            setting = replace(setting, **fields)
        object.__setattr__(self, "scenario", scenario)
        object.__setattr__(self, "upstream", upstream)
        object.__setattr__(self, "setting", setting)
        object.__setattr__(self, "deadline_s", deadline_s)
        object.__setattr__(self, "faults_in_setup", faults_in_setup)
        object.__setattr__(self, "driver", driver)

    def with_setting(self, setting: Setting) -> CheckConfig:
        """This configuration, run under `setting`."""
        return CheckConfig(self.scenario, self.upstream, setting, deadline_s=self.deadline_s,
                           faults_in_setup=self.faults_in_setup, driver=self.driver)

    # The setting's fields, read through the configuration.
    @property
    def seed(self) -> int:
        return self.setting.seed

    @property
    def tasks(self) -> int:
        return self.setting.tasks

    @property
    def calls(self) -> int:
        return self.setting.calls

    @property
    def timeout_ms(self) -> Timeout:
        return self.setting.timeout_ms

    @property
    def faults(self) -> Faults:
        return self.setting.faults

    @property
    def cancel_fraction(self) -> float:
        return self.setting.cancel_fraction

    @property
    def stall_s(self) -> Stall:
        return self.setting.stall_s

    @property
    def replay(self) -> Decisions | None:
        """The decisions of an earlier run of the same setting, made again instead of drawn (a
        replay): with "auto" deadlines a fresh draw would follow this run's latencies, not that run's."""
        return self.setting.decisions

    @property
    def tape(self) -> Tape | None:
        """The tape of that run (tape.py): the proxy and the hammer then take its writes and cuts in
        its order (pacing.py) instead of the kernel's."""
        return self.setting.tape

    @property
    def record(self) -> bool:
        """Record the run's tape (result.tape) for replays to follow; it costs a little per write."""
        return self.setting.record


@dataclass(frozen=True, slots=True)
class CheckRun:
    """A finished check: the hammer's result and what the proxy saw."""

    config: CheckConfig
    result: HammerResult
    proxy_address: Address
    connections: int  # accepted by the proxy
    refused: tuple[FaultRecord, ...]  # the proxy's connects the upstream refused during the run

    @property
    def upstream_failed(self) -> bool:
        return bool(self.refused)


async def probe(upstream: Address, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Connect to `upstream` once and close again; raises UpstreamError saying why it failed."""
    host, port = upstream
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        raise UpstreamError(f"cannot connect to {host}:{port}: no answer within {timeout_s:g} s") from None
    except OSError as exc:
        # asyncio words a refusal "Connect call failed (...)": the errno says it plainly. A name
        # that does not resolve has a negative errno and its own strerror.
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
        raise UpstreamError(f"cannot connect to {host}:{port}: {reason}") from exc
    writer.close()
    with contextlib.suppress(OSError):  # the server closed first: it was there, all a probe asks
        await writer.wait_closed()


async def run_check(config: CheckConfig, *, scenario: Scenario | None = None) -> CheckRun:
    """Load the scenario (unless given), probe the upstream, run the hammer through a FaultProxy.

    Raises ScenarioNotFound / ScenarioError (scenario.py) for the user's code, UpstreamError when
    the upstream cannot be reached, ValueError for bad arguments and OSError when the proxy cannot
    listen. Crossed replies are not errors: they are in the result. With `config.driver`, the
    driver runs the scenario (check/driver.py) and `scenario` is unused.
    """
    if config.driver is not None:
        from sockrace.check.driver import run_driver_check  # it builds on this module

        return await run_driver_check(config, config.driver)
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + config.deadline_s
    timeout_ms = check_timeout(config.timeout_ms)
    if config.tasks * config.calls > MAX_CALLS:  # refused before the scenario's set-up, not after it
        raise ValueError(
            f"tasks x calls must be at most {MAX_CALLS:,}, got {config.tasks:,} x {config.calls:,}")
    if scenario is None:
        scenario = load(config.scenario)
    await probe(config.upstream, min(CONNECT_TIMEOUT_S, config.deadline_s))
    refused: list[FaultRecord] = []

    def watch(record: FaultRecord) -> None:
        if record.fault == "refused":
            refused.append(record)

    pacer = Pacer(config.tape) if config.record or config.tape is not None else None
    async with FaultProxy(config.upstream, config.seed, faults=config.faults, on_record=watch,
                          log_limit=0, pacer=pacer, faulting=config.faults_in_setup) as proxy:
        steps = Steps()

        def left() -> float:
            return max(ends_at - loop.time(), 0.001)

        async def run() -> HammerResult:
            async with opened(scenario, proxy.address, setup_s=left(), setup_shown=config.deadline_s,
                              steps=steps, cleanup_s=lambda: max(left(), CLEANUP_MIN_S)) as (call, expect):
                # The hammer ends its calls by the deadline, and waits CANCEL_GRACE_S for those that
                # ignore it: the step is over by then.
                steps.enter("calls", left() + CANCEL_GRACE_S)
                proxy.start_faults()
                result = await hammer(call, expect, tasks=config.tasks, calls=config.calls,
                                      timeout_ms=timeout_ms, seed=config.seed, deadline_s=left(),
                                      stall_s=config.stall_s, cancel_fraction=config.cancel_fraction,
                                      label=scenario.name.rpartition(":")[2], replay=config.replay,
                                      pacer=pacer, wire=proxy)
                if pacer is not None:
                    pacer.close()  # what the scenario's clean-up sends is not the run's: it flows freely
                return result

        try:
            result = await contained(scenario, steps, run())
        finally:
            if pacer is not None:
                pacer.close()
        accepted = proxy.statistics().accepted
        address = proxy.address
    return CheckRun(config, result, address, accepted, tuple(refused))
