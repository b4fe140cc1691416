"""Four small clients a user might write for the sockrace line protocol (`GET key` -> `OK value`).

They share one connection among every task that calls `get`, each in its own way, and are what
the hammer is tested on: the first two hand out other callers' replies, the last two never do.

    NaiveClient             writes, then reads the next line: no coordination at all
    LockedClient            one request at a time under an asyncio.Lock, but a call cancelled
                            between its write and its read leaves its reply for the next caller
    DisconnectOnCancelClient  the lock, and a call cut short after its write closes the
                            connection; the next call opens a fresh one
    MultiplexedClient       every request tagged; one reader task hands each reply to its tag
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Protocol

# Replies here are one short line; a limit keeps a garbled stream from growing a buffer unbounded.
LINE_LIMIT = 64 * 1024


class ReplyError(Exception):
    """The server answered ERR, or something that is not a reply."""


class Client(Protocol):
    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...
    async def get(self, key: str) -> str: ...
    async def aclose(self) -> None: ...


def _value(line: bytes) -> str:
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    if text.startswith("OK "):
        return text[3:]
    raise ReplyError(text or "connection closed")


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=LINE_LIMIT)
        return self.reader, self.writer

    async def aclose(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class NaiveClient(_Connection):
    async def get(self, key: str) -> str:
        reader, writer = await self.open()
        writer.write(f"GET {key}\n".encode())
        await writer.drain()
        return _value(await reader.readline())


class LockedClient(_Connection):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.lock = asyncio.Lock()

    async def get(self, key: str) -> str:
        async with self.lock:
            reader, writer = await self.open()
            writer.write(f"GET {key}\n".encode())
            await writer.drain()
            return _value(await reader.readline())


class DisconnectOnCancelClient(LockedClient):
    reconnects = 0

    async def get(self, key: str) -> str:
        async with self.lock:
            reader, writer = await self.open()
            try:
                writer.write(f"GET {key}\n".encode())
                await writer.drain()
                return _value(await reader.readline())
            except BaseException:
                # The reply may still come: nobody can tell it from the next call's, so the
                # connection goes, and the next call opens a fresh one.
                self.reconnects += 1
                await asyncio.shield(self.aclose())
                raise


class MultiplexedClient(_Connection):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.tags = itertools.count()
        self.waiting: dict[str, asyncio.Future[str]] = {}
        self.reading: asyncio.Task[None] | None = None
        self.opening = asyncio.Lock()
        self.dropped = 0  # replies whose caller had gone

    async def get(self, key: str) -> str:
        async with self.opening:  # the first callers must not each open a connection
            _, writer = await self.open()
            if self.reading is None:
                self.reading = asyncio.get_running_loop().create_task(self._read_replies())
        if self.reading.done():
            raise ReplyError("connection closed")
        tag = str(next(self.tags))
        reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiting[tag] = reply
        try:
            writer.write(f"#{tag} GET {key}\n".encode())
            await writer.drain()
            return await reply
        finally:
            del self.waiting[tag]

    async def _read_replies(self) -> None:
        assert self.reader is not None
        try:
            while line := await self.reader.readline():
                tag, _, rest = line.decode("utf-8", "replace").partition(" ")
                waiter = self.waiting.get(tag[1:])
                if waiter is None or waiter.done():
                    self.dropped += 1
                    continue
                try:
                    waiter.set_result(_value(rest.encode()))
                except ReplyError as exc:
                    waiter.set_exception(exc)
        finally:
            for waiter in self.waiting.values():
                if not waiter.done():
                    waiter.set_exception(ReplyError("connection closed"))

    async def aclose(self) -> None:
        if self.reading is not None:
            self.reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ValueError):
                await self.reading
            self.reading = None
        await super().aclose()


CLIENTS: dict[str, type[NaiveClient | LockedClient | MultiplexedClient]] = {
    "naive": NaiveClient,
    "locked": LockedClient,
    "disconnect-on-cancel": DisconnectOnCancelClient,
    "multiplexed": MultiplexedClient,
}
