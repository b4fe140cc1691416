"""A sweep's seeds in worker processes (`sockrace check --seeds LO-HI --jobs N`), with the verdicts of
one process: the same seeds tried, the same failing seeds, the same first failing seed.

Each worker is `python -m sockrace.check.workers`, a process of its own with its own proxy, scenario
import and event loop. Its first message says what to run (`entry(payload, next_seed, send)`, a
top-level function pickled by reference, so that the command line's own way of running a seed runs
there without this module importing the command line); then it asks for seeds one at a time and
sends back each seed's result. Messages are pickles framed by a 4-byte length, on the worker's
stdin (seeds) and on a copy of its stdout taken before anything else runs (results); the worker's
own stdout then writes to its stderr, so that what a scenario prints cannot break a frame.

The same verdicts as one process, however the workers race:
- seeds go out in order, one at a time to whichever worker is free;
- results are taken in seed order (`Exploration.take`), so the sweep stops at the lowest failing
  seed even when a higher one failed first in another worker, and tries exactly the seeds one
  process would have tried (a seed past the first failure is dropped, its worker killed);
- a seed whose run raised (the scenario failed, the upstream went away) or whose worker died is
  taken in its turn too: an error where one process would have raised it, a dead worker an error
  (WorkerCrashed) and never a clean verdict.

A passing seed crosses as its counts alone (Passed: a sweep keeps no more of it); a failing one
as its whole result, stripped of what might not survive the crossing: a call's exception
object (its message stays in `error`; a sweep prints no call's traceback) and a value or expected
value of a type that is not plain data (a class of the scenario's module, which the parent may not
be able to import), which becomes a `Shown` that repr()s as the value did. Verdicts are judged in
the worker, before that.

When the sweep ends, or anything interrupts it (Ctrl-C, SIGTERM), every worker is stopped: told
to finish when idle, killed when busy, and waited for. Workers run in a session of their own, so
that a terminal's Ctrl-C reaches the parent only, which stops them all at once; on Linux the kernel
kills a worker whose parent died (PR_SET_PDEATHSIG, SIGKILL included), elsewhere it reads the end
of its stdin and exits after its seed.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from types import FrameType
from typing import IO, Any, Final

from sockrace.check.explore import Exploration, OnProgress, SeedRun, Setting, Sweep
from sockrace.check.oracle import CallOutcome, Tally
from sockrace.check.result import HammerResult
from sockrace.check.scenario import ScenarioError

# A frame's length prefix: 4 bytes, big-endian.
_LENGTH: Final = struct.Struct(">I")
# The longest repr() a value that is not plain data keeps on its way to the parent: reports quote
# 60 characters of it (oracle.MAX_QUOTED).
MAX_SHOWN: Final = 1_000
# How long a worker told to stop (its stdin closed) may take to exit before it is killed.
STOP_GRACE_S: Final = 5.0
# The environment variable that tells a worker its parent's process id.
_PARENT: Final = "SOCKRACE_WORKER_PARENT"

NextSeed = Callable[[], "int | None"]
Send = Callable[[int, HammerResult, float], None]
Entry = Callable[[Any, NextSeed, Send], None]


class WorkerCrashed(ScenarioError):
    """A worker process ended while it ran a seed: its run has no verdict."""


@dataclass(frozen=True, slots=True)
class Shown:
    """A value that is not plain data, as it repr()s: what the reports quote of it."""

    text: str

    def __repr__(self) -> str:
        return self.text


_PLAIN: Final = (str, bytes, bytearray, int, float, complex, bool, type(None))


def _plain(value: object) -> object:
    """`value` if it is plain data (containers of it too), else a Shown of its repr()."""
    if isinstance(value, _PLAIN):
        return value
    if type(value) in (tuple, list, set, frozenset):
        assert isinstance(value, tuple | list | set | frozenset)
        return type(value)(_plain(item) for item in value)
    if type(value) is dict:
        return {_plain(key): _plain(item) for key, item in value.items()}
    try:
        text = repr(value)
    except Exception as exc:  # the user's __repr__ is a guest too
        text = f"<{type(value).__name__} whose repr() raised {type(exc).__name__}>"
    return Shown(text[:MAX_SHOWN])


def _portable_outcome(outcome: CallOutcome) -> CallOutcome:
    record = outcome.record
    if record.exception is not None or not isinstance(record.value, _PLAIN):
        record = replace(record, value=_plain(record.value), exception=None)
    if isinstance(outcome.expected, _PLAIN) and record is outcome.record:
        return outcome
    return replace(outcome, record=record, expected=_plain(outcome.expected))


def portable(result: HammerResult) -> HammerResult:
    """`result` as it can cross to another process: judged already, without exception objects, its
    values and expected values plain data or Shown."""
    return replace(result, outcomes=tuple(_portable_outcome(o) for o in result.outcomes))


# ------------------------------------------------------------------ frames


def _write_frame(stream: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(stream: IO[bytes]) -> Any:
    """The next message, or None at the end of the stream (or a frame cut short)."""
    head = _read_exactly(stream, _LENGTH.size)
    if head is None:
        return None
    data = _read_exactly(stream, _LENGTH.unpack(head)[0])
    return None if data is None else pickle.loads(data)


# ------------------------------------------------------------------ the worker's side


def _die_with_parent(parent: int) -> None:
    """On Linux, have the kernel kill this worker when its parent dies, even by SIGKILL (which gives
    the parent no chance to stop it); elsewhere the end of its stdin ends it after its seed."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request: nobody is left to ask for seeds
        os._exit(0)


def main() -> int:
    """A worker: read what to run, then run seeds until told there are no more."""
    parent = int(os.environ.get(_PARENT, "0"))
    if parent:
        _die_with_parent(parent)
    results = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what the scenario prints goes to stderr, not into a frame
    jobs = sys.stdin.buffer
    start = _read_frame(jobs)
    if start is None:
        return 0
    entry, payload = start

    def next_seed() -> int | None:
        seed = _read_frame(jobs)
        return seed if isinstance(seed, int) else None

    def send(seed: int, result: HammerResult, seconds: float) -> None:
        if result.ok:  # a passing run is kept as its counts only (Sweep.records): the rest stays here
            _write_frame(results, ("passed", seed, result.tally, seconds))
        else:
            _write_frame(results, ("result", seed, portable(result), seconds))

    try:
        entry(payload, next_seed, send)
    except BrokenPipeError:  # the parent is gone: nobody to tell
        return 0
    except BaseException as exc:  # the seed's run raised: the parent takes it in its turn
        with contextlib.suppress(OSError):
            _write_frame(results, ("error", _portable_error(exc)))
        return 0
    return 0


def _portable_error(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else a ScenarioError saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return ScenarioError(f"{type(exc).__name__}: {exc}")
    return exc


# ------------------------------------------------------------------ the parent's side


class _Worker:
    """One worker process, and the thread that reads its frames onto the parent's queue."""

    def __init__(self, number: int, inbox: queue.Queue[tuple[_Worker, Any]],
                 start: tuple[Entry, Any]) -> None:
        self.number = number
        self.seed: int | None = None  # the seed it runs now
        self.closed = False
        env = dict(os.environ)
        # The parent's import path, so that the worker imports the same sockrace and scenario.
        env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
        env[_PARENT] = str(os.getpid())
        self.process = subprocess.Popen([sys.executable, "-m", "sockrace.check.workers"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                        start_new_session=True)
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self._stdin, stdout = self.process.stdin, self.process.stdout
        self._reader = threading.Thread(target=self._read, args=(stdout, inbox), daemon=True,
                                        name=f"sockrace worker {number}")
        self._reader.start()
        _write_frame(self._stdin, start)

    def _read(self, stdout: IO[bytes], inbox: queue.Queue[tuple[_Worker, Any]]) -> None:
        while True:
            try:
                message = _read_frame(stdout)
            except Exception:  # a garbled frame: the worker is no use any more
                message = None
            inbox.put((self, message))
            if message is None:
                return

    def give(self, seed: int | None) -> None:
        """Run `seed`; None: no more seeds, exit."""
        self.seed = seed
        if self.closed:
            return
        try:
            if seed is None:
                self.closed = True
                self._stdin.close()
            else:
                _write_frame(self._stdin, seed)
        except OSError:  # it died: its reader says so
            self.closed = True

    def stop(self) -> None:
        """Kill it if it still runs a seed; otherwise let it finish (it has no more seeds)."""
        if self.seed is not None:
            with contextlib.suppress(OSError):
                self.process.kill()
        self.give(None)

    def wait(self) -> None:
        try:
            self.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):
            self._stdin.close()
        self._reader.join(STOP_GRACE_S)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def describe_end(self) -> str:
        code = self.process.poll()
        if code is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.process.wait(STOP_GRACE_S)
        if code is None:
            how = "stopped answering"
        elif code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        return f"worker {self.number} (pid {self.process.pid}) {how} while it ran seed {self.seed}"


@dataclass(frozen=True, slots=True)
class Passed:
    """A seed whose run passed, as a worker sends it back: its counts, not its calls (a sweep keeps
    no more of it: Sweep.records)."""

    seed: int
    tally: Tally

    @property
    def failed(self) -> bool:
        return False

    @property
    def kind(self) -> str:
        return "ok"


@dataclass(frozen=True, slots=True)
class _Ran:
    run: SeedRun | Passed
    seconds: float

    @property
    def tally(self) -> Tally:
        return self.run.tally if isinstance(self.run, Passed) else self.run.result.tally


def sweep_in_workers(entry: Entry, payload: Any, setting: Setting, seeds: Sequence[int], *, jobs: int,
                     keep_going: bool = False, on_progress: OnProgress | None = None) -> Sweep[SeedRun]:
    """Run `setting` under each seed of `seeds` in `jobs` worker processes, each running
    `entry(payload, next_seed, send)` (see the module's doc); what one process's `sweep` would
    return. Raises what a seed's run raised, WorkerCrashed when a worker died during a seed, in the
    seed's turn; KeyboardInterrupt as it comes, every worker stopped first."""
    with _terminated_as_exit():
        return _sweep(entry, payload, setting, seeds, jobs=jobs, keep_going=keep_going,
                      on_progress=on_progress)


@contextlib.contextmanager
def _terminated_as_exit() -> Iterator[None]:
    """SIGTERM (main thread only) ends the sweep as SystemExit(143), which stops every worker on its
    way out, rather than ending this process at once and leaving them running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _swept(exploring: Exploration[SeedRun | Passed]) -> Sweep[SeedRun]:
    """The sweep as one process's: its failures are whole runs (a passed seed never is one)."""
    found = exploring.result()
    failures = tuple(run for run in found.failures if isinstance(run, SeedRun))
    return Sweep(found.tried, failures, found.elapsed_s, found.records)


def _sweep(entry: Entry, payload: Any, setting: Setting, seeds: Sequence[int], *, jobs: int,
           keep_going: bool, on_progress: OnProgress | None) -> Sweep[SeedRun]:
    exploring: Exploration[SeedRun | Passed] = Exploration(seeds, keep_going=keep_going,
                                                           on_progress=on_progress)
    inbox: queue.Queue[tuple[_Worker, Any]] = queue.Queue()
    order = list(seeds)
    outgoing = iter(order)
    landed: dict[int, _Ran | BaseException] = {}
    taken = 0
    workers: list[_Worker] = []
    try:
        for number in range(1, min(jobs, len(order)) + 1):
            worker = _Worker(number, inbox, (entry, payload))
            workers.append(worker)
            worker.give(next(outgoing, None))
        live = len(workers)
        while taken < len(order) and live:
            worker, message = inbox.get()
            seed = worker.seed
            if message is None:  # its output ended: it exited, or died
                live -= 1
                if seed is not None:
                    landed[seed] = WorkerCrashed(worker.describe_end())
                    worker.seed = None
            elif message[0] in ("result", "passed"):
                kind, ran_seed, body, seconds = message
                run = (SeedRun(setting.with_seed(ran_seed), body) if kind == "result"
                       else Passed(ran_seed, body))
                landed[ran_seed] = _Ran(run, seconds)
                worker.give(next(outgoing, None))
            elif seed is not None:  # "error": the worker's run raised, and it exits
                landed[seed] = message[1]
                worker.seed = None
            while taken < len(order) and order[taken] in landed:
                ran = landed.pop(order[taken])
                taken += 1
                if isinstance(ran, BaseException):
                    raise ran
                if not exploring.take(ran.run, ran.seconds, ran.tally):
                    return _swept(exploring)
        if taken < len(order):  # every worker gone with seeds left: cannot happen unless they all crashed
            raise WorkerCrashed(f"every worker ended with {len(order) - taken} seeds left")
        return _swept(exploring)
    finally:
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.wait()


if __name__ == "__main__":
    sys.exit(main())
