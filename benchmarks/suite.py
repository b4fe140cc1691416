"""The benchmark suite: every sockrace figure next to a reference measured in the same run.

A *variant* is one client against one server (kind, concurrency, event loop). A *group* lists the
variants of one question; its first variant is the reference the others are divided by. All the
variants of a run are measured round-robin, one run of each per round, so that slow drift of the
machine (thermal, noisy neighbours) hits the reference and the candidates alike. The figure kept
is the median over the rounds; latencies are pooled over the rounds.

Before each run the harness's heap (plans with a Step object per request, latencies) is frozen out of
the cyclic garbage collector's sight (gc.freeze): otherwise a full collection set off by the code under
test walks millions of harness objects, and the variant that allocates most pays for it.

Servers run in their own processes (one per server kind and loop, started once) and the clients in
this process, unless `inproc` is set: then each run starts its server on the client's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import gc
import importlib.metadata
import importlib.util
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar

from benchmarks import reference
from benchmarks.serve import running_server
from sockrace import loop as loops
from sockrace.client import STRATEGIES, SharedConnection
from sockrace.workload import Plan, Verdict, WorkloadConfig

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT: Final = REPO_ROOT / "benchmarks" / "results.json"

# Requests per run at scale 1. Chosen so that one run lasts a few tenths of a second on a 2-core
# machine: long enough to dwarf connection setup, short enough for five rounds in about a minute.
LOCKSTEP_REQUESTS: Final = 3_000
PIPELINED_REQUESTS: Final = 30_000
# The windowed load generator drives the fastest servers at several hundred thousand requests per
# second: more requests keep its runs long enough to measure.
WINDOWED_REQUESTS: Final = 100_000
# Any run taking longer than this is broken (a lost reply), not slow.
RUN_TIMEOUT_S: Final = 60.0
IDLE_CONNECTIONS: Final = 1_000
COMPARE_GOAL_S: Final = 2.0
COUNTER_GOAL_S: Final = 0.5
COUNTER_COROUTINES: Final = 10_000  # as in the seed tutorial
# The figures the goals were set against: these reference clients and servers on a 2-core machine,
# CPython 3.11, client and server in separate processes. This machine's req/s divided by them says
# how it compares, for round trips (lock-step) and for CPU-bound pipelining apart: a goal that sets
# one against the other (multiplexed vs locked) or a wall time (the counter demo) moves with that.
REFERENCE_MACHINE: Final[dict[tuple[str, str, int], float]] = {
    ("reference lock-step", "readline", 1): 9_000,
    ("reference pipelined", "readline", 100): 160_000,
    ("reference pipelined", "bulk", 100): 270_000,
}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Variant:
    """One client of `client` kind, `concurrency` coroutines over one connection, against `server`."""

    client: str  # "reference lock-step", "reference pipelined", or "sockrace <mode>"
    server: str  # "readline", "bulk" (the reference servers) or "sockrace"
    concurrency: int = 1
    requests: int = LOCKSTEP_REQUESTS  # per run, over all coroutines, at scale 1
    loop: str = loops.DEFAULT_LOOP

    @property
    def key(self) -> str:
        return f"{self.client} c={self.concurrency} -> {self.server} server [{self.loop}]"

    @property
    def mode(self) -> str | None:
        """The sockrace strategy name, or None for a reference client."""
        kind, _, mode = self.client.partition(" ")
        return mode if kind == "sockrace" else None

    @property
    def available(self) -> bool:
        return self.mode is None or self.mode in STRATEGIES


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    variants: tuple[Variant, ...]  # the first is the reference

    @property
    def reference(self) -> Variant:
        return self.variants[0]


@dataclass(slots=True)
class Measurement:
    """All the runs of one variant."""

    variant: Variant
    rates: list[float] = field(default_factory=list)  # req/s of each run
    latencies: list[float] = field(default_factory=list)  # seconds, every request of every run
    client_cpu_us: list[float] = field(default_factory=list)  # CPU of the client process per request
    server_cpu_us: list[float] = field(default_factory=list)  # CPU of the server process per request
    wrong: int = 0  # replies that did not answer their request
    error: str | None = None  # why the variant could not be measured

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    @property
    def median_client_us(self) -> float | None:
        return statistics.median(self.client_cpu_us) if self.client_cpu_us else None

    @property
    def median_server_us(self) -> float | None:
        return statistics.median(self.server_cpu_us) if self.server_cpu_us else None

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    @property
    def ok(self) -> bool:
        return self.error is None and self.wrong == 0 and bool(self.rates)


@dataclass(frozen=True, slots=True)
class Settings:
    runs: int = 7
    scale: float = 1.0
    inproc: bool = False
    loop: str = loops.DEFAULT_LOOP
    groups: tuple[str, ...] = ()  # only groups whose name contains one of these; () = all
    end_to_end: bool = True  # `sockrace compare` and the counter demo as commands
    memory: bool = True  # server memory per idle connection

    def requests(self, variant: Variant) -> int:
        return max(variant.concurrency, round(variant.requests * self.scale))


# --------------------------------------------------------------------------------------- the groups


def build_groups(loop: str, uvloop_installed: bool) -> list[Group]:
    """The questions the issue asks, each as a reference and the variants divided by it."""
    ref_lockstep = Variant("reference lock-step", "readline", loop=loop)
    lockstep_on_sockrace = Variant("reference lock-step", "sockrace", loop=loop)

    def pipelined(client: str, server: str, concurrency: int) -> Variant:
        return Variant(client, server, concurrency, PIPELINED_REQUESTS, loop)

    groups = [
        Group("lock-step server", (ref_lockstep, lockstep_on_sockrace)),
        # The windowed load generator does almost nothing per request, so that the server is the
        # bottleneck here (against the pipelined client, on 2 cores, the client often is).
        Group("pipelined server", tuple(
            Variant("reference windowed", server, 100, WINDOWED_REQUESTS, loop)
            for server in ("readline", "bulk", "sockrace")
        )),
        Group("locked client", (
            lockstep_on_sockrace,
            *(Variant("sockrace locked", "sockrace", c, loop=loop) for c in (1, 10, 100, 1000)),
        )),
    ]
    for concurrency in (100, 1000):
        groups.append(Group(f"pipelining clients c={concurrency}", (
            pipelined("reference pipelined", "sockrace", concurrency),
            pipelined("sockrace pipelined", "sockrace", concurrency),
            pipelined("sockrace multiplexed", "sockrace", concurrency),
        )))
    groups.append(Group("reference machine", (
        ref_lockstep,
        pipelined("reference pipelined", "readline", 100),
        pipelined("reference pipelined", "bulk", 100),
    )))
    if uvloop_installed:
        groups.append(Group("uvloop lock-step", (
            dataclasses.replace(lockstep_on_sockrace, loop="asyncio"),
            dataclasses.replace(lockstep_on_sockrace, loop="uvloop"),
        )))
    return groups


# --------------------------------------------------------------------------------------- measuring


class Run(NamedTuple):
    """One measured run of a client."""

    rate: float  # requests per second
    latencies: list[float]  # seconds, one per request
    wrong: int  # replies that did not answer their request
    client_cpu_s: float  # CPU time of this process while the requests ran (not connecting or judging)


async def drive(
    rows: Sequence[Sequence[T]], roundtrip: Callable[[T], Awaitable[bytes]]
) -> tuple[float, float, list[float], list[list[bytes]]]:
    """Run one coroutine per row, each sending its row's requests one after the other.

    Returns the elapsed seconds, the CPU seconds of this process meanwhile, every request's latency,
    and the replies row by row. Raises whatever `roundtrip` raises (a benchmark run is all or nothing).
    """
    latencies: list[float] = []
    replies: list[list[bytes]] = [[] for _ in rows]
    clock = time.perf_counter

    async def one(row: Sequence[T], received: list[bytes]) -> None:
        for request in row:
            sent_at = clock()
            received.append(await roundtrip(request))
            latencies.append(clock() - sent_at)

    started, cpu_started = clock(), time.process_time()
    async with asyncio.TaskGroup() as tasks:
        for row, received in zip(rows, replies, strict=True):
            tasks.create_task(one(row, received))
    return clock() - started, time.process_time() - cpu_started, latencies, replies


async def run_client(variant: Variant, plan: Plan, host: str, port: int) -> Run:
    """One run of `variant`'s client against the server at host:port.

    Raises OSError and whatever the client raises.
    """
    if variant.client == "reference windowed":
        return await run_windowed(variant, plan, host, port)
    if variant.mode is None:
        kind = variant.client.removeprefix("reference ")
        client = await reference.open_client(kind, host, port)
        try:
            lines = [[step.line for step in row] for row in plan.steps]
            elapsed, cpu, latencies, replies = await drive(lines, client.roundtrip)
        finally:
            await client.aclose()
    else:
        connection = await SharedConnection.open(host, port)
        strategy = STRATEGIES[variant.mode](connection)
        try:
            elapsed, cpu, latencies, replies = await drive(plan.steps, strategy.roundtrip)
        finally:
            await strategy.aclose()
            await connection.close()
    # Judged after the clock stopped, so that checking costs no client anything.
    wrong = sum(
        plan.judge(step, reply)[0] is not Verdict.CORRECT
        for row, got in zip(plan.steps, replies, strict=True)
        for step, reply in zip(row, got, strict=True)
    )
    return Run(len(latencies) / elapsed, latencies, wrong, cpu)


async def run_windowed(variant: Variant, plan: Plan, host: str, port: int) -> Run:
    """One run of the windowed load generator: `variant.concurrency` requests always in flight."""
    lines = [step.line for row in plan.steps for step in row]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        latencies, received = await reference.windowed_load(reader, writer, lines, variant.concurrency)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    # Checked after the clock stopped: every reply, in order.
    got = received.split(b"\n")[:-1]
    expected = [b"OK " + line[len(b"ECHO ") : -1] for line in lines]
    wrong = sum(a != b for a, b in zip(got, expected, strict=False)) + abs(len(got) - len(expected))
    return Run(len(lines) / elapsed, latencies, wrong, cpu)


async def measure_once(variant: Variant, plan: Plan, address: tuple[str, int] | None) -> Run:
    """One run against the server at `address`, or (None) against one started on this loop."""
    async with asyncio.timeout(RUN_TIMEOUT_S):
        if address is not None:
            return await run_client(variant, plan, *address)
        async with running_server(variant.server) as (host, port):
            return await run_client(variant, plan, host, port)


class ServerPool:
    """One server process per (kind, loop), started on first use, stopped by `close()`."""

    def __init__(self) -> None:
        self.processes: dict[tuple[str, str], tuple[subprocess.Popen[str], int]] = {}

    def address(self, kind: str, loop: str) -> tuple[str, int]:
        return "127.0.0.1", self._start(kind, loop)[1]

    def pid(self, kind: str, loop: str) -> int:
        return self._start(kind, loop)[0].pid

    def _start(self, kind: str, loop: str) -> tuple[subprocess.Popen[str], int]:
        if (kind, loop) not in self.processes:
            self.processes[kind, loop] = start_server_process(kind, loop)
        return self.processes[kind, loop]

    def close(self) -> None:
        for process, _ in self.processes.values():
            stop_server_process(process)
        self.processes.clear()


def start_server_process(kind: str, loop: str) -> tuple[subprocess.Popen[str], int]:
    """Start `python -m benchmarks.serve kind` and wait for its port. Raises RuntimeError."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.serve", kind, "--loop", loop],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=REPO_ROOT, env=env,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    if not first.startswith("PORT "):
        stop_server_process(process)
        assert process.stderr is not None
        detail = process.stderr.read().strip().splitlines()
        raise RuntimeError(f"{kind} server did not start: {detail[-1] if detail else first!r}")
    return process, int(first.split()[1])


def cpu_seconds(pid: int | None) -> float | None:
    """CPU time used so far by process `pid`, to the nanosecond (Linux /proc); None when unknown."""
    if pid is None:
        return None
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def stop_server_process(process: subprocess.Popen[str]) -> None:
    if process.stdin is not None:
        process.stdin.close()  # EOF on its stdin: the server shuts down
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def measure_variants(
    variants: Sequence[Variant], settings: Settings, progress: Callable[[str], None] = lambda _: None
) -> dict[Variant, Measurement]:
    """Measure every variant `settings.runs` times, round-robin, after one shorter warm-up round."""
    results = {v: Measurement(v) for v in variants}
    for v in variants:
        if not v.available:
            results[v].error = "not available (no such mode in sockrace.client.STRATEGIES)"
    plans = {
        v: Plan.build(WorkloadConfig(
            concurrency=v.concurrency, requests=max(1, settings.requests(v) // v.concurrency), max_yields=0,
        ))
        for v in variants
        if v.available
    }
    warmups = {
        v: Plan.build(WorkloadConfig(concurrency=v.concurrency, requests=max(1, p.config.requests // 10),
                                     max_yields=0))
        for v, p in plans.items()
    }
    pool = ServerPool()
    try:
        for round_index in range(settings.runs + 1):
            progress(f"round {round_index}/{settings.runs}" + (" (warm-up)" if round_index == 0 else ""))
            # Every other round in reverse order: a variant measured just after another one in a
            # round is measured just before it in the next, so neither always gets the warmer machine.
            for variant in variants if round_index % 2 else reversed(variants):
                outcome = results[variant]
                if outcome.error is not None:
                    continue
                plan = warmups[variant] if round_index == 0 else plans[variant]
                # The harness's own long-lived objects (every plan, every latency so far) leave the
                # collector's view, so that a run does not pay for traversing them (see module doc).
                gc.freeze()
                try:
                    address = None if settings.inproc else pool.address(variant.server, variant.loop)
                    server_pid = None if settings.inproc else pool.pid(variant.server, variant.loop)
                    server_cpu = cpu_seconds(server_pid)
                    rate, latencies, wrong, client_cpu = loops.run(
                        measure_once(variant, plan, address), variant.loop
                    )
                    if server_cpu is not None:
                        server_cpu = (cpu_seconds(server_pid) or server_cpu) - server_cpu
                except Exception as exc:  # a broken variant is reported, the others still run
                    outcome.error = f"{type(exc).__name__}: {exc}"
                    continue
                if round_index == 0:
                    continue
                outcome.rates.append(rate)
                outcome.latencies.extend(latencies)
                if not settings.inproc:  # in one process, client and server CPU cannot be told apart
                    outcome.client_cpu_us.append(client_cpu / len(latencies) * 1e6)
                if server_cpu is not None:
                    outcome.server_cpu_us.append(server_cpu / len(latencies) * 1e6)
                outcome.wrong += wrong
    finally:
        pool.close()
        gc.unfreeze()
    return results


# ---------------------------------------------------------------------------- end to end and memory


@dataclass(slots=True)
class Timing:
    """Wall time of a command, several runs; `error` when it could not be timed."""

    name: str
    command: list[str]
    seconds: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds) if self.seconds else 0.0


def time_command(name: str, args: list[str], runs: int) -> Timing:
    timing = Timing(name, ["python", "-m", "sockrace", *args])
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "sockrace", *args], capture_output=True, text=True,
                              timeout=120, check=False, cwd=REPO_ROOT)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            timing.error = f"exit {done.returncode}: {lines[-1] if lines else ''}"
            break
        timing.seconds.append(elapsed)
    return timing


def counter_command() -> list[str] | None:
    """The arguments of `sockrace counter` with its defaults, when this sockrace has the command."""
    from sockrace import cli

    return ["counter"] if "counter" in getattr(cli, "COMMANDS", {}) else None


def time_counter_demo(loop: str, runs: int) -> tuple[Timing, Timing]:
    """The seed tutorial's demo in this process: 10,000 coroutines race on a shared counter, first
    without a lock, then with one. Wall time of both halves, `runs` times, each on a fresh loop; and
    the same for the tutorial's program as written there (reference.seed_counter), the two
    alternating, so that the demo's figure can be told apart from what asyncio itself costs."""
    timing = Timing("counter demo", ["shared_counter(10_000) without, then with asyncio.Lock (in process)"])
    seed = Timing("seed program", ["the seed tutorial's program, without then with the lock (reference.py)"])
    try:
        shared_counter = importlib.import_module("sockrace.counter").shared_counter
    except (ImportError, AttributeError):
        timing.error = seed.error = "skipped: this sockrace has no counter demo"
        return timing, seed

    async def demo(counter: Callable[..., Awaitable[int]]) -> float:
        started = time.perf_counter()
        await counter(COUNTER_COROUTINES)
        counted = await counter(COUNTER_COROUTINES, asyncio.Lock())
        if counted != COUNTER_COROUTINES:
            raise RuntimeError(f"the locked counter reached {counted}, not {COUNTER_COROUTINES}")
        return time.perf_counter() - started

    for index in range(runs):
        pairs = [(timing, shared_counter), (seed, reference.seed_counter)]
        for measured, counter in pairs if index % 2 == 0 else reversed(pairs):
            if measured.error is not None:
                continue
            gc.freeze()  # as in measure_variants: the demo must not pay for the harness's heap
            try:
                measured.seconds.append(loops.run(demo(counter), loop))
            except Exception as exc:
                measured.error = f"{type(exc).__name__}: {exc}"
            finally:
                gc.unfreeze()
    return timing, seed


def counter_notes(timings: dict[str, Timing]) -> list[str]:
    """The counter demo next to the tutorial's own program: the median of the run-by-run ratios (each
    pair timed back to back), as for the req/s ratios."""
    demo, seed = timings.get("counter demo"), timings.get("seed program")
    if demo is None or seed is None or not demo.seconds or not seed.seconds or demo.error or seed.error:
        return []
    ratios = [d / s for d, s in zip(demo.seconds, seed.seconds, strict=False) if s > 0]
    # Rounded as the results document stores them, so that the note and the table show the same figure.
    demo_s, seed_s = round(demo.median_s, 3), round(seed.median_s, 3)
    return [f"counter demo {demo_s:.2f} s, the seed tutorial's program as written there "
            f"{seed_s:.2f} s in the same runs: {statistics.median(ratios):.2f}x (runs: "
            f"{min(ratios):.2f} to {max(ratios):.2f}; above 1: the demo costs more than the program itself)"]


@dataclass(slots=True)
class MemoryFigure:
    server: str
    bytes_per_connection: float = 0.0
    error: str | None = None


def _rss_bytes(pid: int) -> int:
    """Resident memory of process `pid`, from /proc (Linux). Raises OSError elsewhere."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmRSS line")


def _ping(sock: socket.socket) -> None:
    sock.sendall(b"PING\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            raise ConnectionResetError("server closed the connection")
        reply += chunk


def measure_idle_memory(kind: str, connections: int = IDLE_CONNECTIONS) -> MemoryFigure:
    """Server memory growth per idle connection: RSS with `connections` idle minus RSS with a few.

    Each connection answers one PING first, so that the server has really set it up.
    """
    figure = MemoryFigure(kind)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 200
    if soft < wanted and (hard == resource.RLIM_INFINITY or hard >= wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    process, port = start_server_process(kind, loops.DEFAULT_LOOP)
    sockets: list[socket.socket] = []
    try:
        for _ in range(20):  # warm: first-use allocations are not per-connection costs
            sock = socket.create_connection(("127.0.0.1", port))
            _ping(sock)
            sock.close()
        time.sleep(0.2)
        before = _rss_bytes(process.pid)
        for _ in range(connections):
            sock = socket.create_connection(("127.0.0.1", port))
            sockets.append(sock)
            _ping(sock)
        time.sleep(0.2)
        figure.bytes_per_connection = (_rss_bytes(process.pid) - before) / connections
    except OSError as exc:
        figure.error = f"{type(exc).__name__}: {exc}"
    finally:
        for sock in sockets:
            sock.close()
        stop_server_process(process)
    return figure


# ------------------------------------------------------------------------------------------- goals


@dataclass(frozen=True, slots=True)
class Goal:
    text: str
    value: float | None  # None: could not be measured here
    target: float
    unit: str  # "x" for a ratio (met when >= target), "s" or "KiB" (met when < target)
    note: str = ""
    per_round: tuple[float, ...] = ()  # for a ratio: its value in each round (the value is their median)

    @property
    def status(self) -> str:
        if self.value is None:
            return "not available"
        met = self.value >= self.target if self.unit == "x" else self.value < self.target
        return "met" if met else "not met"

    def shown(self) -> str:
        if self.value is None:
            return "-"
        return f"{self.value:.2f}x" if self.unit == "x" else f"{self.value:.2f} {self.unit}"


def round_ratios(results: dict[Variant, Measurement], top: Variant, bottom: Variant) -> list[float]:
    """`top`'s req/s over `bottom`'s, round by round: paired, each pair measured in the same round,
    so that the machine's swings (seen here: 2x within a minute) hit both sides of each ratio."""
    a, b = results.get(top), results.get(bottom)
    if a is None or b is None or not a.ok or not b.ok:
        return []
    return [x / y for x, y in zip(a.rates, b.rates, strict=False) if y > 0]


def _ratio(results: dict[Variant, Measurement], top: Variant, bottom: Variant) -> float | None:
    """The median of the round-by-round ratios (None when either side was not measured)."""
    ratios = round_ratios(results, top, bottom)
    return statistics.median(ratios) if ratios else None


def server_cpu_notes(results: dict[Variant, Measurement], loop: str) -> list[str]:
    """What each server spent per request under the same pipelined load: unlike req/s, this does
    not depend on which process was the bottleneck (on 2 cores it is often the client)."""
    cpu = {}
    for kind in ("readline", "bulk", "sockrace"):
        m = results.get(Variant("reference windowed", kind, 100, WINDOWED_REQUESTS, loop))
        if m is not None and m.ok and m.median_server_us:
            cpu[kind] = m.median_server_us
    if "sockrace" not in cpu:
        return []
    parts = [f"{kind} {us:.1f} us" for kind, us in cpu.items()]
    ratios = [f"{kind} {cpu[kind] / cpu['sockrace']:.2f}x" for kind in cpu if kind != "sockrace"]
    return [f"server CPU per request under pipelined load: {', '.join(parts)}; relative to sockrace's: "
            f"{', '.join(ratios)} (above 1: sockrace spends less)"]


def machine_notes(results: dict[Variant, Measurement]) -> list[str]:
    """This machine's figures for the reference pairs against the reference machine's (see
    REFERENCE_MACHINE), on the default event loop only: the reference figures are asyncio's."""
    parts = []
    for v, m in results.items():
        expected = REFERENCE_MACHINE.get((v.client, v.server, v.concurrency))
        if expected is not None and v.loop == loops.DEFAULT_LOOP and m.ok:
            parts.append(f"{v.client} c={v.concurrency} -> {v.server} server {m.median_rate:,.0f} req/s "
                         f"against {expected:,.0f} ({m.median_rate / expected:.2f}x)")
    if not parts:
        return []
    return [f"this machine against the one the goals were set on: {'; '.join(parts)}"]


def evaluate_goals(
    results: dict[Variant, Measurement], timings: dict[str, Timing], memory: dict[str, MemoryFigure],
    loop: str,
) -> list[Goal]:
    def v(client: str, server: str, concurrency: int = 1, requests: int = LOCKSTEP_REQUESTS,
          variant_loop: str = loop) -> Variant:
        return Variant(client, server, concurrency, requests, variant_loop)

    def ratio_goal(text: str, top: Variant, bottom: Variant, target: float) -> Goal:
        ratios = round_ratios(results, top, bottom)
        value = statistics.median(ratios) if ratios else None
        return Goal(text, value, target, "x", per_round=tuple(ratios))

    pipe = PIPELINED_REQUESTS
    window = WINDOWED_REQUESTS
    compare = timings.get("compare")
    counter = timings.get("counter demo")
    sockrace_memory = memory.get("sockrace")
    return [
        ratio_goal("sockrace server, pipelined load: >= 1.5x the readline() reference server",
                   v("reference windowed", "sockrace", 100, window),
                   v("reference windowed", "readline", 100, window), 1.5),
        ratio_goal("sockrace server, pipelined load: >= 0.9x the bulk-parsing reference server",
                   v("reference windowed", "sockrace", 100, window),
                   v("reference windowed", "bulk", 100, window), 0.9),
        ratio_goal("sockrace server, lock-step: >= 0.95x the reference server",
                   v("reference lock-step", "sockrace"), v("reference lock-step", "readline"), 0.95),
        ratio_goal("multiplexed client, c=100: >= 20x the locked client",
                   v("sockrace multiplexed", "sockrace", 100, pipe),
                   v("sockrace locked", "sockrace", 100), 20),
        ratio_goal("multiplexed client, c=100: >= 0.9x the reference pipelined client",
                   v("sockrace multiplexed", "sockrace", 100, pipe),
                   v("reference pipelined", "sockrace", 100, pipe), 0.9),
        Goal("`sockrace compare` with defaults: under 2 s wall time",
             compare.median_s if compare and compare.seconds and not compare.error else None,
             COMPARE_GOAL_S, "s"),
        Goal("counter demo, 10,000 coroutines without and with the lock: under 0.5 s",
             counter.median_s if counter and counter.seconds and not counter.error else None,
             COUNTER_GOAL_S, "s"),
        ratio_goal("uvloop: lock-step >= 1.3x the same scenario on asyncio",
                   v("reference lock-step", "sockrace", variant_loop="uvloop"),
                   v("reference lock-step", "sockrace", variant_loop="asyncio"), 1.3),
        Goal("server memory per idle connection (1,000 idle): under 20 KiB",
             sockrace_memory.bytes_per_connection / 1024
             if sockrace_memory and sockrace_memory.error is None else None, 20, "KiB"),
    ]


# ------------------------------------------------------------------------------------------ a suite


def machine_description(loop: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    try:
        uvloop_version: str | None = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        uvloop_version = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "loop": loop,
        "uvloop": uvloop_version,
        "sockrace": importlib.metadata.version("sockrace"),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def run_suite(settings: Settings, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Measure everything `settings` selects and return the results document (see `--json`).

    Raises LoopUnavailable when `settings.loop` is uvloop and uvloop is not installed.
    """
    loops.loop_factory(settings.loop)  # fail before measuring anything
    groups = [
        g for g in build_groups(settings.loop, uvloop_installed())
        if not settings.groups or any(word in g.name for word in settings.groups)
    ]
    variants = list(dict.fromkeys(v for g in groups for v in g.variants))
    results = measure_variants(variants, settings, progress)

    timings: dict[str, Timing] = {}
    memory: dict[str, MemoryFigure] = {}
    if settings.end_to_end:
        loop_args = ["--loop", settings.loop] if settings.loop != loops.DEFAULT_LOOP else []
        progress("timing `sockrace compare`")
        timings["compare"] = time_command("compare", ["compare", *loop_args], settings.runs)
        progress("timing the counter demo")
        timings["counter demo"], timings["seed program"] = time_counter_demo(settings.loop, settings.runs)
        counter = counter_command()
        if counter is None:
            timings["counter"] = Timing("counter", ["python", "-m", "sockrace", "counter"],
                                        error="skipped: this sockrace has no counter command")
        else:
            timings["counter"] = time_command("counter", [*counter, *loop_args], settings.runs)
    if settings.memory:
        for kind in ("readline", "sockrace"):
            progress(f"memory of {IDLE_CONNECTIONS} idle connections, {kind} server")
            memory[kind] = measure_idle_memory(kind)

    goals = evaluate_goals(results, timings, memory, settings.loop)
    return {
        "machine": machine_description(settings.loop),
        "settings": {"runs": settings.runs, "scale": settings.scale, "inproc": settings.inproc,
                     "loop": settings.loop},
        "groups": [_group_document(g, results, settings) for g in groups],
        "commands": [
            {"name": t.name, "command": " ".join(t.command), "median_s": round(t.median_s, 3),
             "runs_s": [round(s, 3) for s in t.seconds], "error": t.error}
            for t in timings.values()
        ],
        "memory": [
            {"server": m.server, "connections": IDLE_CONNECTIONS,
             "kib_per_connection": round(m.bytes_per_connection / 1024, 2), "error": m.error}
            for m in memory.values()
        ],
        "goals": [{"goal": g.text, "value": None if g.value is None else round(g.value, 3),
                   "per_round": [round(r, 3) for r in g.per_round],
                   "target": g.target, "unit": g.unit, "status": g.status} for g in goals],
        "notes": (server_cpu_notes(results, settings.loop) + machine_notes(results)
                  + counter_notes(timings)),
        "failed": [m.variant.key for m in results.values() if m.variant.available and not m.ok],
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _group_document(group: Group, results: dict[Variant, Measurement], settings: Settings) -> dict[str, Any]:
    base = results[group.reference]
    rows = []
    for variant in group.variants:
        m = results[variant]
        ratio = _ratio(results, variant, group.reference)
        rows.append({
            "client": variant.client,
            "server": variant.server,
            "concurrency": variant.concurrency,
            "loop": variant.loop,
            "requests_per_run": settings.requests(variant),
            "req_per_s": round(m.median_rate, 1) if m.ok else None,
            "runs_req_per_s": [round(r, 1) for r in m.rates],
            "p50_ms": round(m.percentile_ms(0.50), 4) if m.ok else None,
            "p99_ms": round(m.percentile_ms(0.99), 4) if m.ok else None,
            "client_cpu_us_per_req": _rounded(m.median_client_us) if m.ok else None,
            "server_cpu_us_per_req": _rounded(m.median_server_us) if m.ok else None,
            "ratio": None if ratio is None else round(ratio, 3),
            "reference": variant == group.reference,
            "wrong_replies": m.wrong,
            "error": m.error or (f"{m.wrong} wrong replies" if m.wrong else None),
        })
    return {"name": group.name, "reference": base.variant.key, "rows": rows}


# ------------------------------------------------------------------------------------------ reports


def _who(row: dict[str, Any]) -> str:
    who = f"{row['client']} c={row['concurrency']} -> {row['server']} server"
    return who + (" (uvloop)" if row["loop"] == "uvloop" else "")


def _table_rows(document: dict[str, Any]) -> Iterator[tuple[str, ...]]:
    for group in document["groups"]:
        for row in group["rows"]:
            if row["error"]:
                status = "not available" if row["error"].startswith("not available") else "FAILED"
                figures = ("-", "-", "-", "-", "-", status)
            else:
                ratio = "1.00 (ref)" if row["reference"] else f"{row['ratio']:.2f}"
                figures = (f"{row['req_per_s']:,.0f}", f"{row['p50_ms']:.3f}", f"{row['p99_ms']:.3f}",
                           _cpu(row["client_cpu_us_per_req"]), _cpu(row["server_cpu_us_per_req"]), ratio)
            yield (group["name"], _who(row), *figures)
    for command in document["commands"]:
        shown = "skipped" if command["error"] else f"{command['median_s']:.2f} s"
        yield ("end to end", command["command"], shown, "", "", "", "", "")
    for figure in document["memory"]:
        shown = figure["error"] or f"{figure['kib_per_connection']:.1f} KiB/conn"
        yield ("idle memory", f"{figure['server']} server, {figure['connections']} connections", shown,
               "", "", "", "", "")


HEADER: Final = ("group", "measured", "req/s", "p50 ms", "p99 ms", "client CPU", "server CPU", "ratio")


def _cpu(us_per_request: float | None) -> str:
    return "-" if us_per_request is None else f"{us_per_request:.1f} us"


def format_table(document: dict[str, Any]) -> str:
    rows = [HEADER, *_table_rows(document)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]

    def line(row: tuple[str, ...]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs]
        return "  ".join(cells).rstrip()

    out = [line(rows[0]), "  ".join("-" * w for w in widths), *(line(r) for r in rows[1:]), ""]
    out += [f"{_who(row)}: {row['error']}"
            for group in document["groups"] for row in group["rows"] if row["error"]]
    out += [f"{c['command']}: {c['error']}" for c in document["commands"] if c["error"]]
    out += [""] if out[-1] else []
    for goal in document["goals"]:
        out.append(f"[{goal['status']:^13}] {goal['goal']}: {_goal_value(goal)}")
    out += ["", *document.get("notes", [])] if document.get("notes") else []
    return "\n".join(out)


def _goal_value(goal: dict[str, Any]) -> str:
    if goal["value"] is None:
        return "-"
    if goal["unit"] != "x":
        return f"{goal['value']:.2f} {goal['unit']}"
    rounds = goal.get("per_round") or []
    spread = f" (rounds: {min(rounds):.2f} to {max(rounds):.2f})" if len(rounds) > 1 else ""
    return f"{goal['value']:.2f}x{spread}"


def format_markdown(document: dict[str, Any]) -> str:
    """The README's Performance tables, from a results document."""
    m = document["machine"]
    s = document["settings"]
    out = [
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['os']}, {m['python']}, "
        f"event loop {m['loop']}{' (uvloop ' + m['uvloop'] + ' installed)' if m['uvloop'] else ''}; "
        f"median of {s['runs']} runs, servers in {'the same' if s['inproc'] else 'their own'} process.",
        "",
        "| group | measured | req/s | p50 ms | p99 ms | client CPU/req | server CPU/req | ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    out += [f"| {' | '.join(cell.replace('|', '/') for cell in row)} |" for row in _table_rows(document)]
    out += ["", "| goal | measured | status |", "|---|---:|---|"]
    out += [f"| {g['goal']} | {_goal_value(g)} | {g['status']} |" for g in document["goals"]]
    out += ["", *(f"Note: {note}." for note in document.get("notes", []))] if document.get("notes") else []
    return "\n".join(out)
