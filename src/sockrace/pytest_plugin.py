"""sockrace's pytest plugin: fault proxies as a fixture, one seed option, and an assertion with a replay.

Registered through the `pytest11` entry point, so pytest loads it when sockrace is installed; nothing
else imports it, and sockrace itself never imports pytest. It provides:

    fault_proxy          a factory fixture: `proxy = await fault_proxy((host, port), split=True)`
                         starts a FaultProxy (seeded with --sockrace-seed unless `seed=` is given);
                         every proxy it made is closed at teardown. Works in async tests run by
                         anyio's plugin (@pytest.mark.anyio) and by pytest-asyncio (@pytest.mark.asyncio)
    sockrace_seed        the --sockrace-seed S option's value (default 0; a test with a saved failure
                         gets the saved seed): pass it to hammer(seed=...)
    sockrace_replay      the saved failure's decisions while its seed is replayed, else None: pass it
                         to hammer(replay=...), so that "auto" deadlines fall where they fell
    assert_no_crossing   fails a test whose hammer result has a crossed or wrong reply, with the
                         explanation and the command that replays the failing seed; a test that takes
                         sockrace_seed (fault_proxy does) has its run record saved in the database
    @pytest.mark.sockrace_schedules(N, perturbation="shuffle")
                         runs an `async def` test N times, on seeded scheduling loops (schedule
                         seeds 0 to N-1, check/schedule.py), and fails with the first schedule seed
                         under which it fails; --sockrace-schedule-seed S runs it under S alone.
                         Under pytest-asyncio's auto mode it takes the test over from pytest-asyncio

    async def test_my_client(fault_proxy, sockrace_seed, sockrace_replay):
        proxy = await fault_proxy(server_address, delay_ms=(1, 5))
        client = MyClient(proxy.host, proxy.port)
        result = await hammer(client.get_value, expected_value, seed=sockrace_seed, replay=sockrace_replay)
        assert_no_crossing(result)

The database of failures, as hypothesis keeps its examples: a directory, `.sockrace/failures/` under pytest's
rootdir (ini `sockrace_database`, relative to the rootdir; `--sockrace-database DIR`, relative to the
current directory; "none" turns it off), with one run record (check/record.py) per failing test, named
after its node id. assert_no_crossing writes it when it fails; the next run of that test gets the saved
seed from sockrace_seed (and its decisions from sockrace_replay) instead of the default, so it replays the
failure first; when the test passes under the saved seed, the file is removed. --sockrace-seed S
overrides the saved seed (and the file stays, unless S is the saved seed and the test passes). A file
that cannot be read is reported in one line at the end of the run and ignored.

sockrace.check is imported only when a fixture or the assertion is used, or a saved failure is read:
loading the plugin costs a pytest run nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import re
import shlex
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import pytest

if TYPE_CHECKING:
    from sockrace.check import FaultProxy, HammerResult
    from sockrace.check.decisions import Decisions, Timeout
    from sockrace.check.record import RunRecord
    from sockrace.check.schedule import Perturbation

DEFAULT_SEED = 0
SCHEDULES_MARKER = "sockrace_schedules"
# Where failing tests' records are kept, under pytest's rootdir (as hypothesis keeps `.hypothesis/`).
DEFAULT_DATABASE = ".sockrace/failures"
DATABASE_OFF = "none"
# The readable part of a record's file name: the tail of the node id (the test's name is at its end).
STEM_CHARS = 60


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sockrace", "sockrace: seeded fault proxies and concurrent calls")
    # No default here: a seed given on the command line overrides a saved failure's, the default does not.
    group.addoption("--sockrace-seed", type=int, metavar="S",
                    help="seed of the fault_proxy fixture's proxies and of `sockrace_seed` "
                    f"(default: a test's saved failure's seed, else {DEFAULT_SEED})")
    group.addoption("--sockrace-database", metavar="DIR",
                    help="directory of the failing tests' run records, replayed first by the next run "
                    f"(default: the ini option sockrace_database; '{DATABASE_OFF}': save and replay nothing)")
    group.addoption("--sockrace-schedule-seed", type=int, metavar="S",
                    help=f"run the tests marked {SCHEDULES_MARKER} under schedule seed S only (replays "
                    "the schedule a failure names)")


    parser.addini("sockrace_database", default=DEFAULT_DATABASE,
                  help="directory of the failing tests' run records, relative to the rootdir "
                  f"(default: {DEFAULT_DATABASE}; '{DATABASE_OFF}': save and replay nothing)")


_DATABASE = pytest.StashKey["Path | None"]()
_NOTES = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{SCHEDULES_MARKER}(n, perturbation='shuffle'): run this async test on n seeded "
        "scheduling loops (schedule seeds 0 to n-1) and fail with the first schedule seed that fails")
    config.stash[_DATABASE] = _database(config)
    config.stash[_NOTES] = []


def _database(config: pytest.Config) -> Path | None:
    """The database directory, None when turned off. A command-line path is the user's, typed where they
    stand; the ini's belongs to the project, like pytest's own cache_dir, and is read from the rootdir."""
    given: str | None = config.getoption("sockrace_database")
    if given is not None:
        base, value = config.invocation_params.dir, given
    else:
        base, value = config.rootpath, str(config.getini("sockrace_database")) or DEFAULT_DATABASE
    if value.strip().lower() == DATABASE_OFF:
        return None
    return base / Path(value).expanduser()


def record_file(database: Path, nodeid: str) -> Path:
    """The file of `nodeid`'s saved failure: a readable stem (the node id's tail, made safe for any file
    system) and a hash of the whole node id, which keeps apart the tests whose stems are alike."""
    digest = hashlib.sha256(nodeid.encode("utf-8")).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_.")[-STEM_CHARS:]
    return database / f"{stem}-{digest}.json"


def _shown(config: pytest.Config, path: Path) -> str:
    """`path` as the user would type it: relative to where pytest was started, when it is under it."""
    try:
        return str(path.relative_to(config.invocation_params.dir))
    except ValueError:
        return str(path)


def _note(config: pytest.Config, line: str) -> None:
    """A line for the end of the run: said once, where it is seen, and never failing a test (a warning
    would, under filterwarnings = error)."""
    config.stash.setdefault(_NOTES, []).append(" ".join(line.split()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    for line in config.stash.get(_NOTES, []):
        terminalreporter.write_line(line)


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


@dataclass
class _Running:
    """A test that took sockrace_seed: what assert_no_crossing needs to save its failure, and what the
    end of the test needs to remove a failure it no longer has."""

    config: pytest.Config
    nodeid: str
    seed: int
    path: Path | None  # its record's file; None when the database is off
    saved: RunRecord | None  # the failure saved by an earlier run, when one was read
    proxies: FaultProxies | None = None

    @property
    def replaying(self) -> bool:
        return self.saved is not None and self.saved.setting.seed == self.seed


_RUNNING = pytest.StashKey[_Running]()
# The test running now, for assert_no_crossing, which is handed only a result. A plain global rather than
# a context variable: anyio's runner task and the seeded loops were started in contexts of their own.
_running: _Running | None = None


def _read_saved(config: pytest.Config, path: Path, nodeid: str) -> RunRecord | None:
    """The failure saved for `nodeid`, or None. A file that cannot be replayed (not a record, a newer
    version, another test's) is ignored with a note: the test then runs as if nothing were saved."""
    if not path.exists():
        return None
    from sockrace.check.record import load
    from sockrace.errors import RecordError

    try:
        record = load(path)
    except RecordError as exc:  # its sentence names the file: as everywhere else here, where the user stands
        _note(config, f"sockrace: ignored the saved failure of {nodeid}: "
                      f"{str(exc).replace(str(path), _shown(config, path))}")
        return None
    except OSError as exc:
        _note(config, f"sockrace: ignored the saved failure of {nodeid}: cannot read {_shown(config, path)}: "
                      f"{exc.strerror or exc}")
        return None
    if record.scenario != nodeid:
        _note(config, f"sockrace: ignored {_shown(config, path)}: it holds the failure of {record.scenario}, "
                      f"not of {nodeid}")
        return None
    return record


@pytest.fixture
def sockrace_seed(request: pytest.FixtureRequest) -> Iterator[int]:
    """The seed to give your hammer(): the --sockrace-seed option's value when given, else the seed of the
    test's saved failure (so that it is replayed first), else 0."""
    global _running
    config, item = request.config, request.node
    database = config.stash.get(_DATABASE, None)
    path = None if database is None else record_file(database, item.nodeid)
    saved = None if path is None else _read_saved(config, path, item.nodeid)
    given: int | None = config.getoption("sockrace_seed")
    seed = given if given is not None else saved.setting.seed if saved is not None else DEFAULT_SEED
    running = _Running(config, item.nodeid, seed, path, saved)
    item.stash[_RUNNING] = running
    # Restored, not cleared: a pytester session runs inside a test that may itself have taken the seed.
    previous, _running = _running, running
    try:
        yield seed
    finally:
        _running = previous


@pytest.fixture
def sockrace_replay(request: pytest.FixtureRequest, sockrace_seed: int) -> Decisions | None:
    """The decisions of the test's saved failure while its seed is the one in use, else None: give them to
    hammer(replay=...), which then makes the failing run's choices again, its "auto" deadlines included."""
    running: _Running | None = request.node.stash.get(_RUNNING, None)
    if running is None or running.saved is None or not running.replaying:
        return None
    return running.saved.setting.decisions


# A test that takes one of these checks a client with sockrace.
_CHECKING_FIXTURES = frozenset({"sockrace_seed", "sockrace_replay", "fault_proxy"})


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A test that checks a client with sockrace runs with os._exit refused (guest.os_exit_refused): a
    client's os._exit(0) would end the whole session with exit 0, the tests after it never run and
    this one never reported. Refused, it fails the test (a SystemExit, or a note of the attempt when
    a thread swallowed it)."""
    fixtures = getattr(item, "fixturenames", ())
    if _CHECKING_FIXTURES.isdisjoint(fixtures) and _SCHEDULES not in item.stash:
        return (yield)
    from sockrace.check.guest import os_exit_refused

    with os_exit_refused() as asked:
        result = yield
    if asked:
        pytest.fail(f"the test called os._exit({asked[0]}), which would end the test session", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None],
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test that passed under its saved failure's seed no longer has that failure: its file goes."""
    report = yield
    running = item.stash.get(_RUNNING, None)
    if (call.when == "call" and report.passed and running is not None and running.replaying
            and running.path is not None):
        try:
            running.path.unlink(missing_ok=True)
        except OSError as exc:
            _note(item.config, f"sockrace: {item.nodeid} passed under its saved seed {running.seed}; "
                               f"cannot remove {_shown(item.config, running.path)}: {exc.strerror or exc}")
        else:
            _note(item.config, f"sockrace: {item.nodeid} passed under its saved seed {running.seed}: "
                               f"removed {_shown(item.config, running.path)}")
    return report


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
    elif _ASYNCIO_FIXTURE is None:
        pytest.fail("fault_proxy needs an async test run by anyio (@pytest.mark.anyio) or by "
                    "pytest-asyncio (@pytest.mark.asyncio, which is not installed)", pytrace=False)
    else:
        proxies = request.getfixturevalue(_ASYNCIO_FIXTURE)
    running = request.node.stash.get(_RUNNING, None)
    if running is not None:  # a saved failure names the proxy's upstream and faults
        running.proxies = proxies
    return proxies


def replay_command(seed: int, nodeid: str | None = None) -> str:
    """The pytest command that runs the test `nodeid` (default: the current test) again with `seed`."""
    if nodeid is None:
        current = os.environ.get("PYTEST_CURRENT_TEST", "")
        nodeid = current.rpartition(" (")[0] or current
    return shlex.join(["pytest", nodeid, "--sockrace-seed", str(seed)]) if nodeid else \
        f"pytest --sockrace-seed {seed}"


def _timeout_of(decisions: Decisions) -> Timeout:
    """The deadlines a run was given, read back from its decisions (the plugin never sees hammer's
    arguments): "auto" when a calibrating run cut calls, else the range its cuts fell in, else None."""
    from sockrace.check.decisions import Interrupt

    cuts = [d for d in decisions.by_index() if d.interrupt is Interrupt.DEADLINE]
    if decisions.calibrate and cuts:
        return "auto"
    moments = [d.at_ms for d in cuts if d.at_ms is not None]
    return (min(moments), max(moments)) if moments else None


def _record_of(running: _Running, result: HammerResult) -> RunRecord:
    """The run record of a failing test: its node id for the scenario, the seed it was given, the run's
    decisions and tape, the failure and the story; the upstream and faults of its first proxy (["", 0]
    and no faults when it started none). hammer's deadline and stuck bound are not seen by the plugin: the
    record holds their defaults, which a replay of the decisions does not use."""
    from sockrace.check.explore import Failure, Setting
    from sockrace.check.faults import Faults
    from sockrace.check.hammer import DEFAULT_DEADLINE_S
    from sockrace.check.record import RunRecord
    from sockrace.check_report import counts
    from sockrace.cli.runs import sockrace_version

    decisions = result.decisions
    proxy = running.proxies.started[0] if running.proxies is not None and running.proxies.started else None
    setting = Setting(running.seed, decisions.tasks, decisions.calls, _timeout_of(decisions),
                      proxy.faults if proxy is not None else Faults(), decisions=decisions, tape=result.tape)
    upstream = proxy.upstream if proxy is not None else ("", 0)
    return RunRecord(running.nodeid, upstream, setting, Failure.first_of(result), DEFAULT_DEADLINE_S, None,
                     counts=counts(result), story=result.explain(), sockrace_version=sockrace_version(),
                     misaligned_at=result.misaligned_at)


def _save_failure(running: _Running, path: Path, result: HammerResult) -> str:
    """Save the failing run to `path`; the line that says where (or why it could not be saved)."""
    from sockrace.check.record import save

    shown = _shown(running.config, path)
    # Written aside and renamed: a run killed while writing leaves no half record for the next run.
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save(_record_of(running, result), partial)
        os.replace(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        return f"not saved: cannot write {shown}: {exc.strerror or exc}"
    # Said when replaying: the user who ran plain `pytest` learns where the seed in the replay line came from.
    again = "its replay failed again; " if running.replaying else ""
    return f"saved: {shown} ({again}the next run of this test replays it first, until it passes)"


def assert_no_crossing(result: HammerResult) -> None:
    """Fail the test when a call of `result` crossed, returned a wrong value or was stuck, saying
    which call got whose reply (or hung) and how to replay the seed. Errors and timeouts alone do
    not fail it. In a test that took `sockrace_seed`, the failing run's record is saved first (in the
    database, unless it is turned off), to be replayed by the test's next run."""
    if result.ok:
        return
    lines = [result.summary(), result.explain()]
    running = _running
    if running is None:
        lines.append(f"replay: {replay_command(result.decisions.seed)}")
    else:
        if running.path is not None:
            lines.append(_save_failure(running, running.path, result))
        lines.append(f"replay: {replay_command(running.seed, running.nodeid)}")
    pytest.fail("\n".join(lines), pytrace=False)
