"""Test helpers: in-memory streams that make races fully deterministic, and a real server fixture.

Over `memory_connection`, bytes written by one side are fed to the other side's StreamReader in
the same call, so everything that happens is ordered by the event loop's FIFO of ready callbacks:
the same seed gives the same interleaving, and the tests can pin exact verdict counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any, Self

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from sockrace.check.decisions import CallDecision, Interrupt
from sockrace.check.record import RunRecord, load
from sockrace.client import STRATEGIES
from sockrace.connection import SharedConnection
from sockrace.events import Recorder
from sockrace.outcome import RunResult
from sockrace.protocol import Echo, Sleep, format_request
from sockrace.race import race
from sockrace.server import Server, ServerConfig, Sweep
from sockrace.session import CLOSE, ENDED, NEED_DATA, Session, Wait, Yield
from sockrace.workload import Plan, Step, Verdict, WorkloadConfig


class MemoryWriter:
    """The parts of asyncio.StreamWriter the client and the server use, writing into a peer reader."""

    def __init__(self, peer: asyncio.StreamReader) -> None:
        self.peer = peer
        self.closed = False
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("memory stream closed")
        self.written += data
        self.peer.feed_data(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("memory stream closed")

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0  # every write reaches the peer's reader at once

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.peer.feed_eof()

    def write_eof(self) -> None:
        self.peer.feed_eof()

    def can_write_eof(self) -> bool:
        return True

    async def wait_closed(self) -> None:
        return None

    @property
    def transport(self) -> MemoryWriter:
        return self  # the transport's abort() is close() here: nothing is ever left unsent

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("memory", 0)}.get(name, default)


class MemoryLink:
    """A client connection wired straight into `server.handle_connection`, with no socket.

    `connection.reopen()` wires a fresh pair into the same server (as reconnecting over TCP would).
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.server_tasks: list[asyncio.Task[None]] = []
        client_reader, self.client_writer, self.server_writer = self._open_pair()
        self.server_task = self.server_tasks[0]
        self.connection = SharedConnection(client_reader, self.client_writer, opener=self._reopen)

    def _open_pair(self) -> tuple[asyncio.StreamReader, MemoryWriter, MemoryWriter]:
        client_reader = asyncio.StreamReader()
        server_reader = asyncio.StreamReader()
        client_writer = MemoryWriter(server_reader)
        server_writer = MemoryWriter(client_reader)
        self.server_tasks.append(asyncio.create_task(
            self.server.handle_connection(server_reader, server_writer)  # type: ignore[arg-type]
        ))
        return client_reader, client_writer, server_writer

    async def _reopen(self) -> tuple[asyncio.StreamReader, MemoryWriter]:
        client_reader, self.client_writer, self.server_writer = self._open_pair()
        return client_reader, self.client_writer

    async def close(self) -> None:
        self.client_writer.close()
        await asyncio.wait_for(asyncio.gather(*self.server_tasks), 5)


# ------------------------------------------------------------------ independent wire clients (anyio)


class LineClient:
    """A raw-bytes client written with anyio, independent of sockrace.client, for server tests."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.buffered = BufferedByteReceiveStream(stream)

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> LineClient:
        return cls(await anyio.connect_tcp(*address))

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def read_line(self) -> bytes:
        """One line with its newline. Raises anyio.IncompleteRead at EOF."""
        return await self.buffered.receive_until(b"\n", 1 << 20) + b"\n"

    async def request(self, line: bytes) -> bytes:
        await self.send(line)
        return await self.read_line()

    async def read_to_eof(self) -> bytes:
        """Everything until the server closes. Raises anyio.BrokenResourceError on a reset."""
        chunks = [bytes(self.buffered.buffer)]
        while True:
            try:
                chunks.append(await self.buffered.receive())
            except anyio.EndOfStream:
                return b"".join(chunks)

    def raw_socket(self) -> socket.socket:
        return self.stream.extra(SocketAttribute.raw_socket)

    def set_reset_on_close(self) -> None:
        """SO_LINGER with a zero timeout: closing sends a TCP reset instead of a FIN."""
        self.raw_socket().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async def aclose(self) -> None:
        await self.stream.aclose()


class LoopErrors:
    """Records every call to the running loop's exception handler (none is expected, ever)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def install(self) -> LoopErrors:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: self.calls.append(context))
        return self

    def check(self) -> None:
        gc.collect()  # "Task exception was never retrieved" is reported when the task is collected
        assert self.calls == [], [str(c.get("exception") or c.get("message")) for c in self.calls]


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds (for at most 10 s). Only for states that no event announces,
    such as the server noticing that a peer's socket closed."""
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - there is no event to wait on
            await anyio.sleep(0.005)


def free_port() -> int:
    """A loopback port that nothing listens on: the probe socket that found it is closed again, so a
    connection to it is refused and a server may bind it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ------------------------------------------------------------------ the server as a separate process


def sockrace_command(*, open_files: int | None = None) -> list[str]:
    """The command line that runs `python -m sockrace`, with at most `open_files` file descriptors.

    The limit is set by the child itself rather than by a preexec_fn, which is unsafe in a process
    with threads.
    """
    if open_files is None:
        return [sys.executable, "-m", "sockrace"]
    program = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({open_files}, {open_files}))\n"
        "from sockrace.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return [sys.executable, "-c", program]


class SockraceProcess:
    """`python -m sockrace COMMAND ...` in a child process: its own memory, its own signals.

    `with SockraceProcess(["proxy", ...]) as proc:` (or `async with`, which runs the blocking parts in
    a thread) starts it and reads its first line, "... listening on HOST:PORT..."; on exit it is sent
    SIGTERM if still running and reaped. `stdout_lines`, `stderr` and `returncode` are then set.
    stderr goes to a file, so that a process printing much there can never block on a full pipe.
    """

    def __init__(self, arguments: list[str], *, open_files: int | None = None,
                 finish_timeout_s: float = 20.0) -> None:
        self.arguments = arguments
        self.open_files = open_files  # RLIMIT_NOFILE of the process; None: inherited
        self.finish_timeout_s = finish_timeout_s  # how long finish() waits before it kills the process
        self.process: subprocess.Popen[str] | None = None
        self.address = ("127.0.0.1", 0)
        self.stdout_lines: list[str] = []
        self.stderr = ""
        self.returncode: int | None = None
        self._stderr_file: IO[str] | None = None

    @property
    def port(self) -> str:
        return str(self.address[1])

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Self:
        self._stderr_file = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by finish()
        self.process = subprocess.Popen(
            [*sockrace_command(open_files=self.open_files), *self.arguments],
            stdout=subprocess.PIPE, stderr=self._stderr_file, text=True,
        )
        assert self.process.stdout is not None
        listening = self.process.stdout.readline()
        self.stdout_lines.append(listening.rstrip("\n"))
        where = listening.partition(" listening on ")[2].split()
        host, _, port = (where[0].rstrip(",") if where else "").rpartition(":")
        if not port.isdigit():
            self.finish(signal.SIGKILL)
            raise RuntimeError(f"sockrace {self.arguments[0]} did not start: {listening!r} {self.stderr!r}")
        self.address = (host, int(port))
        return self

    def finish(self, sig: int | None = signal.SIGTERM) -> int:
        """Send `sig` (None: none, it is to end by itself) unless the process already ended, collect its
        output, return its exit code."""
        process = self.process
        assert process is not None
        if self.returncode is not None:  # stopped already
            return self.returncode
        if sig is not None and process.poll() is None:
            process.send_signal(sig)
        try:
            rest, _ = process.communicate(timeout=self.finish_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            rest, _ = process.communicate()
            rest = (rest or "") + "\n(killed: it did not end)"
        self.returncode = process.returncode
        self.stdout_lines += (rest or "").splitlines()  # None when the test closed stdout
        if self._stderr_file is not None:
            self._stderr_file.seek(0)
            self.stderr = self._stderr_file.read()
            self._stderr_file.close()
        return self.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.finish()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """`finish` in a thread, so that the clients on this loop keep running while the process ends."""
        return await asyncio.to_thread(self.finish, sig)


class ServerProcess(SockraceProcess):
    """`python -m sockrace server --port 0 ...` in a child process (see SockraceProcess)."""

    def __init__(self, *options: str, open_files: int | None = None) -> None:
        super().__init__(["server", "--port", "0", *options], open_files=open_files)
        self.options = options

    def open_fds(self) -> int:
        """How many file descriptors the server process holds now (Linux)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def status(self, field: str) -> int:
        """A figure from /proc/PID/status in bytes (VmRSS: resident now, VmHWM: peak resident)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name == field:
                    number, unit = value.split()
                    assert unit == "kB"
                    return int(number) * 1024
        raise KeyError(field)


async def race_in_memory(
    mode: str,
    config: WorkloadConfig,
    *,
    recorder: Recorder | None = None,
    scenario: str = "shared connection",
    stall_timeout: float = 0.2,
) -> RunResult:
    """Race `config` in `mode` over a MemoryLink: the same seed always gives the same interleaving.

    The stall timeout only ends runs in which some coroutine waits for a reply that will never come;
    it decides no count, since an in-memory run never pauses for anything but such a wait.
    """
    link = MemoryLink(Server(ServerConfig()))
    strategy = STRATEGIES[mode](link.connection, recorder)
    try:
        return await race(strategy, Plan.build(config), scenario=scenario, stall_timeout=stall_timeout)
    finally:
        await strategy.aclose()
        await link.close()


# ------------------------------------------------------------------ scripted peers for client tests


def one_step(coroutine: int, payload: str, *, sleep_ms: int = 0, split_at: int = 0, pause: int = 0) -> Step:
    """A planned request of its own: ECHO `payload`, or SLEEP `sleep_ms` `payload`."""
    request = Sleep(ms=sleep_ms, text=payload) if sleep_ms else Echo(text=payload)
    return Step(coroutine, 0, payload, format_request(request), pause, split_at, 2 if split_at else 0)


def plan_of(*steps: Step) -> Plan:
    """A plan of one request per coroutine, made of the steps given."""
    config = WorkloadConfig(concurrency=len(steps), requests=1)
    return Plan(config, tuple((s,) for s in steps), {s.payload: s for s in steps})


async def settle(n: int = 10) -> None:
    """Let every ready task run until it blocks (more passes than any path of the client needs)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def cancelled(awaitable: Awaitable[object]) -> None:
    """Start `awaitable`, let it block, cancel it, and wait until the cancellation has landed."""
    task = asyncio.ensure_future(awaitable)
    await settle()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()


class ScriptedPeer:
    """The far end of a connection, played by the test: it sees what the client wrote and feeds the
    replies it likes. `reopen()` on the connection gives a fresh pair, recorded in `opened`."""

    def __init__(self) -> None:
        # Per connection opened: the client's reader (fed by `reply`) and the client's writer.
        self.opened: list[tuple[asyncio.StreamReader, MemoryWriter]] = []
        reader, writer = self._pair()
        self.connection = SharedConnection(reader, writer, opener=self._open)

    def _pair(self) -> tuple[asyncio.StreamReader, MemoryWriter]:
        to_client, writer = asyncio.StreamReader(), MemoryWriter(asyncio.StreamReader())
        self.opened.append((to_client, writer))
        return to_client, writer

    async def _open(self) -> tuple[asyncio.StreamReader, MemoryWriter]:
        return self._pair()

    @property
    def sent(self) -> bytes:
        """Everything the client wrote on the current connection."""
        return bytes(self.opened[-1][1].written)

    def reply(self, line: bytes) -> None:
        self.opened[-1][0].feed_data(line)

    def close(self) -> None:
        self.opened[-1][0].feed_eof()


class SilentPeer:
    """A connection whose server takes every request and never answers: every read waits for ever."""

    def __init__(self) -> None:
        self.connection = SharedConnection(asyncio.StreamReader(), MemoryWriter(asyncio.StreamReader()))


def assert_accounted(result: RunResult) -> None:
    """Every planned request has exactly one verdict."""
    assert sum(result.count(v) for v in Verdict) == result.requests == result.plan.config.total


class CountingConnects:
    """Stands in for asyncio.open_connection (monkeypatch it in) and counts the attempts."""

    def __init__(self) -> None:
        self.attempts = 0
        self._open_connection = asyncio.open_connection

    async def __call__(
        self, host: str, port: int, **kwargs: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.attempts += 1
        return await self._open_connection(host, port, **kwargs)


# ------------------------------------------------------------------ the server's engine, with no I/O


def cut_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    """`stream` cut at the given offsets (any order; those past its end are ignored), as reads."""
    points = [0, *sorted(cut for cut in cuts if cut < len(stream)), len(stream)]
    return [stream[start:end] for start, end in itertools.pairwise(points) if end > start]


def session_replies(session: Session, pieces: list[bytes], *, eof: bool = True) -> bytes:
    """Feed `pieces` to `session` as reads, doing what each action asks at once (no time passes);
    every reply byte it gives, up to CLOSE (QUIT), ENDED (EOF, when `eof`) or the last NEED_DATA."""
    out: list[bytes] = []

    def act() -> bool:
        """Carry out actions until the session needs data (False) or the connection ends (True)."""
        while (action := session.next_action()) is not NEED_DATA:
            if isinstance(action, bytes):
                out.append(action)
            elif isinstance(action, Wait | Yield):
                step: bytes | Wait | Yield = action
                while not isinstance(step, bytes):
                    step = session.complete(step)
                out.append(step)
            elif action is CLOSE or action is ENDED:
                return True
        return False

    for piece in pieces:
        session.receive_data(piece)
        if act():
            return b"".join(out)
    if eof:
        session.feed_eof()
        act()
    return b"".join(out)


# ------------------------------------------------------------------ the idle sweep, on the test's clock


class ManualSweeper:
    """An idle sweeper that never sweeps by itself (see ManualSweepers)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period_s: float, sweep: Sweep) -> None:
        self.loop = loop
        self.period_s = period_s  # what the server asked for: a quarter of its idle timeout
        self.sweep = sweep
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


class ManualSweepers:
    """`Server(config, sweeper=ManualSweepers())`: no sweeper thread; the test decides when a sweep
    happens and what time it is, with `server.sweep_idle(now)` (loop time), instead of sleeping
    through the idle timeout. `made` holds the sweeper the server started (none when it has no
    idle timeout)."""

    def __init__(self) -> None:
        self.made: list[ManualSweeper] = []

    def __call__(self, loop: asyncio.AbstractEventLoop, period_s: float, sweep: Sweep) -> ManualSweeper:
        sweeper = ManualSweeper(loop, period_s, sweep)
        self.made.append(sweeper)
        return sweeper


def value(i: int) -> str:
    """What call i of the client-check tests stores under k<i> and must get back."""
    return f"v{i}"


def decision(index: int, task: int, position: int, interrupt: Interrupt = Interrupt.NONE,
             at_ms: float | None = None) -> CallDecision:
    """Call `index` of a check, the `position`th of task `task`, cut as told (at_ms after it started)."""
    return CallDecision(index, task, position, 0, interrupt, 0.0, at_ms)


class HeldReplies:
    """An in-memory shared connection whose server answers in order, but only when released:
    call(i) "writes" GET k<i> and reads the next reply; `release_on` lets the replies out when that
    call starts. Every earlier call waits for its reply, and one cut short leaves it to the next call:
    a locked client without cancel-safety, deterministic without any timing."""

    def __init__(self, release_on: int) -> None:
        self.release_on = release_on
        self.requests: asyncio.Queue[int] = asyncio.Queue()
        self.released = asyncio.Event()
        self.lock = asyncio.Lock()

    async def call(self, i: int) -> object:
        if i == self.release_on:
            self.released.set()
        async with self.lock:
            self.requests.put_nowait(i)
            await self.released.wait()
            return value(self.requests.get_nowait())


# The example scenarios `sockrace check` is run on in the tests (examples/sockrace_clients.py).
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sockrace_clients.py"
NAIVE = f"{EXAMPLES}:naive"
RECONNECTING = f"{EXAMPLES}:reconnecting"


def write_scenario(directory: Path, name: str, source: str) -> str:
    """Write `source` (dedented) to NAME.py in `directory`; return its scenario `name` as `check` takes it."""
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return f"{path}:{name}"


def check_args(scenario: str, upstream: str, *options: str) -> list[str]:
    """The arguments of `sockrace check SCENARIO --upstream UPSTREAM OPTIONS...`."""
    return ["check", scenario, "--upstream", upstream, *options]


def line_service(answer: str) -> str:
    """A program for service_process: a blocking server on a free port that prints the port, then
    serves one connection at a time, running `answer` (Python statements) for each line it reads,
    with `connection` (the socket), `stream` (its unbuffered binary file) and `line` (with its b"\\n")."""
    return textwrap.dedent("""
        import socket, time
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        print(server.getsockname()[1], flush=True)
        while True:
            connection, _ = server.accept()
            with connection, connection.makefile("rwb", buffering=0) as stream:
                for line in stream:
        """) + textwrap.indent(textwrap.dedent(answer).strip(), " " * 12) + "\n"


@contextlib.contextmanager
def service_process(program: str) -> Iterator[int]:
    """Run `program` (Python source that serves on a free port and prints that port first) in a process
    of its own; yields the port, kills the process when the block ends."""
    process = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


class ThreadedServer:
    """A sockrace server on a free port, on its own event loop in a thread (main() runs its own loop)."""

    def __init__(self) -> None:
        self.address = ("127.0.0.1", 0)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),))

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with Server(ServerConfig(port=0)) as server:
            self.address = server.address
            self._ready.set()
            await self._stop.wait()

    @property
    def upstream(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        assert self._ready.wait(10), "the server did not start"
        return self

    def stop(self) -> None:
        """Stop serving and wait until the port is closed; callable from any thread, more than once."""
        if self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
            self._loop.close()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# ------------------------------------------------------------------ pytester sessions of the pytest plugin


def plugin_ini(mode: str = "strict") -> str:
    """The pytest.ini of a user's suite in a pytester session: pytest-asyncio in `mode`, warnings errors
    but the one trio's hypothesis plugin sets off (ignored in pyproject.toml too): hypothesis loads
    that plugin when first used, which for a test file run alone is inside this session."""
    return f"""
[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = function
filterwarnings =
    error
    ignore:It looks like `register_random` was passed an object that could be garbage collected
"""


# Test code for a pytester session (it needs `import asyncio`): a producer and a consumer task. In race()
# the consumer assumes the producer ran first: asyncio's FIFO order always does that, a seeded loop that
# reorders the two tasks' first steps does not. In no_race() the consumer waits for the producer.
RACES = '''
async def race(ready):
    async def producer():
        ready.append("produced")

    async def consumer():
        assert ready, "the consumer ran before the producer"

    await asyncio.gather(producer(), consumer())


async def no_race():
    produced = asyncio.Event()

    async def producer():
        produced.set()

    async def consumer():
        await produced.wait()

    await asyncio.gather(consumer(), producer())
'''


def assert_replay_fails_again(pytester: pytest.Pytester, result: pytest.RunResult, test: str) -> None:
    """`result` names the schedule seed `test` (a node id) failed under in its replay line; running that
    test again with that seed fails again, under that seed."""
    named = rf"replay: pytest {re.escape(test)} --sockrace-schedule-seed (\d+)"
    replay = re.search(named, result.stdout.str())
    assert replay is not None, f"no replay line for {test}"
    again = pytester.runpytest(test, "--sockrace-schedule-seed", replay[1])
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines([f"*failed under schedule seed {replay[1]} (shuffle, *"])


def saved_failures(database: Path) -> dict[str, RunRecord]:
    """The run records the pytest plugin saved in `database`, by their test's node id."""
    records = [load(path) for path in sorted(database.glob("*.json"))] if database.is_dir() else []
    by_test = {record.scenario: record for record in records}
    assert len(by_test) == len(records), f"two records of one test in {database}"
    return by_test
