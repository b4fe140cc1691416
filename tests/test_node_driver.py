"""The Node.js driver (src/sockrace/drivers/node/driver.js), spoken to as sockrace's host would.

Each test starts `node driver.js` with pipes, writes docs/driver.md's requests, reads its lines with
a timeout, and kills it afterwards. Scenarios are small JavaScript files written per test; the
example clients (examples/node/line_clients.js) run against a server of the test's own that holds
one reply back, so that a cut lands between a request and its reply every time.

The last tests run `sockrace check FILE.js:FUNC --driver node` against a sockrace server: the naive
client crosses in every seed, the correct one in none of 50.

Needs `node` (Debian's nodejs). Without it these tests skip, saying so; under CI (CI=true, as
.ci/run sets it, which installs nodejs) they fail instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import ThreadedServer
from sockrace.cli import EXIT_CHECK_FAILED, EXIT_OK, main

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "src" / "sockrace" / "drivers" / "node" / "driver.js"
LINE_CLIENTS = ROOT / "examples" / "node" / "line_clients.js"
READ_TIMEOUT_S = 10.0  # a reply the driver owes; generous, a passing read takes milliseconds


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        reason = "node is not installed (apt-get install nodejs)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: .ci/run should have provided it")
        pytest.skip(reason)
    return node


class Driver:
    """`node driver.js` with its standard streams; lines from stdout come through a queue read
    by a thread, so that a read can time out instead of hanging the test."""

    def __init__(self, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [_node(), str(DRIVER)], cwd=cwd, text=True, encoding="utf-8",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self.readers = [threading.Thread(target=self._pump, daemon=True),
                        threading.Thread(target=self._collect_stderr, daemon=True)]
        for reader in self.readers:
            reader.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _collect_stderr(self) -> None:
        assert self.process.stderr is not None
        self.stderr.extend(self.process.stderr)

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def read(self) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=READ_TIMEOUT_S)
        except queue.Empty:
            pytest.fail(f"the driver said nothing for {READ_TIMEOUT_S} s; stderr: {''.join(self.stderr)}")
        if line is None:
            pytest.fail(f"the driver closed its stdout (exit {self.process.poll()}); "
                        f"stderr: {''.join(self.stderr)}")
        message = json.loads(line)
        assert isinstance(message, dict), line
        return message

    def read_until(self, op: str) -> list[dict[str, Any]]:
        """The messages up to and including the first whose op is `op`."""
        messages = [self.read()]
        while messages[-1]["op"] != op:
            messages.append(self.read())
        return messages

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        return self.read()

    def start(self, scenario: str, *, total: int = 0,
              address: tuple[str, int] = ("127.0.0.1", 9)) -> dict[str, Any]:
        assert self.request({"op": "hello", "protocol": 1})["op"] == "hello"
        return self.request({"op": "setup", "scenario": scenario, "address": list(address),
                             "backend": "promises", "total": total})

    def run(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.send({"op": "run", "calls": calls})
        return self.read_until("ran")

    def close_stdin(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout=READ_TIMEOUT_S)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for reader in self.readers:  # they end at the pipes' end of file, which the kill brought
            reader.join(timeout=READ_TIMEOUT_S)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                # stdin's buffer may be flushed here, to a driver that is gone
                with contextlib.suppress(BrokenPipeError):
                    stream.close()


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Driver]:
    started = Driver(tmp_path)
    try:
        yield started
    finally:
        started.kill()


def call(index: int, task: int = 0, *, yields: int = 0, cut: str = "none",
         at_ms: float = 0.0) -> dict[str, Any]:
    return {"index": index, "task": task, "yields": yields, "cut": cut, "at_ms": at_ms}


def ends(messages: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {m["index"]: m for m in messages if m["op"] == "end"}


def scenario(tmp_path: Path, source: str, name: str = "scenario.js") -> str:
    (tmp_path / name).write_text(source, encoding="utf-8")
    return f"{name}:make"


# A scenario whose calls do what their index says: the tests' one JavaScript file.
BEHAVIOURS = """
const seen = [];  // what the signals said, for the last call to return
let flag = false;
exports.make = async (address) => {
  console.log("set-up of", address.host, address.port);  // must reach stderr, not the protocol
  return {
    call: (i, signal) => {
      signal.addEventListener("abort", () => seen.push(`${i}:${signal.reason.name}`));
      switch (i) {
        case 0: return Promise.resolve(`value ${i}`);
        case 1: throw new RangeError("one is out of range");
        case 2: return Promise.reject("a string, not an Error");
        case 3: return new Promise(() => {});  // never settles
        case 4: return new Promise((resolve) => setTimeout(() => resolve(seen.slice()), 30));
        case 5: flag = false; setImmediate(() => { flag = true; }); return Promise.resolve(null);
        case 6: return Promise.resolve(flag);
        default: return Promise.resolve(i);
      }
    },
    expect: (i) => i,
    cleanup: async () => console.log("cleaned up"),
  };
};
"""


def test_hello_names_the_driver_and_its_backend(driver: Driver) -> None:
    reply = driver.request({"op": "hello", "protocol": 1})
    assert reply["op"] == "hello"
    assert reply["protocol"] == 1
    assert reply["driver"] == "node"
    assert reply["runtime"].startswith("Node.js v")
    assert reply["backends"] == ["promises"]


def test_another_protocol_is_refused_at_hello(driver: Driver) -> None:
    reply = driver.request({"op": "hello", "protocol": 2})
    assert reply["op"] == "failed"
    assert reply["where"] == "hello"
    assert "protocol 1" in reply["error"]["message"]
    assert driver.process.wait(timeout=READ_TIMEOUT_S) != 0


def test_expected_values_are_encoded_as_the_doc_says(driver: Driver, tmp_path: Path) -> None:
    name = scenario(tmp_path, """
const values = [null, true, 1.5, "text", [1, "a", [null]], {a: 1, b: {c: "d"}}, Buffer.from("hi"),
                undefined, NaN, new Map([[1, 2]]), 10n, new Uint8Array([1, 2, 255])];
exports.make = async () => [async () => null, async (i) => values[i]];
""")
    reply = driver.start(name, total=12)
    assert reply["op"] == "ready", reply
    expected = reply["expected"]
    assert expected[:6] == [None, True, 1.5, "text", [1, "a", [None]], {"a": 1, "b": {"c": "d"}}]
    assert expected[6] == {"$bytes": "aGk="}
    assert expected[11] == {"$bytes": "AQL/"}
    assert expected[7] == {"$repr": "undefined", "$type": "undefined"}
    assert expected[8] == {"$repr": "NaN", "$type": "number"}
    assert expected[9] == {"$repr": "Map(1) { 1 => 2 }", "$type": "Map"}
    assert expected[10] == {"$repr": "10n", "$type": "bigint"}


def test_a_scenario_that_does_not_load_fails_at_setup(driver: Driver, tmp_path: Path) -> None:
    name = scenario(tmp_path, "exports.other = async () => [() => 1, () => 1];")
    reply = driver.start(name)
    assert reply["op"] == "failed"
    assert reply["where"] == "setup"
    assert reply["error"]["type"] == "TypeError"
    assert '"make"' in reply["error"]["message"]


def test_set_up_and_expect_errors_are_reported_where_they_happen(tmp_path: Path) -> None:
    name = scenario(tmp_path, """
exports.make = async (address) => {
  if (address.port === 1) throw new Error("no server at port 1");
  const expect = (i) => { if (i === 2) throw new TypeError("no value for 2"); return i; };
  return {call: async () => 1, expect};
};
""")
    for port, where, error in [(1, "setup", {"type": "Error", "message": "no server at port 1"}),
                               (2, "expect", {"type": "TypeError", "message": "no value for 2"})]:
        driver = Driver(tmp_path)
        try:
            reply = driver.start(name, total=3, address=("127.0.0.1", port))
            assert reply["op"] == "failed"
            assert reply["where"] == where
            assert reply["error"] == error
            assert "scenario.js" in reply["traceback"]
        finally:
            driver.kill()


def test_an_es_module_scenario_loads(driver: Driver, tmp_path: Path) -> None:
    name = scenario(tmp_path, "export async function make() { return [async (i) => i * 2, (i) => i * 2]; }",
                    name="scenario.mjs")
    assert driver.start(name, total=3) == {"op": "ready", "expected": [0, 2, 4]}
    assert ends(driver.run([call(0), call(1, 1)])) == {
        0: {"op": "end", "index": 0, "at_ms": pytest.approx(0, abs=1e9), "outcome": "returned", "value": 0},
        1: {"op": "end", "index": 1, "at_ms": pytest.approx(0, abs=1e9), "outcome": "returned", "value": 2}}


def test_an_unknown_backend_fails_at_setup(driver: Driver, tmp_path: Path) -> None:
    name = scenario(tmp_path, BEHAVIOURS)
    assert driver.request({"op": "hello", "protocol": 1})["op"] == "hello"
    reply = driver.request({"op": "setup", "scenario": name, "address": ["127.0.0.1", 9],
                            "backend": "threads", "total": 1})
    assert reply["op"] == "failed"
    assert reply["where"] == "setup"
    assert "threads" in reply["error"]["message"]


def test_outcomes_of_calls_and_the_guests_prints_on_stderr(driver: Driver, tmp_path: Path) -> None:
    assert driver.start(scenario(tmp_path, BEHAVIOURS), total=2) == {"op": "ready", "expected": [0, 1]}
    messages = driver.run([call(0), call(1, 1), call(2, 2)])
    assert messages[-1] == {"op": "ran"}
    outcomes = ends(messages)
    assert outcomes[0]["outcome"] == "returned"
    assert outcomes[0]["value"] == "value 0"
    assert outcomes[1]["outcome"] == "raised"
    assert outcomes[1]["error"] == {"type": "RangeError", "message": "one is out of range"}
    assert outcomes[2]["error"] == {"type": "string", "message": "a string, not an Error"}
    assert driver.request({"op": "cleanup"}) == {"op": "cleaned"}
    assert driver.close_stdin() == 0
    assert "set-up of 127.0.0.1 9" in "".join(driver.stderr)
    assert "cleaned up" in "".join(driver.stderr)


def test_calls_of_a_task_run_in_order_and_tasks_concurrently(driver: Driver, tmp_path: Path) -> None:
    name = scenario(tmp_path, """
let open;  // call 0 waits until call 2 of the other task lets it go
const gate = new Promise((resolve) => (open = resolve));
const call = async (i) => { if (i === 0) await gate; if (i === 2) open(); return i; };
exports.make = async () => [call, (i) => i];
""")
    assert driver.start(name)["op"] == "ready"
    messages = driver.run([call(0, 0), call(1, 0), call(2, 1)])
    order = [(m["op"], m.get("index")) for m in messages]
    # Call 0 could only end because call 2 ran meanwhile; call 1 waited for call 0.
    assert order.index(("start", 2)) < order.index(("end", 0)) < order.index(("start", 1))
    assert {i: m["value"] for i, m in ends(messages).items()} == {0: 0, 1: 1, 2: 2}
    starts = {m["index"]: m["at_ms"] for m in messages if m["op"] == "start"}
    assert all(starts[i] <= m["at_ms"] for i, m in ends(messages).items())


def test_a_yield_lets_the_event_loop_turn(driver: Driver, tmp_path: Path) -> None:
    # Call 5 schedules a setImmediate; call 6 reads whether it ran. A yield made of a resolved
    # promise never lets it run (microtasks first), a setImmediate does: as asyncio.sleep(0) does.
    name = scenario(tmp_path, BEHAVIOURS)
    assert driver.start(name)["op"] == "ready"
    assert ends(driver.run([call(5, 0), call(6, 1, yields=0)]))[6]["value"] is False
    assert ends(driver.run([call(5, 0), call(6, 1, yields=2)]))[6]["value"] is True


@pytest.mark.parametrize(("cut", "outcome", "reason"), [("deadline", "deadline", "TimeoutError"),
                                                        ("cancel", "cancelled", "AbortError")])
def test_a_cut_ends_the_call_at_its_time_and_aborts_its_signal(
        driver: Driver, tmp_path: Path, cut: str, outcome: str, reason: str) -> None:
    assert driver.start(scenario(tmp_path, BEHAVIOURS))["op"] == "ready"
    # Call 3 never settles; the task goes on to call 4 after the cut, which reports the signals.
    messages = driver.run([call(3, cut=cut, at_ms=40), call(4)])
    assert messages[-1] == {"op": "ran"}
    start = next(m["at_ms"] for m in messages if m["op"] == "start" and m["index"] == 3)
    assert ends(messages)[3]["outcome"] == outcome
    assert ends(messages)[3]["at_ms"] - start >= 39  # Node's timers keep whole milliseconds
    assert ends(messages)[4]["value"] == [f"3:{reason}"]


def test_a_call_that_ends_before_its_cut_is_not_cut(driver: Driver, tmp_path: Path) -> None:
    assert driver.start(scenario(tmp_path, BEHAVIOURS))["op"] == "ready"
    messages = driver.run([call(0, cut="deadline", at_ms=5000), call(4)])
    assert ends(messages)[0]["outcome"] == "returned"
    assert ends(messages)[4]["value"] == []


def test_stop_ends_the_running_calls_and_starts_no_more(driver: Driver, tmp_path: Path) -> None:
    assert driver.start(scenario(tmp_path, BEHAVIOURS))["op"] == "ready"
    driver.send({"op": "run", "calls": [call(3, 0), call(0, 0), call(7, 1)]})
    messages = [driver.read() for _ in range(3)]  # start 3, start 7, end 7; call 3 never settles
    assert sorted((m["op"], m["index"]) for m in messages) == [("end", 7), ("start", 3), ("start", 7)]
    driver.send({"op": "stop"})
    messages += driver.read_until("ran")
    assert ends(messages)[3]["outcome"] == "stopped"
    assert all(m.get("index") != 0 for m in messages)  # call 0 came after the stuck call: never started
    # The run is over: the driver answers the next run, whose call 4 sees call 3's signal aborted.
    assert ends(driver.run([call(4)]))[4]["value"] == ["3:AbortError"]
    assert driver.request({"op": "cleanup"}) == {"op": "cleaned"}
    assert driver.close_stdin() == 0


def test_the_driver_exits_when_stdin_closes_though_the_guest_keeps_node_busy(
        driver: Driver, tmp_path: Path) -> None:
    name = scenario(tmp_path, "exports.make = async () => { setInterval(() => {}, 1000); "
                              "return [async () => 1, () => 1]; };")
    assert driver.start(name)["op"] == "ready"
    assert driver.close_stdin() == 0


def test_an_error_nothing_catches_is_reported_as_a_failure(driver: Driver, tmp_path: Path) -> None:
    name = scenario(tmp_path, """
exports.make = async () => [(i) => { setTimeout(() => { throw new EvalError("thrown in a timer"); }, 1);
                                     return new Promise(() => {}); }, () => 1];
""")
    assert driver.start(name)["op"] == "ready"
    driver.send({"op": "run", "calls": [call(0)]})
    reply = driver.read_until("failed")[-1]
    assert reply["where"] == "run"
    assert reply["error"] == {"type": "EvalError", "message": "thrown in a timer"}
    assert driver.process.wait(timeout=READ_TIMEOUT_S) != 0


# ------------------------------------------------------------------ the example clients


class SlowFirstReply(socketserver.ThreadingTCPServer):
    """ECHO for the line protocol, one thread per connection, replies in request order; the reply
    to `ECHO c0` waits HOLD_S, long enough for any cut the tests ask for to land before it."""

    HOLD_S = 0.3
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.connections = 0


class _EchoHandler(socketserver.StreamRequestHandler):
    server: SlowFirstReply

    def handle(self) -> None:
        self.server.connections += 1
        for line in self.rfile:
            text = line.decode().rstrip("\r\n").removeprefix("ECHO ")
            if text == "c0":
                time.sleep(SlowFirstReply.HOLD_S)
            try:
                self.wfile.write(f"OK {text}\n".encode())
            except OSError:  # the client closed its connection: the correct one does on a cut
                return


@pytest.fixture
def slow_server() -> Iterator[SlowFirstReply]:
    server = SlowFirstReply()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _run_cut_then_next(driver: Driver, client: str, server: SlowFirstReply) -> dict[int, dict[str, Any]]:
    address = server.server_address
    assert isinstance(address, tuple)
    ready = driver.start(f"{LINE_CLIENTS}:{client}", total=3, address=(str(address[0]), int(address[1])))
    assert ready == {"op": "ready", "expected": ["c0", "c1", "c2"]}
    # Call 0 is cut at 50 ms, its reply comes at 300; then calls 1 and 2 of the same task.
    outcomes = ends(driver.run([call(0, cut="deadline", at_ms=50), call(1), call(2)]))
    assert driver.request({"op": "cleanup"}) == {"op": "cleaned"}
    assert driver.close_stdin() == 0
    assert outcomes[0]["outcome"] == "deadline"
    return outcomes


def test_the_naive_node_client_hands_a_cut_calls_reply_to_the_next(
        driver: Driver, slow_server: SlowFirstReply) -> None:
    outcomes = _run_cut_then_next(driver, "naive", slow_server)
    assert [outcomes[i]["value"] for i in (1, 2)] == ["c0", "c1"]  # each one call late: crossed


def test_the_correct_node_client_reconnects_after_a_cut(driver: Driver, slow_server: SlowFirstReply) -> None:
    outcomes = _run_cut_then_next(driver, "correct", slow_server)
    assert [outcomes[i]["value"] for i in (1, 2)] == ["c1", "c2"]
    assert slow_server.connections == 2  # the cut closed the first connection


def test_the_driver_is_valid_javascript_without_dependencies() -> None:
    node = _node()
    for path in (DRIVER, LINE_CLIENTS):
        subprocess.run([node, "--check", str(path)], check=True, timeout=READ_TIMEOUT_S)
    source = DRIVER.read_text(encoding="utf-8")
    required = set(re.findall(r'require\("([^"]+)"\)', source))
    assert required == {"node:readline", "node:path", "node:util", "node:url", "node:perf_hooks"}


def test_the_driver_exits_when_stdin_closes_during_a_run_that_hangs(driver: Driver, tmp_path: Path) -> None:
    assert driver.start(scenario(tmp_path, BEHAVIOURS))["op"] == "ready"
    driver.send({"op": "run", "calls": [call(3)]})
    assert driver.read()["op"] == "start"
    assert driver.close_stdin() == 0  # after the driver's grace, 5 s


# ------------------------------------------------------------------ through sockrace check --driver node


def _check(client: str, server: ThreadedServer, seeds: str) -> list[str]:
    _node()
    return ["check", f"{LINE_CLIENTS}:{client}", "--upstream", server.upstream, "--driver", "node",
            "--seeds", seeds, "--all"]


def test_sockrace_check_finds_the_naive_node_client_crossing(
        threaded_server: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_check("naive", threaded_server, "1-5")) == EXIT_CHECK_FAILED
    out = capsys.readouterr().out
    # Not every seed: a run's "auto" deadlines are drawn from its first call per task, slower than
    # the rest while Node warms up, and then now and again no cut lands before its reply (measured:
    # 2 seeds of 400 clean through a server in its own process, about 1 in 40 here, where it shares
    # the test's process). 3 of 5 leaves that a margin of thousands of runs.
    failing = re.search(r"^5 seeds tried, (\d) failing", out, re.MULTILINE)
    assert failing is not None, out
    assert int(failing[1]) >= 3, out
    assert "(crossed)" in out


@pytest.mark.timeout(180)  # 50 runs of 200 calls, about 0.2 s each here
def test_sockrace_check_finds_the_correct_node_client_clean_over_50_seeds(
        threaded_server: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_check("correct", threaded_server, "1-50")) == EXIT_OK
    out = capsys.readouterr().out
    assert re.search(r"^50 seeds tried, 0 failing", out, re.MULTILINE), out
