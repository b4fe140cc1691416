"""The pytest plugin, run the way a user's test suite runs it: pytester sessions with anyio's plugin and
pytest-asyncio (strict) side by side, a client that is safe and one that crosses."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from helpers import RACES, assert_replay_fails_again, plugin_ini, saved_failures

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(60)

INI = plugin_ini("strict")

CONFTEST = """
import pytest

@pytest.fixture
def anyio_backend():
    return "asyncio"
"""

# One shared connection to sockrace's server through the proxy, every reply held 2 ms: the naive
# call has many requests in flight at once, and a second reader is refused by asyncio, leaving its
# reply for the next call. The locked call makes one request at a time and has no deadline to miss.
CLIENT_TESTS = '''
import asyncio
import socket

import pytest

from sockrace.check import hammer
from sockrace.pytest_plugin import assert_no_crossing
from sockrace.server import Server, ServerConfig

PROXIES = []


async def check(fault_proxy, seed, *, locked):
    async with Server(ServerConfig(port=0)) as server:
        proxy = await fault_proxy(server.address, delay_ms=(2, 2), direction="to_client")
        PROXIES.append(proxy.address)
        assert proxy.seed == seed
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        lock = asyncio.Lock() if locked else None

        async def request(i):
            writer.write(f"ECHO v{i}\\n".encode())
            await writer.drain()
            return (await reader.readline()).decode().strip()

        async def call(i):
            if lock is None:
                return await request(i)
            async with lock:
                return await request(i)

        try:
            result = await hammer(call, lambda i: f"OK v{i}", tasks=4, calls=5, timeout_ms=None, seed=seed)
        finally:
            writer.close()
            await writer.wait_closed()
        assert_no_crossing(result)


@pytest.mark.anyio
async def test_locked_anyio(fault_proxy, sockrace_seed):
    await check(fault_proxy, sockrace_seed, locked=True)


@pytest.mark.asyncio
async def test_locked_asyncio(fault_proxy, sockrace_seed):
    await check(fault_proxy, sockrace_seed, locked=True)


@pytest.mark.anyio
async def test_naive_anyio(fault_proxy, sockrace_seed):
    await check(fault_proxy, sockrace_seed, locked=False)


@pytest.mark.asyncio
async def test_naive_asyncio(fault_proxy, sockrace_seed):
    await check(fault_proxy, sockrace_seed, locked=False)


def test_zz_every_proxy_was_closed_at_teardown():
    assert len(PROXIES) == 4
    for address in PROXIES:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=5).close()
'''


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_plugged_client=CLIENT_TESTS)
    return pytester


def test_safe_clients_pass_and_crossing_ones_fail_with_the_story_and_the_replay(
    suite: pytest.Pytester,
) -> None:
    result = suite.runpytest("--sockrace-seed", "7")
    result.assert_outcomes(passed=3, failed=2)
    text = result.stdout.str()
    for plugin in ("anyio", "asyncio"):
        assert f"FAILED test_plugged_client.py::test_naive_{plugin}" in text
        replay = f"replay: pytest test_plugged_client.py::test_naive_{plugin} --sockrace-seed 7"
        result.stdout.fnmatch_lines([replay])
    result.stdout.fnmatch_lines(["*: 20 calls: * crossed*", "call * was returned to call *"])
    assert "Traceback" not in text  # the failure is the sentence, not our stack


def test_a_crossing_clients_record_names_its_proxy_and_the_next_run_replays_its_seed(
    suite: pytest.Pytester,
) -> None:
    suite.runpytest("-k", "naive", "--sockrace-seed", "7").assert_outcomes(failed=2, deselected=3)
    records = saved_failures(suite.path / ".sockrace" / "failures")
    naive = [f"test_plugged_client.py::test_naive_{plugin}" for plugin in ("anyio", "asyncio")]
    assert sorted(records) == naive
    for record in records.values():
        host, port = record.upstream  # the server behind the proxy
        assert (host, port > 0) == ("127.0.0.1", True)
        assert (record.setting.faults.delay_ms, record.setting.faults.direction) == ((2, 2), "to_client")
        assert (record.setting.seed, record.setting.timeout_ms) == (7, None)
    # No seed given: each test gets its saved seed 7 (check() asserts its proxy was seeded with it too).
    again = suite.runpytest("-k", "naive")
    again.assert_outcomes(failed=2, deselected=3)
    again.stdout.fnmatch_lines([f"replay: pytest {test} --sockrace-seed 7" for test in naive])


def test_the_seed_defaults_to_0(suite: pytest.Pytester) -> None:
    result = suite.runpytest("-k", "naive_anyio")
    result.assert_outcomes(failed=1, deselected=4)
    result.stdout.fnmatch_lines(["replay: pytest test_plugged_client.py::test_naive_anyio --sockrace-seed 0"])


def test_fault_proxy_on_trio_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_on_trio="""
        import pytest

        @pytest.fixture
        def anyio_backend():
            return "trio"

        @pytest.mark.anyio
        async def test_proxy(fault_proxy):
            await fault_proxy(("127.0.0.1", 1))
    """)
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fault_proxy runs on asyncio only, not on anyio's trio backend*"])


def test_a_bad_seed_is_a_usage_error(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--sockrace-seed", "many")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--sockrace-seed: invalid int value: 'many'*"])


# The order-dependent tests (RACES' race) fail under some schedule, never on the plain loop.
ORDER_TESTS = """
import asyncio

import pytest

RUNS = []
""" + RACES + """

def test_the_plain_loop_never_exposes_it():
    for _ in range(200):
        asyncio.run(race([]))


@pytest.mark.sockrace_schedules(50)
async def test_order_dependent():
    await race([])


@pytest.mark.sockrace_schedules(50, perturbation="reverse")
async def test_order_dependent_reversed():
    await race([])


@pytest.mark.sockrace_schedules(5)
async def test_order_independent(tmp_path):
    await no_race()
    RUNS.append(tmp_path)


def test_zz_the_order_independent_test_ran_once_per_schedule():
    assert len(RUNS) == 5


@pytest.mark.sockrace_schedules(3)
def test_sync():
    pass


@pytest.mark.sockrace_schedules(0)
async def test_no_schedules():
    pass


@pytest.mark.sockrace_schedules(3)
@pytest.mark.anyio
async def test_claimed_by_anyio():
    pass
"""


@pytest.fixture
def orders(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_orders=ORDER_TESTS)
    return pytester


def test_schedules_marker_finds_an_order_dependent_bug_and_names_the_schedule_seed(
    orders: pytest.Pytester,
) -> None:
    result = orders.runpytest()
    result.assert_outcomes(passed=3, failed=2, errors=3)
    result.stdout.fnmatch_lines([
        "*@pytest.mark.sockrace_schedules needs an `async def` test",
        "*@pytest.mark.sockrace_schedules(n): n must be a whole number >= 1, got 0",
        "*@pytest.mark.sockrace_schedules runs the test on its own seeded loops: drop @pytest.mark.anyio",
        "*failed under schedule seed * (shuffle, * scheduling decisions): "
        "AssertionError: the consumer ran before the producer",
        "*failed under schedule seed * (reverse, * scheduling decisions): "
        "AssertionError: the consumer ran before the producer",
    ])
    assert_replay_fails_again(orders, result, "test_orders.py::test_order_dependent")


def test_importing_sockrace_does_not_import_pytest() -> None:
    code = textwrap.dedent("""
        import sys
        import sockrace, sockrace.check, sockrace.cli
        sys.exit('pytest' in sys.modules)
    """)
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=30).returncode == 0


def test_assert_no_crossing_fails_a_stuck_call_too() -> None:
    import asyncio

    from sockrace.check import hammer
    from sockrace.pytest_plugin import assert_no_crossing

    class Quiet:  # a wire on which nothing is owed and nothing moves
        def server_owes(self) -> bool:
            return False

        def arrivals(self) -> int:
            return 0

    async def hangs(i: int) -> str:
        if i == 1:
            await asyncio.Event().wait()
        return f"v{i}"

    result = asyncio.run(hammer(hangs, lambda i: f"v{i}", tasks=1, calls=2, timeout_ms=None, wire=Quiet()))
    with pytest.raises(pytest.fail.Exception, match=r"call 1 \(expects 'v1', task 0\) was stuck"):
        assert_no_crossing(result)


EXITING_TESTS = '''
import os, threading

def test_a_client_exits(sockrace_seed):
    os._exit(0)

def test_a_clients_thread_exits(sockrace_seed):
    thread = threading.Thread(target=os._exit, args=(0,))
    thread.start()
    thread.join()

def test_after_them(sockrace_seed):
    pass
'''


def test_a_client_that_calls_os_exit_fails_its_test_and_the_session_goes_on(
        pytester: pytest.Pytester) -> None:
    # In a process of its own: were os._exit let through, it would end this session with exit 0.
    pytester.makeini(INI)
    pytester.makepyfile(test_exiting=EXITING_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    # The thread's refusal reaches pytest as the thread's unhandled exception; without pytest's plugin
    # for those, as the plugin's note of the attempt: a failure either way.
    result.stdout.fnmatch_lines(["FAILED test_exiting.py::test_a_client_exits - *OsExitCalled: 0",
                                 "FAILED test_exiting.py::test_a_clients_thread_exits*"])
    unreported = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:threadexception")
    unreported.assert_outcomes(passed=1, failed=2)
    unreported.stdout.fnmatch_lines(["*the test called os._exit(0), which would end the test session*"])
