"""A test server whose bytes differ on every connection, and two sockrace check scenarios for it.

    python examples/greeting_server.py --port 7800 &          # --seed N: the same salts every time
    sockrace check examples/greeting_server.py:crossing --upstream 127.0.0.1:7800 --seed 1 --save run.json
    sockrace replay run.json --repeat 10
    sockrace check examples/greeting_server.py:correct --upstream 127.0.0.1:7800             # exit 0

It plays what MySQL/MariaDB (a salt in the greeting), PostgreSQL (a nonce, a backend key) and HTTP
(a `Date` header) do to a replay: the server chooses bytes of its own for every connection, so a
replay can never write the bytes the recording wrote, only the same structure. The line protocol:

    server: HELLO <salt>            a fresh salt of 16-48 characters, its length random too
    client: AUTH <proof>            sha256(salt + ":" + SECRET) in hex: it embeds the salt
    server: OK session <id>         a fresh session id of 8-24 characters
    client: GET k<i>                any number of times
    server: OK v<i>                 (ERR ... for anything else)

    crossing  one connection shared by every task, one request at a time under a lock, but a call
              cut short between its write and its read leaves its reply for the next caller
    correct   the same, and a call cut short closes the connection (its reply could still come):
              the next call opens a fresh one, with a greeting of its own
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import string
from collections.abc import AsyncIterator, Awaitable, Callable

SECRET = "sockrace"
SALT_CHARACTERS = (16, 48)
SESSION_CHARACTERS = (8, 24)
LINE_LIMIT = 64 * 1024  # every line here is short; a garbled stream must not grow a buffer
ALPHABET = string.ascii_letters + string.digits

Call = Callable[[int], Awaitable[object]]
Expect = Callable[[int], object]


def proof(salt: str) -> str:
    """What a client answers a greeting with: like MySQL's scramble, it depends on the salt."""
    return hashlib.sha256(f"{salt}:{SECRET}".encode()).hexdigest()


class GreetingServer:
    """`async with GreetingServer() as server:` serves on `server.address` until the block ends.

    `rng` draws the salts and session ids (a seeded one makes a test's run of greetings the same
    every time; they still differ from one connection to the next)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, rng: random.Random | None = None) -> None:
        self.host, self.port = host, port
        self.rng = rng if rng is not None else random.Random()
        self.greetings: list[bytes] = []  # every greeting sent, in order
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "the server is not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> GreetingServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=LINE_LIMIT)
        return self

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._clients):
            writer.close()
        await self._server.wait_closed()

    async def __aenter__(self) -> GreetingServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _word(self, lo_hi: tuple[int, int]) -> str:
        return "".join(self.rng.choices(ALPHABET, k=self.rng.randint(*lo_hi)))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            salt = self._word(SALT_CHARACTERS)
            greeting = f"HELLO {salt}\n".encode()
            self.greetings.append(greeting)
            writer.write(greeting)
            if await reader.readline() != f"AUTH {proof(salt)}\n".encode():
                writer.write(b"ERR bad proof\n")
                return
            writer.write(f"OK session {self._word(SESSION_CHARACTERS)}\n".encode())
            while line := await reader.readline():
                verb, _, key = line.decode("utf-8", "replace").strip().partition(" ")
                if verb == "GET" and key[:1] == "k" and key[1:].isdigit():
                    writer.write(f"OK v{key[1:]}\n".encode())
                else:
                    writer.write(b"ERR unknown request\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass  # the client went away or sent garbage: its connection ends
        finally:
            self._clients.discard(writer)
            writer.close()


def _value(line: bytes) -> str:
    text = line.decode("utf-8", "replace").rstrip("\n")
    if not text.startswith("OK "):
        raise RuntimeError(f"unexpected reply {text!r}")
    return text[3:]


def expect(i: int) -> str:
    return f"v{i}"


class GreetedClient:
    """One connection, opened on first use: read the greeting, prove the secret, then GET."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.lock = asyncio.Lock()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=LINE_LIMIT)
            try:
                greeting = (await reader.readline()).decode("utf-8", "replace")
                if not greeting.startswith("HELLO "):
                    raise RuntimeError(f"unexpected greeting {greeting!r}")
                writer.write(f"AUTH {proof(greeting[6:].rstrip())}\n".encode())
                _value(await reader.readline())
            except BaseException:
                # A handshake cut short leaves the session's reply on its way: the next call would
                # read it as its own, and every call after the one before's.
                writer.close()
                raise
            self.reader, self.writer = reader, writer
        return self.reader, self.writer

    async def get(self, key: str) -> str:
        async with self.lock:
            reader, writer = await self.open()
            writer.write(f"GET {key}\n".encode())
            await writer.drain()
            return _value(await reader.readline())

    async def call(self, i: int) -> object:
        """Call i of a check: GET k<i>, which must return "v<i>"."""
        return await self.get(f"k{i}")

    async def aclose(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class ClosingClient(GreetedClient):
    async def get(self, key: str) -> str:
        async with self.lock:
            reader, writer = await self.open()
            try:
                writer.write(f"GET {key}\n".encode())
                await writer.drain()
                return _value(await reader.readline())
            except BaseException:
                # Its reply may still come, and nobody could tell it from the next call's.
                await asyncio.shield(self.aclose())
                raise


async def crossing(address: tuple[str, int]) -> AsyncIterator[tuple[Call, Expect]]:
    client = GreetedClient(*address)
    try:
        await client.open()  # the greeting and the proof come first in the run's tape
        yield client.call, expect
    finally:
        await client.aclose()


async def correct(address: tuple[str, int]) -> AsyncIterator[tuple[Call, Expect]]:
    client = ClosingClient(*address)
    try:
        await client.open()
        yield client.call, expect
    finally:
        await client.aclose()


async def main(host: str, port: int, seed: int | None = None) -> None:
    async with GreetingServer(host, port, rng=random.Random(seed)) as server:
        print(f"greeting server listening on {server.address[0]}:{server.address[1]}", flush=True)
        await asyncio.Event().wait()  # until interrupted


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7800, help="0: a free one (the line printed says which)")
    parser.add_argument("--seed", type=int, help="draw the salts and session ids from this seed")
    arguments = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(arguments.host, arguments.port, arguments.seed))
