"""The server's sans-IO engine: one connection's bytes in; its replies and actions out, in order.

No asyncio and no sockets, in the manner of h11: the driver feeds what it reads with
`receive_data(data)` (and `feed_eof()` at EOF), then calls `next_action()` until it says NEED_DATA.
Each action is one of:

- bytes: reply lines ready to write, in request order (many at once on the fast path);
- Wait(ms, ...): a request that completes after `ms` milliseconds (SLEEP, --delay, --jitter); the
  driver waits, then passes it to `complete()` for what comes next;
- Yield(...): an unsafe INCR (--unsafe-incr) has read its key; the driver lets the event loop run
  once, then passes it to `complete()`, which writes the key back;
- AWAIT_OWED (out of order only): finish every request in progress before asking for more; it comes
  before QUIT and before an unterminated last line at EOF, whose replies must come last;
- CLOSE: QUIT was answered; write what is owed, then end the connection (later lines are ignored);
- ENDED: the client sent EOF and every line has been handed out;
- NEED_DATA: nothing more until the next `receive_data()` or `feed_eof()`.

The session owns the framing (LineBuffer), parsing, the fast paths (fastpath.py), the counters and the
seeded latency draw; the drivers in serving.py only schedule. An in-order driver completes each
Wait before the next `next_action()`, so the store sees the requests in order; an out-of-order
driver may ask for more actions while Waits are in progress.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Final

from sockrace.fastpath import (
    block_replies,
    is_printable_ascii,
    ping_echo_replies,
    store_block_replies,
    store_replies,
    whole_read_replies,
)
from sockrace.protocol import (
    DEFAULT_MAX_LINE,
    Err,
    Incr,
    LineBuffer,
    LineTooLong,
    ProtocolError,
    Quit,
    Request,
    Sleep,
    error_reply,
    format_reply,
    parse_request,
)
from sockrace.store import Store


class Signal(enum.Enum):
    NEED_DATA = "need data"
    AWAIT_OWED = "await owed"
    CLOSE = "close"
    ENDED = "ended"


NEED_DATA: Final = Signal.NEED_DATA
AWAIT_OWED: Final = Signal.AWAIT_OWED
CLOSE: Final = Signal.CLOSE
ENDED: Final = Signal.ENDED


@dataclass(frozen=True, slots=True)
class Wait:
    """Complete `request` after `ms` milliseconds: then call `Session.complete(wait)`."""

    ms: float
    request: Request


@dataclass(frozen=True, slots=True)
class Yield:
    """An unsafe INCR that has read `current`: let other tasks run, then `Session.complete(it)`."""

    request: Incr
    current: int


Action = bytes | Wait | Yield | Signal


@dataclass(frozen=True, slots=True)
class SessionConfig:
    max_line: int = DEFAULT_MAX_LINE
    delay_ms: float = 0.0  # added before every reply, to widen the race window
    jitter_ms: float = 0.0  # plus a uniform random extra in [0, jitter_ms], drawn from the rng
    unsafe_incr: bool = False  # INCR reads, yields, then writes: concurrent INCRs lose updates
    out_of_order: bool = False  # the driver answers requests concurrently (see AWAIT_OWED)


class Session:
    """One connection's engine. `store` is shared by every connection of a server, and so is `rng`,
    the seeded draw of the jitter (one sequence per server, as the requests arrive)."""

    __slots__ = ("_batch", "_buffered", "_config", "_eof", "_fast", "_held", "_index", "_leftover_taken",
                 "_lines", "_plain", "_quit", "_rng", "_special", "_unfed", "counters", "store")

    def __init__(self, store: Store, config: SessionConfig | None = None,
                 rng: random.Random | None = None) -> None:
        self.store = store
        self.counters = store.counters
        self._config = config = config or SessionConfig()
        self._rng = rng or random.Random(0)
        self._lines = LineBuffer(config.max_line)
        # Looked at before asking the LineBuffer for more lines: a call less per read when a read
        # ends where its lines end (the usual case).
        self._buffered = self._lines.buffered
        # With no artificial latency, PING and ECHO are answered straight from their bytes: the hot
        # path of every benchmark, with no event objects per request.
        self._fast = config.delay_ms == 0 and config.jitter_ms == 0
        self._unfed: bytes | None = None  # received, not yet framed
        self._batch: list[bytes] = []  # framed lines (without b"\n") not yet answered, from _index
        self._index = 0
        self._plain = False  # every line of _batch is printable ASCII (see store_replies)
        self._held: Request | None = None  # a QUIT parsed, handed out after AWAIT_OWED
        self._quit = False
        # True while any of the three above asks for something other than framing new bytes: one
        # test on the hot path instead of three.
        self._special = False
        self._eof = False
        self._leftover_taken = False

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the client. Call `next_action()` until NEED_DATA before the next call."""
        if self._unfed is not None:
            self._lines.feed(self._unfed)
        self._unfed = data

    def feed_eof(self) -> None:
        """The client sent EOF: an unterminated last line is still a request (documented)."""
        self._eof = True

    def next_action(self) -> Action:
        """The next thing the driver must do; see the module's docstring."""
        if self._special:
            return self._special_action()
        unfed = self._unfed
        whole: bytes | None = None  # unfed when it was whole lines, already offered to whole_read_replies
        try:
            if unfed is None:
                batch = self._lines.next_lines() if self._buffered else []
            else:
                self._unfed = None
                # The usual pipelined read: many whole lines, nothing held over. A read of ordinary
                # requests all of one kind (the benchmarks' load) is answered as it came, in a few C
                # calls over its bytes, without splitting it into lines. A read of one line (lock-step
                # traffic) takes block_replies' shortcuts for one line, a few calls fewer.
                count = unfed.count(b"\n")
                if count > 1 and self._fast and self._lines.frames_whole(unfed):
                    replies = whole_read_replies(unfed, count, self.store, incr=not self._config.unsafe_incr)
                    if replies is not None:
                        self.counters.requests += count
                        return replies
                    whole = unfed
                batch = self._lines.feed_lines(unfed)
        except LineTooLong as exc:
            return self._error(exc)
        if batch:
            if self._fast:
                if whole is not None:  # what block_replies and store_block_replies answer, it did
                    replies = ping_echo_replies(batch)
                    # One check of the whole read spares store_replies one per line.
                    self._plain = replies is None and is_printable_ascii(whole)
                else:
                    # A read of nothing but ECHO or PING, tagged or not: every reply in a few C
                    # calls, with no Python loop; anything else takes _from_batch.
                    replies = block_replies(batch)
                    if replies is None:  # other PING and ECHO forms (lower case, CR): a match a line, in C
                        replies = ping_echo_replies(batch)
                    if replies is None:
                        block = b"\n".join(batch)
                        self._plain = is_printable_ascii(block)
                        if self._plain:
                            replies = store_block_replies(batch, block, self.store,
                                                          incr=not self._config.unsafe_incr)
                if replies is not None:
                    self.counters.requests += len(batch)
                    return replies
            self._batch, self._index, self._special = batch, 0, True
            return self._from_batch()
        if self._eof:
            return self._at_eof()
        return NEED_DATA

    def _special_action(self) -> Action:
        if self._held is not None:
            request, self._held = self._held, None
            return self._respond(request)
        if self._index < len(self._batch):
            return self._from_batch()
        if self._quit:
            return ENDED if self._eof else CLOSE
        self._special = False
        return self.next_action()

    def complete(self, action: Wait | Yield) -> bytes | Yield:
        """What follows a Wait (its reply, or a Yield for an unsafe INCR) or a Yield (its reply)."""
        if isinstance(action, Wait):
            return self._apply(action.request)
        request = action.request
        return format_reply(self.store.write_int(request.tag, request.key, action.current + request.amount))

    def _from_batch(self) -> Action:
        batch, index = self._batch, self._index
        if self._fast:
            replies, end = store_replies(batch, index, self.store, plain=self._plain,
                                         incr=not self._config.unsafe_incr)
            if end > index:  # handed out before the line that needs the full parser
                self._index = end
                self.counters.requests += end - index
                return replies
        self._index = index + 1
        return self._answer(batch[index])

    def _answer(self, line: bytes) -> Action:
        try:
            request = parse_request(line)
        except ProtocolError as exc:
            return self._error(exc)
        if self._config.out_of_order and isinstance(request, Quit):
            self._held, self._special = request, True
            return AWAIT_OWED
        return self._respond(request)

    def _respond(self, request: Request) -> Action:
        self.counters.requests += 1
        if isinstance(request, Quit):
            self._quit = self._special = True
            self._batch, self._index = [], 0  # what follows QUIT is never answered
        wait_ms = request.ms if isinstance(request, Sleep) else 0.0
        wait_ms += self._latency_ms()
        if wait_ms > 0:
            return Wait(wait_ms, request)
        return self._apply(request)

    def _apply(self, request: Request) -> bytes | Yield:
        if self._config.unsafe_incr and isinstance(request, Incr):
            current = self.store.read_int(request.tag, request.key)
            if isinstance(current, Err):
                return format_reply(current)
            return Yield(request, current)
        return format_reply(self.store.apply(request))

    def _error(self, error: ProtocolError) -> bytes:
        """The ERR line for a line that broke the grammar (it still counts as a request)."""
        counters = self.counters
        counters.requests += 1
        counters.errors += 1
        return format_reply(error_reply(error))

    def _at_eof(self) -> Action:
        if not self._leftover_taken:
            self._leftover_taken = True
            if leftover := self._lines.leftover():
                self._batch, self._index, self._special = [leftover], 0, True
                self._plain = False
                return AWAIT_OWED if self._config.out_of_order else self._from_batch()
        return ENDED

    def _latency_ms(self) -> float:
        config = self._config
        if config.jitter_ms > 0:
            return config.delay_ms + self._rng.uniform(0, config.jitter_ms)
        return config.delay_ms
