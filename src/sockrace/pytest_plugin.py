"""sockrace's pytest plugin: fault proxies as a fixture, one seed option, and an assertion with a replay.

Registered through the `pytest11` entry point, so pytest loads it when sockrace is installed; nothing
else imports it, and sockrace itself never imports pytest. It provides:

    fault_proxy          a factory fixture: `proxy = await fault_proxy((host, port), split=True)`
                         starts a FaultProxy (seeded with --sockrace-seed unless `seed=` is given);
                         every proxy it made is closed at teardown. Works in async tests run by
                         anyio's plugin (@pytest.mark.anyio) and by pytest-asyncio (@pytest.mark.asyncio)
    sockrace_seed        the --sockrace-seed S option's value (default 0): pass it to hammer(seed=...)
    assert_no_crossing   fails a test whose hammer result has a crossed or wrong reply, with the
                         explanation and the command that replays the failing seed
    @pytest.mark.sockrace_schedules(N, perturbation="shuffle")
                         runs an `async def` test N times, on seeded scheduling loops (schedule
                         seeds 0 to N-1, check/schedule.py), and fails with the first schedule seed
                         under which it fails; --sockrace-schedule-seed S runs it under S alone.
                         Under pytest-asyncio's auto mode it takes the test over from pytest-asyncio

    async def test_my_client(fault_proxy, sockrace_seed):
        proxy = await fault_proxy(server_address, delay_ms=(1, 5))
        client = MyClient(proxy.host, proxy.port)
        result = await hammer(client.get_value, expected_value, seed=sockrace_seed)
        assert_no_crossing(result)

sockrace.check is imported only when a fixture or the assertion is used: loading the plugin costs a
pytest run nothing.
"""

from __future__ import annotations

import inspect
import os
import shlex
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import pytest

if TYPE_CHECKING:
    from sockrace.check import FaultProxy, HammerResult
    from sockrace.check.schedule import Perturbation

DEFAULT_SEED = 0
SCHEDULES_MARKER = "sockrace_schedules"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sockrace", "sockrace: seeded fault proxies and concurrent calls")
    group.addoption("--sockrace-seed", type=int, default=DEFAULT_SEED, metavar="S",
                    help="seed of the fault_proxy fixture's proxies and of `sockrace_seed` "
                    f"(default: {DEFAULT_SEED})")
    group.addoption("--sockrace-schedule-seed", type=int, metavar="S",
                    help=f"run the tests marked {SCHEDULES_MARKER} under schedule seed S only (replays "
                    "the schedule a failure names)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{SCHEDULES_MARKER}(n, perturbation='shuffle'): run this async test on n seeded "
        "scheduling loops (schedule seeds 0 to n-1) and fail with the first schedule seed that fails")


class _Schedules(NamedTuple):
    """How a marked test runs: under which schedule seeds and perturbation, and which function it is."""

    seeds: range | list[int]
    perturbation: Perturbation
    # The test function as collected, kept at setup: pytest-asyncio swaps `item.obj` for a function that
    # runs the coroutine on its own loop when it runs an item it claimed (as auto mode claims them all).
    test: Callable[..., Any]


_SCHEDULES = pytest.StashKey[_Schedules]()


def _asyncio_auto_mode(config: pytest.Config) -> bool:
    """Whether pytest-asyncio runs in auto mode: its --asyncio-mode option, else its asyncio_mode ini."""
    try:
        mode = config.getoption("asyncio_mode") or config.getini("asyncio_mode")
    except ValueError:  # pytest-asyncio is not installed: neither is registered
        return False
    return str(mode) == "auto"


def _written_marks(item: pytest.Item) -> list[pytest.Mark]:
    """The marks written on the test function itself and on its parameter (pytest.param(marks=...))."""
    written = getattr(getattr(item, "function", None), "pytestmark", [])
    # A copy: the function's own list must not grow. A hand-set `pytestmark` may be a single mark.
    marks = list(written) if isinstance(written, (list, tuple)) else [written]
    marks += getattr(getattr(item, "callspec", None), "marks", [])
    return [mark.mark if isinstance(mark, pytest.MarkDecorator) else mark for mark in marks]


def _other_async_marker(item: pytest.Item) -> str | None:
    """The marker that hands this test to another async plugin (anyio's or pytest-asyncio), or None."""
    if item.get_closest_marker("anyio") is not None:
        return "anyio"
    asyncio_marks = list(item.iter_markers_with_node("asyncio"))
    if not asyncio_marks:
        return None
    if not _asyncio_auto_mode(item.config):
        return "asyncio"
    # Auto mode marks every async test `asyncio` itself, with add_marker on the test's own item (0.23 and
    # later), a marker nobody can drop: only one written on the function, its parameter, its class or its
    # module (markers of a parent node) is the user's, and is refused as in strict mode. One a hook added
    # to the item is taken for auto mode's: in auto mode pytest-asyncio claims the test with or without it.
    written = _written_marks(item)
    return "asyncio" if any(node is not item or mark in written for node, mark in asyncio_marks) else None


def _schedules(item: pytest.Item) -> _Schedules | None:
    """How a marked test runs; None when it is not marked. A marker that cannot run (bad arguments, a sync
    test, a test the user hands to another async plugin too) fails the test."""
    marker = item.get_closest_marker(SCHEDULES_MARKER)
    if marker is None:
        return None
    from sockrace.check.schedule import DEFAULT_PERTURBATION, PERTURBATIONS

    count = marker.args[0] if marker.args else marker.kwargs.get("n")
    perturbation = marker.kwargs.get("perturbation", DEFAULT_PERTURBATION)
    where = f"@pytest.mark.{SCHEDULES_MARKER}"
    if type(count) is not int or count < 1:
        pytest.fail(f"{where}(n): n must be a whole number >= 1, got {count!r}", pytrace=False)
    if perturbation not in PERTURBATIONS:
        pytest.fail(f"{where}: perturbation must be one of {', '.join(PERTURBATIONS)}, got {perturbation!r}",
                    pytrace=False)
    other = _other_async_marker(item)
    if other is not None:
        pytest.fail(f"{where} runs the test on its own seeded loops: drop @pytest.mark.{other}",
                    pytrace=False)
    if not (isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj)):
        pytest.fail(f"{where} needs an `async def` test", pytrace=False)
    only: int | None = item.config.getoption("sockrace_schedule_seed")
    return _Schedules(range(count) if only is None else [only], cast("Perturbation", perturbation), item.obj)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    schedules = _schedules(item)  # a marker that cannot run fails before any fixture is set up
    if schedules is not None:
        item.stash[_SCHEDULES] = schedules


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a test marked sockrace_schedules once per schedule seed, each on a fresh seeded loop."""
    schedules = pyfuncitem.stash.get(_SCHEDULES, None)
    if schedules is None:
        return None
    from sockrace.check.schedule import run_with_schedule

    seeds, perturbation, test = schedules
    arguments = {name: pyfuncitem.funcargs[name] for name in inspect.signature(test).parameters
                 if name in pyfuncitem.funcargs}
    for seed in seeds:
        run = run_with_schedule(lambda: test(**arguments), seed, perturbation=perturbation)
        if run.failed:
            replay = shlex.join(["pytest", pyfuncitem.nodeid, "--sockrace-schedule-seed", str(seed)])
            pytest.fail(f"failed under schedule seed {seed} ({perturbation}, {run.decisions} scheduling "
                        f"decisions): {run.error}\n{run.traceback}replay: {replay}", pytrace=False)
    return True


@pytest.fixture
def sockrace_seed(request: pytest.FixtureRequest) -> int:
    """The --sockrace-seed option's value: seed your hammer() with it, so that a failure replays."""
    seed: int = request.config.getoption("sockrace_seed")
    return seed


class FaultProxies:
    """The fault_proxy fixture's value: call it to start a FaultProxy; all are closed at teardown."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.started: list[FaultProxy] = []

    async def __call__(self, upstream: tuple[str, int], *, seed: int | None = None,
                       **options: Any) -> FaultProxy:
        """A started FaultProxy in front of `upstream`; `options` are FaultProxy's (faults, listen...)."""
        from sockrace.check import FaultProxy

        proxy = FaultProxy(upstream, self.seed if seed is None else seed, **options)
        await proxy.start()
        self.started.append(proxy)
        return proxy

    async def aclose(self) -> None:
        while self.started:
            await self.started.pop().close()


async def _proxies_on_anyio(sockrace_seed: int) -> AsyncIterator[FaultProxies]:
    proxies = FaultProxies(sockrace_seed)
    try:
        yield proxies
    finally:
        await proxies.aclose()


async def _proxies_on_pytest_asyncio(sockrace_seed: int) -> AsyncIterator[FaultProxies]:
    proxies = FaultProxies(sockrace_seed)
    try:
        yield proxies
    finally:
        await proxies.aclose()


# Two fixtures, one per async plugin: each plugin runs only the async fixtures it recognises (anyio's
# those of a test that uses `anyio_backend`, pytest-asyncio's in strict mode those it decorated), and
# one fixture claimed by both would be run by both.
_sockrace_proxies_anyio = pytest.fixture(name="_sockrace_proxies_anyio")(_proxies_on_anyio)
try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - pytest-asyncio is optional: anyio's plugin alone works
    _ASYNCIO_FIXTURE: str | None = None
else:
    _sockrace_proxies_asyncio = pytest_asyncio.fixture(name="_sockrace_proxies_asyncio")(
        _proxies_on_pytest_asyncio)
    _ASYNCIO_FIXTURE = "_sockrace_proxies_asyncio"


@pytest.fixture
def fault_proxy(request: pytest.FixtureRequest) -> FaultProxies:
    """Start FaultProxy on the test's event loop: `proxy = await fault_proxy((host, port), **faults)`."""
    if "anyio_backend" in request.fixturenames:
        backend = request.getfixturevalue("anyio_backend_name")
        if backend != "asyncio":
            pytest.fail(f"fault_proxy runs on asyncio only, not on anyio's {backend} backend", pytrace=False)
        proxies: FaultProxies = request.getfixturevalue("_sockrace_proxies_anyio")
        return proxies
    if _ASYNCIO_FIXTURE is None:
        pytest.fail("fault_proxy needs an async test run by anyio (@pytest.mark.anyio) or by "
                    "pytest-asyncio (@pytest.mark.asyncio, which is not installed)", pytrace=False)
    proxies = request.getfixturevalue(_ASYNCIO_FIXTURE)
    return proxies


def replay_command(seed: int) -> str:
    """The pytest command that runs the current test again with `seed`."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    test = current.rpartition(" (")[0] or current
    return shlex.join(["pytest", test, "--sockrace-seed", str(seed)]) if test else \
        f"pytest --sockrace-seed {seed}"


def assert_no_crossing(result: HammerResult) -> None:
    """Fail the test when a call of `result` crossed, returned a wrong value or was stuck, saying
    which call got whose reply (or hung) and how to replay the seed. Errors and timeouts alone do
    not fail it."""
    if result.ok:
        return
    pytest.fail(f"{result.summary()}\n{result.explain()}\n"
                f"replay: {replay_command(result.decisions.seed)}", pytrace=False)
