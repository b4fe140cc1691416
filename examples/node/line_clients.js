// sockrace check scenarios in JavaScript, for sockrace's own server (docs/protocol.md): a naive
// client that crosses, and a correct one. Run through the Node driver:
//
//     sockrace server --port 7777 &
//     sockrace check examples/node/line_clients.js:naive --upstream 127.0.0.1:7777 --driver node    # exit 1
//     sockrace check examples/node/line_clients.js:correct --upstream 127.0.0.1:7777 --driver node  # exit 0
//
// Call i is `ECHO c<i>` and must return "c<i>": a value no other call returns, so a reply handed to
// the wrong caller shows. Both clients share one socket among every task.
//
//     naive    pipelines: each call writes its request at once and reads the next line (replies
//              come in request order). It honours the AbortSignal as fetch() does, by giving up
//              its read at once; but its request is on the wire already, and its reply becomes
//              the next line some other call reads. Every reply after is one call late.
//     correct  one request at a time (a queue), and a call cut short between its write and its
//              reply closes the socket, whose reply could still come; the next call connects anew.
//
// Why the naive client is not the one that ignores the signal: JavaScript cannot cancel a promise,
// so a client that ignores the signal keeps its place in line, takes its own reply when it comes,
// and nobody reads it. It is slow to give up, not wrong. Giving up early without giving up the
// connection is the bug, the same one as a Python call cancelled between its write and its read.
"use strict";

const net = require("node:net");

const MAX_LINE = 64 * 1024; // replies are short lines: a garbled stream must not grow a buffer for ever

function expect(i) {
  return `c${i}`;
}

function payload(line) {
  if (!line.startsWith("OK ")) throw new Error(`unexpected reply ${JSON.stringify(line)}`);
  return line.slice(3);
}

// Splits a socket's bytes into lines and hands each to onLine; onEnd(error) once, when it closes.
function readLines(socket, onLine, onEnd) {
  let buffered = "";
  socket.setEncoding("utf8");
  socket.on("data", (chunk) => {
    buffered += chunk;
    let newline;
    while ((newline = buffered.indexOf("\n")) !== -1) {
      const line = buffered.slice(0, newline).replace(/\r$/, "");
      buffered = buffered.slice(newline + 1);
      onLine(line);
    }
    if (buffered.length > MAX_LINE) socket.destroy(new Error(`a reply line over ${MAX_LINE} characters`));
  });
  let ended = false;
  const end = (error) => {
    if (!ended) {
      ended = true;
      onEnd(error ?? new Error("the server closed the connection"));
    }
  };
  socket.on("error", end);
  socket.on("close", () => end());
}

function connect(address) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(address);
    socket.once("connect", () => {
      socket.off("error", reject);
      resolve(socket);
    });
    socket.once("error", reject);
  });
}

// The lines a socket brought, read one at a time, like a stream reader's readline(): a line that
// comes while nobody waits is kept for the next reader.
class LineReader {
  constructor(socket) {
    this.lines = [];
    this.waiting = []; // {resolve, reject} of each reader waiting for a line, oldest first
    this.closed = null;
    readLines(
      socket,
      (line) => {
        const reader = this.waiting.shift();
        if (reader) reader.resolve(line);
        else this.lines.push(line);
      },
      (error) => {
        this.closed = error;
        for (const reader of this.waiting.splice(0)) reader.reject(error);
      },
    );
  }

  next(signal) {
    if (this.lines.length > 0) return Promise.resolve(this.lines.shift());
    if (this.closed) return Promise.reject(this.closed);
    return new Promise((resolve, reject) => {
      const reader = { resolve, reject };
      this.waiting.push(reader);
      // Giving up its place is what an abortable read does; whoever reads next gets the line.
      signal?.addEventListener("abort", () => {
        const place = this.waiting.indexOf(reader);
        if (place !== -1) this.waiting.splice(place, 1);
        reject(signal.reason);
      }, { once: true });
    });
  }
}

class NaiveClient {
  static async connect(address) {
    return new NaiveClient(await connect(address));
  }

  constructor(socket) {
    this.socket = socket;
    this.reader = new LineReader(socket);
  }

  async echo(text, signal) {
    this.socket.write(`ECHO ${text}\n`);
    // THE BUG: a call that gives up here has its request on the wire already, and its reply
    // will be the next line some other call reads.
    return payload(await this.reader.next(signal));
  }

  close() {
    this.socket.destroy();
  }
}

class CorrectClient {
  constructor(address) {
    this.address = address;
    this.connection = null; // {socket, reply: the resolve/reject of the one request in flight}
    this.queue = Promise.resolve(); // the end of the last request queued
  }

  async echo(text, signal) {
    // Take a turn: each request waits for the one before it to end, however it ends.
    const before = this.queue;
    let done;
    this.queue = new Promise((resolve) => (done = resolve));
    await before;
    try {
      signal?.throwIfAborted(); // cut while waiting for its turn: nothing was sent, nothing to undo
      const connection = this.connection ?? (this.connection = await this.open());
      signal?.throwIfAborted();
      return payload(await this.request(connection, `ECHO ${text}\n`, signal));
    } finally {
      done();
    }
  }

  async open() {
    const socket = await connect(this.address);
    const connection = { socket, reply: null };
    readLines(
      socket,
      (line) => {
        const reply = connection.reply;
        connection.reply = null;
        if (reply) reply.resolve(line);
        // A line nobody asked for means the stream is out of step: never hand it on.
        else this.drop(connection, new Error(`a reply nobody waits for: ${JSON.stringify(line)}`));
      },
      (error) => this.drop(connection, error),
    );
    return connection;
  }

  request(connection, line, signal) {
    return new Promise((resolve, reject) => {
      connection.reply = { resolve, reject };
      const abort = () => this.drop(connection, signal.reason);
      signal?.addEventListener("abort", abort, { once: true });
      const settled = () => signal?.removeEventListener("abort", abort);
      connection.reply.resolve = (value) => (settled(), resolve(value));
      connection.reply.reject = (error) => (settled(), reject(error));
      connection.socket.write(line);
    });
  }

  // Forget a connection: its reply could still come, so nothing may read from it again.
  drop(connection, error) {
    if (this.connection === connection) this.connection = null;
    const reply = connection.reply;
    connection.reply = null;
    connection.socket.destroy();
    reply?.reject(error);
  }

  close() {
    if (this.connection !== null) this.drop(this.connection, new Error("closed"));
  }
}

async function naive(address) {
  const client = await NaiveClient.connect(address);
  return { call: (i, signal) => client.echo(expect(i), signal), expect, cleanup: () => client.close() };
}

async function correct(address) {
  const client = new CorrectClient(address);
  return { call: (i, signal) => client.echo(expect(i), signal), expect, cleanup: () => client.close() };
}

module.exports = { naive, correct };
