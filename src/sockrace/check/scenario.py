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
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from sockrace.errors import SockraceError

Address = tuple[str, int]
Call = Callable[[int], Awaitable[object]]
Expect = Callable[[int], object]


class ScenarioNotFound(SockraceError):
    """The name does not lead to an async function: no such file, module or function, or not async."""


class ScenarioError(SockraceError):
    """The scenario failed: it raised (on import, set-up or clean-up), hung, or returned no (call, expect)."""


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
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if isinstance(exc, KeyboardInterrupt | SystemExit | asyncio.CancelledError):
            raise
        raise ScenarioError(f"scenario {name}: loading {where} raised {_describe(exc)}") from exc
    return module


def _import_module(where: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (where == exc.name or where.startswith(exc.name + ".")):
            raise ScenarioNotFound(f"scenario {name}: no module named {where}") from exc
        raise ScenarioError(f"scenario {name}: importing {where} raised {_describe(exc)}") from exc
    except Exception as exc:
        raise ScenarioError(f"scenario {name}: importing {where} raised {_describe(exc)}") from exc


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


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
async def _bounded(scenario: Scenario, step: str, seconds: float) -> AsyncIterator[None]:
    """Run the block under a timeout; its failures become ScenarioError."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise ScenarioError(f"scenario {scenario.name} did not finish its {step} "
                            f"within {seconds:g} s") from exc
    except ScenarioError:
        raise
    except Exception as exc:
        raise ScenarioError(f"scenario {scenario.name} raised {_describe(exc)} in its {step}") from exc


@contextlib.asynccontextmanager
async def opened(
    scenario: Scenario, address: Address, *, setup_s: float, cleanup_s: float,
) -> AsyncIterator[tuple[Call, Expect]]:
    """Set the scenario up against `address`, give its (call, expect), and clean it up afterwards.

    Set-up is bounded by `setup_s` seconds, clean-up (async generators only) by `cleanup_s`.
    Raises ScenarioError when the scenario raises, hangs, or gives no (call, expect); an error of
    the block is passed on, after the clean-up has run.
    """
    if not scenario.is_generator:
        async with _bounded(scenario, "set-up", setup_s):
            value = await scenario.function(address)
        yield _pair(scenario, value)
        return
    generator: AsyncGenerator[object, None] = scenario.function(address)
    try:
        async with _bounded(scenario, "set-up", setup_s):
            try:
                value = await anext(generator)
            except StopAsyncIteration:
                raise ScenarioError(
                    f"scenario {scenario.name} ended without yielding (call, expect)") from None
        yield _pair(scenario, value)
        async with _bounded(scenario, "clean-up", cleanup_s):
            try:
                await anext(generator)
            except StopAsyncIteration:
                return
        raise ScenarioError(f"scenario {scenario.name} yielded more than once")
    finally:
        async with _bounded(scenario, "clean-up", cleanup_s):
            await generator.aclose()
