"""A throwaway redis-server on a free loopback port, for the redis-py examples and their tests.

    with RedisServer.start() as server:
        ... connect to ("127.0.0.1", server.port) ...

Nothing is persisted (no RDB snapshots, no AOF) and its working directory is a temporary one,
removed on stop. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import Final

HOST: Final = "127.0.0.1"
# A local redis-server answers PING within milliseconds of starting; ten seconds means it will not.
READY_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 5.0
# Another process may take the free port between our probe and redis-server's bind: try a few.
PORT_ATTEMPTS: Final = 3
LOG_NAME: Final = "redis.log"


class RedisServerError(RuntimeError):
    """redis-server is missing, would not start, or would not answer."""


def find_redis_server() -> str | None:
    return shutil.which("redis-server")


def redis_server_version(executable: str) -> str:
    """The version `redis-server --version` reports, such as "7.0.15"."""
    output = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=STOP_TIMEOUT_S,
                            check=True).stdout
    found = re.search(r"\bv=(\S+)", output)
    if found is None:
        raise RedisServerError(f"cannot read the version in {output.strip()!r}")
    return found.group(1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A running redis-server process; `stop()` (or leaving the `with` block) ends it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, directory: str, version: str) -> None:
        self.process = process
        self.port = port
        self.address = (HOST, port)
        self.version = version
        self._directory = directory

    @classmethod
    def start(cls, executable: str | None = None, timeout_s: float = READY_TIMEOUT_S) -> RedisServer:
        """Start redis-server on a free port and wait until it answers PING.

        Raises RedisServerError when there is no redis-server or it does not answer within `timeout_s`.
        """
        executable = executable or find_redis_server()
        if executable is None:
            raise RedisServerError("redis-server is not installed (Debian: apt-get install redis-server)")
        version = redis_server_version(executable)
        failures = []
        for _ in range(PORT_ATTEMPTS):
            directory = tempfile.mkdtemp(prefix="sockrace-redis-")
            port = free_port()
            process = subprocess.Popen(
                [executable, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                 "--dir", directory, "--daemonize", "no", "--loglevel", "warning",
                 "--logfile", os.path.join(directory, LOG_NAME)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            server = cls(process, port, directory, version)
            deadline = time.monotonic() + timeout_s
            while process.poll() is None and time.monotonic() < deadline:
                if _answers_ping(port):
                    return server
                time.sleep(0.02)
            failures.append(server.stop())
        raise RedisServerError(f"redis-server would not start: {failures[-1] or 'no answer to PING'}")

    def stop(self) -> str:
        """End the server (SIGTERM, then SIGKILL after STOP_TIMEOUT_S); returns the last line it logged."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        lines: list[str] = []
        log_path = os.path.join(self._directory, LOG_NAME)
        with contextlib.suppress(OSError), open(log_path, errors="replace") as log:
            lines = [line.strip() for line in log if line.strip()]
        shutil.rmtree(self._directory, ignore_errors=True)
        return lines[-1] if lines else ""

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
