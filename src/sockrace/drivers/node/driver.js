#!/usr/bin/env node
// sockrace's driver for Node.js: speaks docs/driver.md (protocol 1) over standard input and output.
//
//     node driver.js        (sockrace check FILE.js:FUNC --driver node ... starts it)
//
// No dependencies: Node's own modules only, so that it runs wherever `node` does (Node 18 or newer,
// for AbortController, DOMException and performance.now() as globals). A scenario is FILE.js:FUNC:
// FUNC is exported by FILE.js (CommonJS or an ES module) and is an async function (address) ->
// {call, expect, cleanup} or [call, expect, cleanup], cleanup optional, address {host, port} (what
// net.connect takes).
// call(i, signal) makes call i; signal is an AbortSignal that aborts when sockrace cuts the call.
"use strict";

const readline = require("node:readline");
const path = require("node:path");
const util = require("node:util");
const { pathToFileURL } = require("node:url");
const { performance } = require("node:perf_hooks");

const PROTOCOL = 1;
const BACKEND = "promises";

// The protocol owns standard output. The guest's prints (console.log, process.stdout.write) go to
// standard error instead, where sockrace keeps their last lines. On Linux a pipe's write is
// synchronous in Node, so a line is out when send() returns: the "flush after every line" of the doc.
const writeOut = process.stdout.write.bind(process.stdout);
process.stdout.write = process.stderr.write.bind(process.stderr);

function send(message) {
  writeOut(JSON.stringify(message) + "\n");
}

function now() {
  return performance.now();
}

// --- values and errors (docs/driver.md, "Values") ---

function encode(value) {
  if (value === null || typeof value === "boolean" || typeof value === "string") return value;
  if (typeof value === "number") return Number.isFinite(value) ? value : opaque(value);
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) {
    return { $bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64") };
  }
  if (Array.isArray(value)) return value.map(encode);
  if (typeof value === "object" && isPlainObject(value)) {
    const encoded = {};
    for (const [key, item] of Object.entries(value)) encoded[key] = encode(item);
    return encoded;
  }
  return opaque(value);
}

function isPlainObject(value) {
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

function opaque(value) {
  return { $repr: util.inspect(value, { depth: 4, breakLength: Infinity }), $type: typeName(value) };
}

function typeName(value) {
  if (value === null) return "null";
  if (typeof value !== "object" && typeof value !== "function") return typeof value;
  const constructor = Object.getPrototypeOf(value)?.constructor;
  return (constructor && constructor.name) || "Object";
}

function describeError(error) {
  if (error instanceof Error) {
    return { type: error.name || typeName(error), message: String(error.message) };
  }
  // JavaScript can throw anything: a string, a number, a plain object.
  return { type: typeName(error), message: typeof error === "string" ? error : util.inspect(error) };
}

function failed(where, error) {
  const message = { op: "failed", where, error: describeError(error) };
  if (error instanceof Error && error.stack) message.traceback = error.stack;
  send(message);
}

// --- the scenario ---

async function loadScenario(spec, address) {
  const colon = spec.lastIndexOf(":");
  if (colon <= 0 || colon === spec.length - 1) {
    throw new TypeError(`scenario must be FILE.js:FUNC, got ${JSON.stringify(spec)}`);
  }
  const file = path.resolve(spec.slice(0, colon));
  const name = spec.slice(colon + 1);
  const exports = await loadModule(file);
  const make = exports[name] ?? exports.default?.[name];
  if (typeof make !== "function") {
    throw new TypeError(`${spec}: ${path.basename(file)} exports no function ${JSON.stringify(name)}`);
  }
  const made = await make({ host: address[0], port: address[1] });
  const [call, expect, cleanup] = Array.isArray(made)
    ? made
    : [made?.call, made?.expect, made?.cleanup];
  if (typeof call !== "function" || typeof expect !== "function") {
    throw new TypeError(`${spec} must return {call, expect} or [call, expect] (functions), got ${util.inspect(made)}`);
  }
  if (cleanup !== undefined && cleanup !== null && typeof cleanup !== "function") {
    throw new TypeError(`${spec}: cleanup must be a function, got ${util.inspect(cleanup)}`);
  }
  return { call, expect, cleanup: cleanup ?? null };
}

async function loadModule(file) {
  // require() first: it takes CommonJS whatever its extension; an ES module is refused with
  // ERR_REQUIRE_ESM (Node before 22), and import() takes it.
  if (!file.endsWith(".mjs")) {
    try {
      return require(file);
    } catch (error) {
      if (error?.code !== "ERR_REQUIRE_ESM") throw error;
    }
  }
  return import(pathToFileURL(file).href);
}

// --- a run ---

// A yield gives the other tasks a turn, as asyncio.sleep(0) does. It is a setImmediate, not a
// resolved promise: `await null` only lets other promise continuations run (the microtask queue is
// drained before Node goes back to its event loop), never a socket's data or a timer, whereas
// asyncio.sleep(0) lets one turn of the loop pass, I/O included. setImmediate's callback runs in the
// loop's check phase, after the poll phase has delivered what arrived.
function yieldOnce() {
  return new Promise((resolve) => setImmediate(resolve));
}

// Calls fire() `ms` milliseconds from now, to a fraction of a millisecond; returns a function that
// cancels it. Node's setTimeout counts whole milliseconds and fires at least 1 ms late, and sockrace's
// "auto" deadlines are drawn around a call's latency, often below 1 ms on loopback: a cut that late
// comes after the reply, and the calls it should have caught look safe. So setTimeout waits out the
// whole milliseconds but the last, and turns of the event loop (setImmediate, I/O polled in each)
// the rest: they spin only for that last stretch.
function after(ms, fire) {
  const due = now() + ms;
  let timeout = null;
  let immediate = null;
  const check = () => {
    timeout = immediate = null;
    const left = due - now();
    if (left <= 0) fire();
    else if (left > 2) timeout = setTimeout(check, Math.floor(left) - 1);
    else immediate = setImmediate(check);
  };
  // Not fired at once even when due: the call is made first, as asyncio.timeout() cuts at an await.
  immediate = setImmediate(check);
  return () => {
    if (timeout !== null) clearTimeout(timeout);
    if (immediate !== null) clearImmediate(immediate);
  };
}

function cutReason(cut) {
  // What the signal's reason is when sockrace cuts: the DOMException names the Web platform uses
  // for AbortSignal.timeout() (a deadline) and AbortController.abort() (a cancellation).
  return cut === "deadline"
    ? new DOMException("sockrace cut the call at its deadline", "TimeoutError")
    : new DOMException("sockrace cancelled the call", "AbortError");
}

class Run {
  constructor(calls) {
    this.scenario = null;
    this.calls = calls;
    this.running = new Map(); // index -> the AbortController of a call started and not ended
    this.over = false; // set when "ran" is sent: nothing more is started or reported
    // Resolved when "ran" is sent: when every task is through its calls, or at a stop, whose calls
    // still running may never settle (a client that hangs).
    this.finished = new Promise((resolve) => (this.finish = resolve));
  }

  start(scenario) {
    this.scenario = scenario;
    const tasks = new Map();
    for (const call of this.calls) {
      if (!tasks.has(call.task)) tasks.set(call.task, []);
      tasks.get(call.task).push(call);
    }
    Promise.all([...tasks.values()].map((calls) => this.task(calls))).then(() => this.ran());
    return this.finished;
  }

  ran() {
    if (this.over) return;
    this.over = true;
    send({ op: "ran" });
    this.finish();
  }

  async task(calls) {
    for (const call of calls) {
      for (let i = 0; i < (call.yields ?? 0); i++) {
        await yieldOnce();
        if (this.over) return;
      }
      if (this.over) return;
      await this.make(call);
    }
  }

  // One call: start, the guest's promise raced against the cut's timer, end. JavaScript cannot
  // cancel a promise, so a cut rejects the caller's await at at_ms (the task goes on to its next
  // call) and aborts the signal; what the client does with its request is the client's business,
  // and a reply it leaves on the socket is the bug class sockrace looks for.
  make(call) {
    const { index } = call;
    const controller = new AbortController();
    this.running.set(index, controller);
    send({ op: "start", index, at_ms: now() });
    return new Promise((settled) => {
      let cancelTimer = null;
      const end = (message) => {
        if (cancelTimer !== null) cancelTimer();
        if (!this.running.delete(index) || this.over) return settled();
        send({ op: "end", index, at_ms: now(), ...message });
        settled();
      };
      if (call.cut === "deadline" || call.cut === "cancel") {
        cancelTimer = after(Math.max(0, call.at_ms ?? 0), () => {
          cancelTimer = null;
          controller.abort(cutReason(call.cut));
          end({ outcome: call.cut === "deadline" ? "deadline" : "cancelled" });
        });
      }
      let pending;
      try {
        pending = Promise.resolve(this.scenario.call(index, controller.signal));
      } catch (error) {
        pending = Promise.reject(error);
      }
      pending.then(
        (value) => {
          let encoded;
          try {
            encoded = encode(value);
          } catch (error) {
            return end({ outcome: "raised", error: describeError(error) });
          }
          end({ outcome: "returned", value: encoded });
        },
        // After a cut the guest's promise may still reject (with the signal's reason, or later with
        // the socket's error): end() reports nothing then, and the rejection is handled here.
        (error) => end({ outcome: "raised", error: describeError(error) }),
      );
    });
  }

  stop() {
    if (this.over) return;
    const running = [...this.running];
    this.running.clear();
    for (const [index, controller] of running) {
      send({ op: "end", index, at_ms: now(), outcome: "stopped" });
      controller.abort(new DOMException("sockrace stopped the run", "AbortError"));
    }
    this.ran();
  }
}

// --- the requests ---

class Driver {
  constructor() {
    this.scenario = null;
    this.run = null;
    this.where = "hello"; // what a guest's uncaught error is reported against
    this.queue = Promise.resolve(); // requests are handled one after the other, stop apart
  }

  receive(line) {
    if (line.trim() === "") return;
    let request;
    try {
      request = JSON.parse(line);
    } catch (error) {
      failed(this.where, new SyntaxError(`not a JSON line: ${line.slice(0, 200)}`));
      process.exit(1);
    }
    if (request?.op === "stop") {
      // stop comes while a run is going on: it must not wait behind it. One that crosses the run's
      // "ran" on the way finds no run and is answered by that "ran" already.
      this.run?.stop();
      return;
    }
    if (request?.op === "run") {
      // Made now rather than in its turn, so that a stop right behind it finds it.
      this.run = new Run(request.calls ?? []);
    }
    this.queue = this.queue.then(() => this.handle(request));
  }

  async handle(request) {
    switch (request?.op) {
      case "hello":
        return this.hello(request);
      case "setup":
        return this.setup(request);
      case "run":
        return this.execute();
      case "cleanup":
        return this.cleanup();
      default:
        failed(this.where, new TypeError(`unknown request ${JSON.stringify(request?.op)}`));
        process.exit(1);
    }
  }

  hello(request) {
    if (request.protocol !== PROTOCOL) {
      failed("hello", new Error(`this driver speaks protocol ${PROTOCOL}, not ${JSON.stringify(request.protocol)}`));
      process.exit(1);
    }
    send({
      op: "hello",
      protocol: PROTOCOL,
      driver: "node",
      runtime: `Node.js ${process.version}`,
      backends: [BACKEND],
    });
  }

  async setup(request) {
    this.where = "setup";
    const backend = request.backend ?? BACKEND;
    if (backend !== BACKEND) {
      return failed("setup", new Error(`the Node driver has no backend ${JSON.stringify(backend)} (it has ${BACKEND})`));
    }
    try {
      this.scenario = await loadScenario(String(request.scenario), request.address);
    } catch (error) {
      return failed("setup", error);
    }
    this.where = "expect";
    const expected = [];
    try {
      for (let i = 0; i < request.total; i++) expected.push(encode(await this.scenario.expect(i)));
    } catch (error) {
      return failed("expect", error);
    }
    send({ op: "ready", expected });
  }

  async execute() {
    this.where = "run";
    const run = this.run;
    if (this.scenario === null) {
      this.run = null;
      return failed("run", new Error("run before a successful setup"));
    }
    await (run.over ? run.finished : run.start(this.scenario));
    this.run = null;
  }

  async cleanup() {
    this.where = "cleanup";
    try {
      if (this.scenario?.cleanup) await this.scenario.cleanup();
    } catch (error) {
      return failed("cleanup", error);
    }
    send({ op: "cleaned" });
  }
}

const driver = new Driver();

// A guest's error that nothing catches (a socket's "error" event with no listener, a throw in a
// data handler) would end Node with its own message on stderr: say it in the protocol first.
for (const event of ["uncaughtException", "unhandledRejection"]) {
  process.on(event, (error) => {
    failed(driver.where, error);
    process.exit(1);
  });
}

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on("line", (line) => driver.receive(line));
// The host closes standard input after cleanup (or when it gives up): exit even if the guest left
// sockets or timers that would keep Node's loop alive. A request still being answered gets a few
// seconds; a call that hangs must not keep the driver alive after its host has gone.
const CLOSE_GRACE_MS = 5000;
input.on("close", () => {
  setTimeout(() => process.exit(0), CLOSE_GRACE_MS);
  driver.queue.then(() => process.exit(0));
});
