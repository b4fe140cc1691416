"""Counting the passes of an asyncio event loop, on public API only.

A selector event loop calls its selector's select() exactly once per pass, just before the pass runs
its ready callbacks. `PassCounter` wraps the selector the loop is built with
(`asyncio.SelectorEventLoop(selector=...)`), counts those calls, and lets one hook run at the start of
each pass: a pacer (pacing.py) stamps what it records with the pass it happened in, and makes a
replay do each thing in the same pass, relative to the thing before, as the recording did. Within
one pass asyncio's order is fixed, so the pass is the finest clock a replay can need.
"""

from __future__ import annotations

import asyncio
import selectors
import weakref
from collections.abc import Callable, Mapping
from typing import Any

# The hook runs at the start of a pass and is given the time select() would block for (0 when
# callbacks are ready; None: until an event); it returns the time to block for instead (0 when it
# made a callback ready itself).
PassHook = Callable[[float | None], float | None]

_COUNTERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PassCounter] = weakref.WeakKeyDictionary()


class DelegatingSelector(selectors.BaseSelector):
    """A selector that hands everything to `inner`: the base of a wrapper that changes select()."""

    def __init__(self, inner: selectors.BaseSelector) -> None:
        self.inner = inner

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self.inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return self.inner.select(timeout)

    def close(self) -> None:
        self.inner.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self.inner.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self.inner.get_map()


class PassCounter(DelegatingSelector):
    """A selector that counts the calls of select(), and runs `hook` before each."""

    def __init__(self, inner: selectors.BaseSelector) -> None:
        super().__init__(inner)
        self.passes = 0
        self.hook: PassHook | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.passes += 1
        if self.hook is not None:
            timeout = self.hook(timeout)
        return self.inner.select(timeout)


def counting_loop() -> asyncio.AbstractEventLoop:
    """asyncio's own selector event loop, with its passes counted (`counter_of`)."""
    counter = PassCounter(selectors.DefaultSelector())
    loop = asyncio.SelectorEventLoop(selector=counter)
    _COUNTERS[loop] = counter
    return loop


def counter_of(loop: asyncio.AbstractEventLoop) -> PassCounter | None:
    """The pass counter of a loop `counting_loop()` made; None for any other loop."""
    return _COUNTERS.get(loop)
