"""sockrace's Python driver: runs a check's scenario in this interpreter, told what to do over stdin.

    PYTHON path/to/python_driver.py [--backend asyncio|threads|trio]

Speaks the driver protocol of docs/driver.md (version 1): JSON lines in on standard input, JSON lines
out on standard output; the guest's prints go to standard error. One standard-library file that runs
on CPython 3.7 and later and imports nothing of sockrace: sockrace need not be installed here, and a
virtualenv with the client under test (of the version it really runs) is enough.

Backends (docs/driver.md, "The Python driver"); `--backend` names the default, listed first in hello:
- asyncio: the scenario is an async function returning (call, expect), or an async generator
  yielding it once and cleaning up after; call(i) returns an awaitable of call i's value;
- threads: a plain function returning (call, expect), or a generator function yielding it once;
  call(i) returns the value; one thread per task, and no cuts (a thread cannot be cancelled: the
  client's own timeout is the cut, reported as what it raises);
- trio (when trio imports): the async forms of asyncio, run by trio in guest mode on this driver's
  asyncio loop; cuts are cancel scopes.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import importlib.util
import inspect
import json
import math
import os
import platform
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

BACKENDS = ("asyncio", "threads", "trio")

PROTOCOL = 1
MAX_MESSAGE = 200  # an error message is cut here: one line in sockrace's report
# How long the calls of a stopped run may take to unwind before they are reported stopped anyway.
CANCEL_GRACE_S = 1.0


def now_ms() -> float:
    return time.monotonic() * 1000.0


def encode(value: object, depth: int = 0) -> Any:
    """`value` as the JSON the host compares: docs/driver.md, "Values"."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$repr": repr(value), "$type": "float"}
    if depth < 50:
        if isinstance(value, (tuple, list)):
            return [encode(v, depth + 1) for v in value]
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {k: encode(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    try:
        shown = repr(value)
    except Exception:
        shown = "<unrepresentable>"
    return {"$repr": shown, "$type": type(value).__name__}


def error_of(exc: BaseException) -> dict[str, str]:
    name = type(exc).__name__
    try:
        text = repr(exc.code) if isinstance(exc, SystemExit) else str(exc)
    except Exception:
        text = "(its message could not be formatted)"
    text = " ".join(text.split())
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    return {"type": name, "message": text}


def described(exc: BaseException) -> str:
    error = error_of(exc)
    return error["type"] + (": " + error["message"] if error["message"] else "")


def traceback_of(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        return ""


def ends_program(exc: BaseException) -> bool:
    """Would end a program: a BaseException that is neither an Exception nor a cancellation. On 3.7
    CancelledError is an Exception; from 3.8 on a BaseException, named here either way."""
    return not isinstance(exc, (Exception, asyncio.CancelledError))


class Failed(Exception):
    """A step failed: `where`, and the guest's exception as __cause__ (or a message of ours)."""

    def __init__(self, where: str, message: str, cause: BaseException | None = None) -> None:
        Exception.__init__(self, message)
        self.where = where
        self.cause = cause


class Output:
    """Our standard output, kept apart: the file descriptor 1 the guest sees is standard error."""

    def __init__(self) -> None:
        fd = os.dup(1)
        os.dup2(2, 1)
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._pending: list[bytes] = []
        self._scheduled = False
        sys.stdout = sys.stderr

    def send(self, message: dict[str, Any]) -> None:
        """Write `message` as one line: at the end of the event loop's pass when one runs (the
        messages of a pass go out in one write, in order), at once otherwise."""
        line = json.dumps(message, separators=(",", ":"), allow_nan=False) + "\n"
        self._pending.append(line.encode("utf-8"))
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        data, self._pending = b"".join(self._pending), []
        while data:
            written = self._file.write(data)
            data = data[written or 0:]


class Input:
    """Standard input's lines, read in a thread and handed to the event loop as they come."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._loop = loop
        thread = threading.Thread(target=self._read, name="sockrace-driver-stdin", daemon=True)
        thread.start()

    def _read(self) -> None:
        stream = sys.stdin.buffer
        while True:
            line = stream.readline()
            self._loop.call_soon_threadsafe(self._queue.put_nowait, line)
            if not line:
                return

    async def next(self) -> dict[str, Any] | None:
        """The next request, or None when standard input closed."""
        line = await self._queue.get()
        if not line:
            return None
        try:
            request = json.loads(line.decode("utf-8"))
        except ValueError:
            raise Failed("run", f"a request that is not JSON: {line[:80]!r}") from None
        if not isinstance(request, dict):
            raise Failed("run", f"a request that is not a JSON object: {line[:80]!r}")
        return request


def load(name: str, backend: str) -> Callable[..., Any]:
    where, colon, function_name = name.rpartition(":")
    if not colon or not where or not function_name.isidentifier():
        raise Failed("setup", f"scenario {name!r}: expected FILE.py:FUNC or module:FUNC")
    if where.endswith(".py") or "/" in where or "\\" in where:
        if not os.path.isfile(where):
            raise Failed("setup", f"scenario {name}: no such file {where}")
        folder = os.path.dirname(os.path.abspath(where))
        if folder not in sys.path:
            sys.path.insert(0, folder)  # as `python FILE.py` would: its neighbours import
        module_name = "sockrace_scenario_" + os.path.splitext(os.path.basename(where))[0]
        spec = importlib.util.spec_from_file_location(module_name, where)
        if spec is None or spec.loader is None:
            raise Failed("setup", f"scenario {name}: {where} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    function = getattr(module, function_name, None)
    if function is None:
        raise Failed("setup", f"scenario {name}: {where} has no function {function_name}")
    is_async = inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)
    if backend == "threads" and (is_async or not callable(function)):
        raise Failed("setup", f"scenario {name}: {function_name} is not a plain function (the threads "
                     "backend runs `def` returning (call, expect), or yielding it once)")
    if backend != "threads" and not is_async:
        raise Failed("setup", f"scenario {name}: {function_name} is not an async function "
                     "(`async def` returning (call, expect), or yielding it once)")
    return function  # type: ignore[no-any-return]


def backend_problem(backend: str, *, load: bool = True) -> str | None:
    """Why this interpreter cannot run `backend`, or None when it can. `load=False` only looks for
    trio instead of importing it: importing trio takes about 100 ms, which every check through this
    driver would pay at its hello even when it runs asyncio (a trio that is found but does not
    import still fails, in one line, at the set-up that asks for it)."""
    if backend not in BACKENDS:
        return f"no backend {backend!r} (this driver has {', '.join(BACKENDS)})"
    if backend == "trio":
        try:
            if load:
                importlib.import_module("trio")
            elif importlib.util.find_spec("trio") is None:
                return "backend trio: trio is not installed here"
        except Exception as exc:  # not installed, or broken on this interpreter
            return f"backend trio: trio does not import here ({described(exc)})"
    return None


class TrioSession:
    """trio running in guest mode on this driver's asyncio loop (trio.lowlevel.start_guest_run): its
    tasks' steps run on the loop's thread, between asyncio's callbacks, so they may send messages and
    settle asyncio futures directly; only trio's wait for I/O runs in a thread of trio's. One session
    holds the scenario's client from its set-up to its clean-up (trio's sockets live in one run)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.trio: Any = importlib.import_module("trio")
        self.loop = loop
        self.token: Any = None
        self.nursery: Any = None
        self.started: asyncio.Future[None] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        self.trio.lowlevel.start_guest_run(
            self.main, run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=loop.call_soon, done_callback=self.done)

    async def main(self) -> None:
        self.token = self.trio.lowlevel.current_trio_token()
        async with self.trio.open_nursery() as nursery:
            self.nursery = nursery
            self.started.set_result(None)
            await self.trio.sleep_forever()

    def done(self, outcome: Any) -> None:
        def settle() -> None:
            if not self.started.done():  # it ended before it began: say why
                self.started.set_exception(RuntimeError(f"trio's run ended at once: {outcome!r}"))
            if not self.ended.done():
                self.ended.set_result(None)
        self.loop.call_soon_threadsafe(settle)

    def submit(self, function: Callable[..., Awaitable[Any]], *args: Any) -> asyncio.Future[Any]:
        """`await function(*args)` as a task of the session; its outcome in the asyncio future returned."""
        future: asyncio.Future[Any] = self.loop.create_future()

        async def task() -> None:
            try:
                result = await function(*args)
            except self.trio.Cancelled:
                if not future.done():
                    future.cancel()
                raise
            except BaseException as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)

        self.token.run_sync_soon(self.nursery.start_soon, task)
        return future

    def run_soon(self, function: Callable[[], object]) -> None:
        """`function()` in trio's context (a cancel scope's cancel() needs it)."""
        self.token.run_sync_soon(function)

    async def close(self) -> None:
        if self.nursery is not None and not self.ended.done():
            self.token.run_sync_soon(self.nursery.cancel_scope.cancel)
            await asyncio.wait([self.ended], timeout=CANCEL_GRACE_S)


class Driver:
    def __init__(self, out: Output, requests: Input, default_backend: str = "asyncio") -> None:
        self.out = out
        self.requests = requests
        self.default_backend = default_backend
        self.backend = default_backend  # the one setup chose
        self.generator: Any = None
        self.call: Callable[[int], Any] | None = None
        self.stopping = False
        self.running: set[int] = set()  # the calls started and not yet reported ended
        self.generation = 0  # runs sent `ran`: a call outliving its run's stop says nothing more
        self.trio: TrioSession | None = None  # the trio backend's run, from the set-up on
        self.calls_scope: Any = None  # trio: the cancel scope of the run's calls, which a stop cancels
        self.calls_nursery: Any = None  # trio: where the calls' tasks (and cancel timers) run

    async def serve(self) -> None:
        while True:
            request = await self.requests.next()
            if request is None:
                return
            op = request.get("op")
            if op == "hello":
                self.hello(request)
            elif op == "setup":
                await self.setup(request)
            elif op == "run":
                await self.run(request.get("calls") or [])
            elif op == "stop":
                continue  # late: the run it meant is over
            elif op == "cleanup":
                await self.cleanup()
            else:
                raise Failed("run", f"unknown request {op!r}")

    def hello(self, request: dict[str, Any]) -> None:
        if request.get("protocol") != PROTOCOL:
            raise Failed("hello", "this driver speaks protocol {}, not {!r}".format(
                PROTOCOL, request.get("protocol")))
        problem = backend_problem(self.default_backend)
        if problem is not None:
            raise Failed("hello", problem)
        runtime = f"{platform.python_implementation()} {platform.python_version()}"
        # Its default first (the one sockrace asks for when the user named none), then the others
        # this interpreter can run.
        others = [b for b in BACKENDS if b != self.default_backend and backend_problem(b, load=False) is None]
        self.out.send({"op": "hello", "protocol": PROTOCOL, "driver": "python", "runtime": runtime,
                       "backends": [self.default_backend, *others]})

    async def setup(self, request: dict[str, Any]) -> None:
        backend = request.get("backend", self.default_backend)
        problem = backend_problem(backend)
        if problem is not None:
            raise Failed("setup", problem)
        self.backend = backend
        name = request["scenario"]
        host, port = request["address"]
        try:
            function = load(name, backend)
            if backend == "threads":
                pair, verb = self.sync_setup(name, function, (host, port))
            elif backend == "trio":
                self.trio = TrioSession(asyncio.get_event_loop())
                await self.trio.started
                pair, verb = await self.trio.submit(self.async_setup, name, function, (host, port))
            elif inspect.isasyncgenfunction(function):
                self.generator = function((host, port))
                verb = "yielded"
                try:
                    pair = await self.generator.__anext__()
                except StopAsyncIteration:
                    raise Failed("setup", f"scenario {name} ended without yielding (call, expect)") from None
            else:
                verb = "returned"
                pair = await function((host, port))
        except Failed:
            raise
        except BaseException as exc:
            raise Failed("setup", f"scenario {name} raised {described(exc)}", exc) from exc
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(callable(v) for v in pair)):
            raise Failed("setup", f"scenario {name} {verb} {pair!r:.80}, not (call, expect): two callables")
        self.call, expect = pair
        expected = []
        for i in range(int(request.get("total", 0))):
            try:
                expected.append(encode(expect(i)))
            except BaseException as exc:
                raise Failed("expect", f"expect({i}) raised {described(exc)}", exc) from exc
        self.out.send({"op": "ready", "expected": expected})

    async def run(self, calls: list[dict[str, Any]]) -> None:
        lanes: dict[int, list[dict[str, Any]]] = {}
        for call in calls:
            lanes.setdefault(call["task"], []).append(call)
        self.stopping = False
        loop = asyncio.get_event_loop()
        workers: list[asyncio.Future[Any]]
        if self.trio is not None:
            workers = [self.trio.submit(self.trio_lanes, list(lanes.values()))]
        else:
            workers = [loop.create_task(self.lane(lane)) for lane in lanes.values()]
        everything: asyncio.Future[Any] = asyncio.gather(*workers, return_exceptions=True)
        stop = loop.create_task(self.requests.next())
        either: list[asyncio.Future[Any]] = [everything, stop]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if stop.done():
            request = stop.result()  # raises for a request that is not JSON: reported as failed
            if request is None:
                raise Failed("run", "standard input closed during a run")
            if request.get("op") != "stop":
                raise Failed("run", "{!r} during a run: only stop may come then".format(request.get("op")))
            self.stopping = True
            if self.trio is not None:
                self.trio.run_soon(self.cancel_trio_calls)
            else:
                for worker in workers:
                    worker.cancel()
        else:
            stop.cancel()
        # A call that swallows its cancellation may go on for ever: after the grace, it is reported
        # stopped all the same (docs/driver.md, `stop`).
        await asyncio.wait([everything], timeout=CANCEL_GRACE_S if self.stopping else None)
        for index in sorted(self.running):
            self.out.send({"op": "end", "index": index, "at_ms": now_ms(), "outcome": "stopped"})
        self.running.clear()
        if not everything.done():
            everything.cancel()
            everything.add_done_callback(lambda f: f.cancelled() or f.exception())  # never raised
        self.generation += 1
        for worker in workers:
            error = worker.exception() if worker.done() and not worker.cancelled() else None
            if error is not None:
                raise error
        self.out.send({"op": "ran"})

    async def async_setup(self, name: str, function: Callable[..., Any],
                          address: tuple[str, int]) -> tuple[Any, str]:
        """The trio backend's set-up, in trio: the async forms, as asyncio's."""
        if inspect.isasyncgenfunction(function):
            self.generator = function(address)
            try:
                return await self.generator.__anext__(), "yielded"
            except StopAsyncIteration:
                raise Failed("setup", f"scenario {name} ended without yielding (call, expect)") from None
        return await function(address), "returned"

    def sync_setup(self, name: str, function: Callable[..., Any],
                   address: tuple[str, int]) -> tuple[Any, str]:
        """The threads backend's set-up: a plain function's (call, expect), or a generator's first."""
        if inspect.isgeneratorfunction(function):
            self.generator = function(address)
            try:
                return next(self.generator), "yielded"
            except StopIteration:
                raise Failed("setup", f"scenario {name} ended without yielding (call, expect)") from None
        return function(address), "returned"

    async def lane(self, calls: list[dict[str, Any]]) -> None:
        if self.backend == "threads":
            await self.lane_in_thread(calls)
            return
        for call in calls:
            if not await self.one(call):
                return

    async def lane_in_thread(self, calls: list[dict[str, Any]]) -> None:
        """The task's calls made one after the other in a thread of its own. A thread cannot be
        cancelled: on a stop this coroutine ends at once, the thread finishes its call (unreported)
        and makes no more."""
        for call in calls:
            if call.get("cut", "none") != "none":
                raise Failed("run", "the threads backend cannot cut a call (a thread cannot be "
                             "cancelled: the client's own timeout is the cut)")
        loop = asyncio.get_event_loop()
        finished: asyncio.Future[None] = loop.create_future()
        generation = self.generation

        def body() -> None:
            try:
                self.calls_in_thread(loop, calls, generation)
            finally:
                loop.call_soon_threadsafe(finish)

        def finish() -> None:
            if not finished.done():  # cancelled by a stop
                finished.set_result(None)

        threading.Thread(target=body, name="sockrace-task-{}".format(calls[0]["task"]), daemon=True).start()
        await finished

    def calls_in_thread(self, loop: asyncio.AbstractEventLoop, calls: list[dict[str, Any]],
                        generation: int) -> None:
        """A thread's calls. The driver's state is touched on the event loop only (started, ended)."""
        assert self.call is not None
        for call in calls:
            index = call["index"]
            for _ in range(int(call.get("yields", 0))):
                time.sleep(0)  # lets the other threads run, as asyncio.sleep(0) lets the other tasks
            if self.stopping or generation != self.generation:
                return
            loop.call_soon_threadsafe(self.thread_started, index, now_ms(), generation)
            end: dict[str, Any] = {"op": "end", "index": index, "outcome": "returned"}
            try:
                end["value"] = encode(self.call(index))
            except BaseException as exc:
                self.raised(end, exc)
            end["at_ms"] = now_ms()
            loop.call_soon_threadsafe(self.thread_ended, end)
            if end.get("ends_program"):
                return

    def thread_started(self, index: int, at_ms: float, generation: int) -> None:
        if generation == self.generation and not self.stopping:  # else: after a stop, unreported
            self.running.add(index)
            self.out.send({"op": "start", "index": index, "at_ms": at_ms})

    def thread_ended(self, end: dict[str, Any]) -> None:
        if end["index"] in self.running:  # reported stopped already, or never reported started
            self.running.discard(end["index"])
            self.out.send(end)

    async def one(self, call: dict[str, Any]) -> bool:
        """Make one call and report it; False when the lane is to go no further."""
        index = call["index"]
        for _ in range(int(call.get("yields", 0))):
            await asyncio.sleep(0)
        if self.stopping:
            return False  # the lane took its stop in and went on: it goes no further
        self.running.add(index)
        generation = self.generation
        cut, at_ms = call.get("cut", "none"), call.get("at_ms")
        self.out.send({"op": "start", "index": index, "at_ms": now_ms()})
        end: dict[str, Any] = {"op": "end", "index": index}
        try:
            if cut == "deadline" and at_ms is not None:
                outcome, value = await self.under_deadline(index, at_ms)
            elif cut == "cancel" and at_ms is not None:
                outcome, value = await self.cancelled_at(index, at_ms)
            else:
                outcome, value = "returned", await self.make(index)
            end["outcome"] = outcome
            if outcome == "returned":
                end["value"] = encode(value)
        except asyncio.CancelledError as exc:
            if self.stopping:
                end["outcome"] = "stopped"
                end["at_ms"] = now_ms()
                self.running.discard(index)
                if generation == self.generation:
                    self.out.send(end)
                raise
            self.raised(end, exc)
        except BaseException as exc:
            self.raised(end, exc)
        end["at_ms"] = now_ms()
        self.running.discard(index)
        if generation == self.generation:
            self.out.send(end)
        return not end.get("ends_program") and not self.stopping

    def make(self, index: int) -> Awaitable[object]:
        """Call `index` through the client the set-up made."""
        assert self.call is not None
        awaitable: Awaitable[object] = self.call(index)
        return awaitable

    @staticmethod
    def raised(end: dict[str, Any], exc: BaseException,
               cancelled: type[BaseException] | None = None) -> None:
        """`end`: the call raised `exc`; `cancelled` is the backend's cancellation (it ends no program)."""
        end["outcome"] = "raised"
        end["error"] = error_of(exc)
        end["traceback"] = traceback_of(exc)
        if ends_program(exc) and not (cancelled is not None and isinstance(exc, cancelled)):
            end["ends_program"] = True

    async def under_deadline(self, index: int, at_ms: float) -> tuple[str, object]:
        """The call's own task cancelled at_ms after it started, as asyncio.timeout does."""
        task = asyncio.current_task()
        assert task is not None
        fired: list[bool] = []

        def fire() -> None:
            fired.append(task.cancel())

        timer = asyncio.get_event_loop().call_later(at_ms / 1000.0, fire)
        try:
            return "returned", await self.make(index)
        except asyncio.CancelledError:
            if fired and not self.stopping:
                return "deadline", None
            raise
        finally:
            timer.cancel()

    async def cancelled_at(self, index: int, at_ms: float) -> tuple[str, object]:
        """The call in a sub-task, cancelled at_ms after it started; the lane lives on."""
        loop = asyncio.get_event_loop()
        sub = loop.create_task(_awaited(self.make, index))
        fired: list[bool] = []
        timer = loop.call_later(at_ms / 1000.0, lambda: fired.append(sub.cancel()))
        try:
            return "returned", await sub
        except asyncio.CancelledError:
            if fired and sub.cancelled() and not self.stopping:
                return "cancelled", None
            raise
        finally:
            timer.cancel()

    # ------------------------------------------------------------------ trio's calls

    def cancel_trio_calls(self) -> None:
        if self.calls_scope is not None:
            self.calls_scope.cancel()

    async def trio_lanes(self, lanes: list[list[dict[str, Any]]]) -> None:
        """Every task's calls, in a nursery of trio; a stop cancels them all."""
        assert self.trio is not None
        trio = self.trio.trio
        with trio.CancelScope() as scope:
            self.calls_scope = scope
            if self.stopping:  # the stop came before this task began
                scope.cancel()
            async with trio.open_nursery() as nursery:
                self.calls_nursery = nursery
                for lane in lanes:
                    nursery.start_soon(self.trio_lane, lane)
        self.calls_scope = self.calls_nursery = None

    async def trio_lane(self, calls: list[dict[str, Any]]) -> None:
        for call in calls:
            if not await self.trio_one(call):
                return

    async def trio_one(self, call: dict[str, Any]) -> bool:
        """Make one call in trio and report it; False when the lane is to go no further."""
        assert self.trio is not None
        trio = self.trio.trio
        index = call["index"]
        for _ in range(int(call.get("yields", 0))):
            await trio.sleep(0)
        if self.stopping:
            return False
        self.running.add(index)
        generation = self.generation
        cut, at_ms = call.get("cut", "none"), call.get("at_ms")
        self.out.send({"op": "start", "index": index, "at_ms": now_ms()})
        end: dict[str, Any] = {"op": "end", "index": index}
        try:
            if cut in ("deadline", "cancel") and at_ms is not None:
                outcome, value = await self.trio_cut(index, cut, at_ms)
            else:
                outcome, value = "returned", await self.make(index)
            end["outcome"] = outcome
            if outcome == "returned":
                end["value"] = encode(value)
        except trio.Cancelled:
            if self.stopping:  # the stop's cancellation: reported stopped, and it goes on up
                end["outcome"] = "stopped"
                end["at_ms"] = now_ms()
                self.running.discard(index)
                if generation == self.generation:
                    self.out.send(end)
            raise
        except BaseException as exc:
            self.raised(end, exc, trio.Cancelled)
        end["at_ms"] = now_ms()
        self.running.discard(index)
        if generation == self.generation:
            self.out.send(end)
        return not end.get("ends_program") and not self.stopping

    async def trio_cut(self, index: int, cut: str, at_ms: float) -> tuple[str, object]:
        """The call in a cancel scope: with a deadline at_ms after it started (`deadline`, as
        trio.move_on_after), or cancelled at at_ms by another task (`cancel`)."""
        assert self.trio is not None
        trio = self.trio.trio
        value: object = None
        if cut == "deadline":
            scope = trio.move_on_after(at_ms / 1000.0)
        else:
            scope = trio.CancelScope()
            timer = trio.CancelScope()

            async def cancel_at() -> None:
                with timer:
                    await trio.sleep(at_ms / 1000.0)
                    scope.cancel()

            self.calls_nursery.start_soon(cancel_at)
        try:
            with scope:
                value = await self.make(index)
        finally:
            if cut != "deadline":
                timer.cancel()
        if scope.cancelled_caught:
            return ("deadline" if cut == "deadline" else "cancelled"), None
        return "returned", value

    async def cleanup(self) -> None:
        generator, self.generator = self.generator, None
        if generator is not None:
            try:
                if inspect.isgenerator(generator):
                    next(generator)
                elif self.trio is not None:
                    await self.trio.submit(generator.__anext__)
                else:
                    await generator.__anext__()
            except (StopIteration, StopAsyncIteration):
                pass
            except BaseException as exc:
                raise Failed("cleanup", f"the clean-up raised {described(exc)}", exc) from exc
            else:
                raise Failed("cleanup", "the scenario yielded more than once")
        self.out.send({"op": "cleaned"})


async def _awaited(call: Callable[[int], Awaitable[object]], index: int) -> object:
    return await call(index)


async def main_async(out: Output, backend: str) -> int:
    driver = Driver(out, Input(asyncio.get_event_loop()), backend)
    try:
        await driver.serve()
    except Failed as failed:
        message = {"op": "failed", "where": failed.where,
                   "error": {"type": type(failed.cause).__name__ if failed.cause else "DriverError",
                             "message": str(failed)}}
        if failed.cause is not None:
            message["traceback"] = traceback_of(failed.cause)
        out.send(message)
        return 1
    finally:
        if driver.trio is not None:  # its run ends before the loop it is a guest of
            await driver.trio.close()
    return 0


def main() -> None:
    # A Ctrl-C reaches sockrace too, which ends this driver by closing its input (or killing it): a
    # KeyboardInterrupt here can then only be the guest's own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = Output()
    arguments = sys.argv[1:]
    backend = arguments[1] if len(arguments) == 2 and arguments[0] == "--backend" else "asyncio"
    try:
        if arguments and backend == "asyncio" and arguments != ["--backend", "asyncio"]:
            raise SystemExit("usage: python_driver.py [--backend asyncio|threads|trio]")
        code = asyncio.run(main_async(out, backend))
    except BaseException as exc:  # ours: say it in the protocol's words before going
        out.send({"op": "failed", "where": "run", "error": error_of(exc), "traceback": traceback_of(exc)})
        code = 1
    out.flush()  # what the last pass of the loop left
    sys.stderr.flush()
    os._exit(code)  # guest threads (a pool's) must not hold the process up


if __name__ == "__main__":
    main()
