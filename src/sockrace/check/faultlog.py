"""The proxy's fault log: every record it makes, stamped with the time since the proxy started, kept up
to a limit in memory and passed on as it is made; and the `--log` file, one JSON line a record."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import IO, Final

from sockrace.check.faults import Decision, Direction, FaultRecord
from sockrace.errors import FaultLogError

LOG_LIMIT: Final = 100_000  # records kept in `proxy.log`; `on_record` still sees every one


class FaultLog:
    """The records of one proxy: the first `limit` kept in `records` (`dropped` counts the others),
    every one passed to `on_record` (which must not raise) as it is made."""

    def __init__(self, limit: int = LOG_LIMIT,
                 on_record: Callable[[FaultRecord], None] | None = None) -> None:
        if type(limit) is not int or limit < 0:
            raise ValueError(f"log_limit must be an integer >= 0, got {limit!r}")
        self.records: list[FaultRecord] = []
        self.dropped = 0
        self.total = 0  # kept in `records` or not
        self._limit = limit
        self._on_record = on_record
        self._started_at = 0.0

    def start(self) -> None:
        """Times are counted from now (on the running loop's clock)."""
        self._started_at = asyncio.get_running_loop().time()

    def elapsed_ms(self) -> float:
        return (asyncio.get_running_loop().time() - self._started_at) * 1000

    def note(self, connection: int, direction: Direction | None, offset: int, fault: str,
             **params: object) -> None:
        """A connection event (open, eof, close, ...), or a fault made without a plan's decision."""
        name = None if direction is None else direction.value
        self.keep(FaultRecord(self.elapsed_ms(), connection, name, offset, fault, params))

    def decided(self, decision: Decision) -> None:
        """A plan's decision, carried out now."""
        self.keep(FaultRecord.of(decision, self.elapsed_ms()))

    def keep(self, record: FaultRecord) -> None:
        self.total += 1
        if len(self.records) < self._limit:
            self.records.append(record)
        else:
            self.dropped += 1
        if self._on_record is not None:
            self._on_record(record)


class LogFile:
    """The fault log as JSON lines in a file, each line flushed as it is made. The first write that
    fails (disk full, ...) is kept in `error`, nothing more is written, and `failed` is called."""

    def __init__(self, path: str | os.PathLike[str], failed: Callable[[], None]) -> None:
        self.path = os.fspath(path)
        self.error: OSError | None = None
        self._failed = failed
        # A local file opened once; a record's line costs the loop no more than a print does.
        self._file: IO[str] = open(path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed by close()

    def write(self, record: FaultRecord) -> None:
        if self.error is not None:
            return
        try:
            self._file.write(record.to_json() + "\n")
        except OSError as exc:
            self.error = exc
            self._failed()

    def close(self) -> None:
        try:
            self._file.close()  # closes the file even when its last flush fails
        except OSError as exc:
            if self.error is None:
                self.error = exc

    def raise_error(self) -> None:
        if self.error is not None:
            error = self.error
            raise FaultLogError(error.errno, error.strerror or str(error), self.path) from error
