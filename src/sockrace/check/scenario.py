"""A user's scenario: the code that sets up their client against an address and says what to call.

A scenario is named `FILE.py:FUNC` (or `package.module:FUNC`) and is one of two shapes:

    async def scenario(address):               # address = (host, port) of the proxy
        client = await connect(*address)
        return call, expect                    # call(i) -> awaitable, expect(i) -> value

    async def scenario(address):               # an async generator: set up, yield once, clean up
        client = await connect(*address)
        try:
            yield call, expect
        finally:
            await client.close()

The first shape has no clean-up: what it opens stays open until the process ends (the proxy's end
of its connections is closed after the run). The second runs its clean-up after the run, also
when the run failed: prefer it for anything that holds a connection.

The user's code is a guest: loading it, setting it up and cleaning it up are each bounded, and
whatever it does wrong becomes a ScenarioError (the user's exception kept as __cause__) or, for a
name that does not lead to an async function, a ScenarioNotFound.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import math
import sys
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final, TypeVar

from sockrace.check.guest import OWN_TIMERS, describe, is_real_ctrl_c
from sockrace.errors import ScenarioError as ScenarioError  # defined there, named here too
from sockrace.errors import ScenarioNotFound as ScenarioNotFound

T = TypeVar("T")
# How long a step of the scenario whose time is up may take to unwind once cancelled, and then once
# cancelled again, before it is abandoned: closing a client takes milliseconds.
UNWIND_GRACE_S: Final = 0.5

Address = tuple[str, int]
Call = Callable[[int], Awaitable[object]]
Expect = Callable[[int], object]






@dataclass(frozen=True, slots=True)
class Scenario:
    name: str  # as the user gave it: FILE.py:FUNC or module:FUNC
    function: Callable[[Address], Any]

    @property
    def is_generator(self) -> bool:
        return inspect.isasyncgenfunction(self.function)


def _split(name: str) -> tuple[str, str]:
    where, colon, function = name.rpartition(":")
    if not colon or not where or not function.isidentifier():
        raise ScenarioNotFound(f"scenario {name!r}: expected FILE.py:FUNC or module:FUNC")
    return where, function


def _is_path(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def _import_file(where: str, name: str) -> ModuleType:
    path = Path(where)
    if not path.is_file():
        raise ScenarioNotFound(f"scenario {name}: no such file {where}")
    module_name = f"sockrace_scenario_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ScenarioNotFound(f"scenario {name}: {where} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    # As `python FILE.py` would: the scenario may import the modules beside it.
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # SystemExit too: a scenario's module must not end the check
        sys.modules.pop(module_name, None)
        if is_real_ctrl_c(exc):
            raise
        raise ScenarioError(f"scenario {name}: loading {where} raised {describe(exc)}") from exc
    return module


def _import_module(where: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (where == exc.name or where.startswith(exc.name + ".")):
            raise ScenarioNotFound(f"scenario {name}: no module named {where}") from exc
        raise ScenarioError(f"scenario {name}: importing {where} raised {describe(exc)}") from exc
    except BaseException as exc:  # SystemExit too: a scenario's module must not end the check
        if is_real_ctrl_c(exc):
            raise
        raise ScenarioError(f"scenario {name}: importing {where} raised {describe(exc)}") from exc


def load(name: str) -> Scenario:
    """The scenario named `FILE.py:FUNC` or `module:FUNC`.

    Raises ScenarioNotFound when there is no such file, module or function or it is not an async
    function (or async generator function), and ScenarioError when importing it raised.
    """
    where, function_name = _split(name)
    module = _import_file(where, name) if _is_path(where) else _import_module(where, name)
    function = getattr(module, function_name, None)
    if function is None:
        raise ScenarioNotFound(f"scenario {name}: {where} has no function {function_name}")
    if not (inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)):
        kind = ("a plain function" if inspect.isfunction(function)
                else f"{type(function).__name__} {function!r:.40}")
        raise ScenarioNotFound(
            f"scenario {name}: {function_name} is {kind}, not an async function "
            "(`async def` returning (call, expect), or yielding it once)")
    return Scenario(name, function)


def _pair(scenario: Scenario, value: object) -> tuple[Call, Expect]:
    verb = "yielded" if scenario.is_generator else "returned"
    if not (isinstance(value, tuple | list) and len(value) == 2 and all(callable(v) for v in value)):
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ScenarioError(f"scenario {scenario.name} {verb} {shown}, not (call, expect): two callables, "
                            "call(i) -> awaitable and expect(i) -> value")
    call, expect = value
    return call, expect


@contextlib.asynccontextmanager
async def _bounded(scenario: Scenario, step: str, seconds: float,
                   shown: float | None = None) -> AsyncIterator[None]:
    """Run the block under a timeout; whatever it raises (a SystemExit included) becomes ScenarioError."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise ScenarioError(f"scenario {scenario.name} did not finish its {step} "
                            f"within {_shown(seconds if shown is None else shown)} s") from exc
    except ScenarioError:
        raise
    except BaseException as exc:
        if _ours(exc):
            raise
        raise ScenarioError(f"scenario {scenario.name} raised {describe(exc)} in its {step}") from exc


def _shown(seconds: float) -> str:
    """Two significant figures: a step's bound is what is left of the deadline, 0.1988 s of 0.2."""
    return f"{seconds:.2g}" if seconds < 100 else f"{seconds:.0f}"


def _ours(exc: BaseException) -> bool:
    """A real Ctrl-C, the cancellation of the task running the scenario (the run is stopped), or a
    GeneratorExit (what closing an abandoned coroutine throws in; one the guest raised on its own is
    told by `contained`): passed on as it is."""
    if is_real_ctrl_c(exc) or isinstance(exc, GeneratorExit):
        return True
    task = asyncio.current_task()
    return isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling() > 0


# Tasks of the scenario `contained` gave up on: their end has been said; whoever closes the event loop
# need not wait for them again, nor say it twice.
ABANDONED: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


class Steps:
    """Which step of a scenario's run is under way ("set-up", "calls", "clean-up") and by when, on
    the loop's clock, it must be over: what `contained` enforces when the step's own timeout fails."""

    def __init__(self) -> None:
        self.step = "set-up"
        self.seconds = math.inf
        self.shown = math.inf  # the bound a message names: the step's own, or the run's deadline
        self.ends_at = math.inf
        self.entered = asyncio.Event()  # set by every enter(): `contained` then looks again

    def enter(self, step: str, seconds: float, shown: float | None = None) -> None:
        self.step, self.seconds = step, seconds
        self.shown = seconds if shown is None else shown
        self.ends_at = asyncio.get_running_loop().time() + seconds
        self.entered.set()


async def contained(scenario: Scenario, steps: Steps, run: Coroutine[Any, Any, T]) -> T:
    """Run `run` (a run of the scenario: set-up, calls, clean-up, each entered in `steps`) in a task
    of its own, and return what it returns.

    Each step is bounded by a timeout of its own, which cancels the guest's code; a guest that
    swallows that cancellation (or the task's) would run on for ever. So once a step has outlived
    its time by UNWIND_GRACE_S the task is cancelled again, and UNWIND_GRACE_S later abandoned:
    ScenarioError says which step would not end. A guest holding the event loop (a CPU loop) cannot
    be stopped from here: the command line's watchdog ends the process (cli/runs.py).
    """
    loop = asyncio.get_running_loop()
    task = loop.create_task(run, name=f"sockrace scenario {scenario.name}")
    entered: asyncio.Task[bool] | None = None
    timer: asyncio.TimerHandle | None = None
    try:
        while True:
            steps.entered.clear()
            entered = loop.create_task(steps.entered.wait())
            waiting: set[asyncio.Future[Any]] = {task, entered}
            timeout = steps.ends_at + UNWIND_GRACE_S - loop.time()
            if not math.isinf(timeout):
                # A timer of sockrace's own (guest.OWN_TIMERS), where asyncio.wait's would be anonymous.
                due: asyncio.Future[None] = loop.create_future()
                timer = loop.call_later(max(0.0, timeout), _set_unless_done, due)
                OWN_TIMERS.add(timer)
                waiting.add(due)
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            entered.cancel()
            if timer is not None:
                timer.cancel()
                timer = None
            if task.done():
                return _result(scenario, steps, task)
            if loop.time() >= steps.ends_at + UNWIND_GRACE_S:
                break
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        if entered is not None:
            entered.cancel()
        if timer is not None:
            timer.cancel()
    step, seconds = steps.step, steps.shown
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=UNWIND_GRACE_S)
    if done and not task.cancelled():
        return _result(scenario, steps, task)  # it ended after all: its own timeout's ScenarioError, say
    if not done:
        ABANDONED.add(task)
    how = "and ended only when cancelled again" if done else (
        f"and ignored cancellation for {2 * UNWIND_GRACE_S:g} s more (abandoned)")
    raise ScenarioError(
        f"scenario {scenario.name} did not finish its {step} within {_shown(seconds)} s {how}")


def _set_unless_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _result(scenario: Scenario, steps: Steps, task: asyncio.Task[T]) -> T:
    try:
        return task.result()
    except GeneratorExit as exc:  # the guest's own: nobody closed the task, it ended
        raise ScenarioError(f"scenario {scenario.name} raised {describe(exc)} in its {steps.step}") from exc


@contextlib.asynccontextmanager
async def opened(
    scenario: Scenario, address: Address, *, setup_s: float, cleanup_s: float | Callable[[], float],
    steps: Steps | None = None, setup_shown: float | None = None,
) -> AsyncIterator[tuple[Call, Expect]]:
    """Set the scenario up against `address`, give its (call, expect), and clean it up afterwards.

    Set-up is bounded by `setup_s` seconds, clean-up (async generators only) by `cleanup_s` (or what
    it returns when the clean-up begins); each is entered in `steps` when given. A set-up that runs out
    of time is said to have missed `setup_shown` (the run's deadline, of which `setup_s` is what is
    left) when given. Raises ScenarioError
    when the scenario raises (anything, SystemExit and KeyboardInterrupt included, but a real
    Ctrl-C), hangs, or gives no (call, expect); an error of the block is passed on, after the
    clean-up has run.
    """
    steps = steps or Steps()
    steps.enter("set-up", setup_s, setup_shown)
    if not scenario.is_generator:
        async with _bounded(scenario, "set-up", setup_s, setup_shown):
            value = await scenario.function(address)
        yield _pair(scenario, value)
        return
    generator: AsyncGenerator[object, None] = scenario.function(address)
    closed = False
    try:
        async with _bounded(scenario, "set-up", setup_s, setup_shown):
            try:
                value = await anext(generator)
            except StopAsyncIteration:
                raise ScenarioError(
                    f"scenario {scenario.name} ended without yielding (call, expect)") from None
        yield _pair(scenario, value)
        seconds = cleanup_s() if callable(cleanup_s) else cleanup_s
        steps.enter("clean-up", seconds)
        async with _bounded(scenario, "clean-up", seconds):
            try:
                await anext(generator)
            except StopAsyncIteration:
                return
        raise ScenarioError(f"scenario {scenario.name} yielded more than once")
    except GeneratorExit:
        # This coroutine is being closed (abandoned by `contained`, then collected): nothing may be
        # awaited any more, the event loop may be gone.
        closed = True
        raise
    finally:
        if not closed:
            if steps.step != "clean-up":
                steps.enter("clean-up", cleanup_s() if callable(cleanup_s) else cleanup_s)
            async with _bounded(scenario, "clean-up", steps.seconds):
                await generator.aclose()
