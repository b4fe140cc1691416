"""The redis-py example against a real redis-server, through FaultProxy and hammer.

redis-py 4.5.3 hands cancelled commands' replies to other callers (CVE-2023-28859); 4.5.4 and the
newest release pinned in examples/requirements-redis-newest.txt never do, and still answer most
calls correctly. Each test starts a redis-server of its own on a free port and stops it.

Needs Debian's redis-server and the pinned redis-py versions (`python examples/redis_versions.py
install`). Without them these tests skip, saying what is missing; under CI (CI=true, as .ci/run
sets it), where .ci/run provides both, they fail instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.redis_check import SCENARIO, SeedResult, check_version
from examples.redis_server import RedisServer, RedisServerError, find_redis_server
from examples.redis_versions import installed, labels, pinned, site_dir

# Three seeds of 200 calls each: about half a second per version, and 4.5.3 crosses in every one.
SEEDS = [0, 1, 2]
CHILD_TIMEOUT_S = 30.0
FIXED = [label for label in labels() if label != "4.5.3"]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: .ci/run should have provided it")
    pytest.skip(reason)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if find_redis_server() is None:
        _unavailable("redis-server is not installed (apt-get install redis-server)")
    try:
        server = RedisServer.start()
    except RedisServerError as exc:
        _unavailable(str(exc))
        raise
    with server:
        yield server
    assert server.process.returncode is not None


def _site(label: str) -> Path:
    if not installed(label):
        _unavailable(f"redis-py {label} is not installed in {site_dir(label)} "
                     "(python examples/redis_versions.py install)")
    return site_dir(label)


def _check(label: str, server: RedisServer) -> list[SeedResult]:
    results = check_version(_site(label), server.port, SEEDS, timeout_s=CHILD_TIMEOUT_S)
    assert [r.seed for r in results] == SEEDS
    assert {r.redis_py for r in results} == {pinned(label)}
    return results


def test_redis_py_4_5_3_hands_a_cancelled_reply_to_another_call(redis_server: RedisServer) -> None:
    results = _check("4.5.3", redis_server)
    for result in results:
        assert result.crossed > 0, result
        assert result.first_crossed_s is not None
        assert result.first_crossed_s < 1.0
        assert "was returned to call" in result.explanation


@pytest.mark.parametrize("label", FIXED)
def test_fixed_redis_py_never_crosses_and_still_answers(label: str, redis_server: RedisServer) -> None:
    results = _check(label, redis_server)
    for result in results:
        assert (result.crossed, result.wrong, result.unfinished) == (0, 0, 0), result
        assert result.correct > result.calls // 2, result
        assert result.correct + result.timeouts + result.errors + result.cancelled == result.calls
        assert "no call returned another call's value" in result.explanation


@pytest.mark.parametrize(("label", "exit_code"), [("4.5.3", 1), ("newest", 0)])
def test_sockrace_check_command_exit_code(label: str, exit_code: int, redis_server: RedisServer) -> None:
    environment = dict(os.environ, PYTHONPATH=str(_site(label)))
    completed = subprocess.run(
        [sys.executable, "-W", "error", "-m", "sockrace", "check", f"{SCENARIO}:scenario",
         "--upstream", f"127.0.0.1:{redis_server.port}", "--seed", "0"],
        capture_output=True, text=True, env=environment, timeout=CHILD_TIMEOUT_S, check=False)
    assert completed.returncode == exit_code, completed.stdout + completed.stderr
    assert completed.stderr == ""
    assert "--seed 0" in completed.stdout.splitlines()[-1]  # the replay command


def test_redis_server_stops_and_leaves_its_port_free(redis_server: RedisServer) -> None:
    redis_server.stop()
    assert redis_server.process.returncode is not None
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(redis_server.address)  # fails while anything still listens there
        listener.listen()
