"""Choosing the event loop: the standard asyncio loop, or uvloop when the `fast` extra is installed.

uvloop is optional and never required; asking for it without it installed is a clear error, not an
ImportError traceback. Also here: `limit_recv_size`, a fix to how asyncio's own transports read.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from sockrace.errors import LoopUnavailable as LoopUnavailable  # defined there, named here too

LOOPS: Final = ("asyncio", "uvloop")
DEFAULT_LOOP: Final = "asyncio"

T = TypeVar("T")




def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory `asyncio.Runner` needs for loop `name`; None means asyncio's default loop.

    Raises ValueError for a name not in LOOPS and LoopUnavailable when uvloop is not installed.
    """
    if name == "asyncio":
        return None
    if name == "uvloop":
        try:
            # Imported by name so that neither the import nor the type check needs uvloop present.
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            raise LoopUnavailable(
                "uvloop is not installed; install it with: pip install 'sockrace[fast]'"
            ) from None
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    raise ValueError(f"unknown event loop {name!r}; choose from {', '.join(LOOPS)}")


def run(main: Coroutine[Any, Any, T], loop: str = DEFAULT_LOOP) -> T:
    """`asyncio.run(main)` on the event loop named `loop`.

    Raises what `main` raises, and ValueError / LoopUnavailable (before running anything) when the
    loop cannot be used; `main` is then closed so that it does not warn about never being awaited.
    """
    try:
        factory = loop_factory(loop)
    except BaseException:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def running_loop_name() -> str:
    """The name of the running loop's implementation: "uvloop" or "asyncio". Call inside a coroutine."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def limit_recv_size(transport: object, size: int) -> None:
    """Make an asyncio selector transport receive at most `size` bytes per recv() call.

    It asks for 256 KiB per call (its `max_size`), and CPython allocates that much for every read,
    then shrinks it to what arrived. 256 KiB is above glibc's mmap threshold (128 KiB), and the
    buffer is shrunk before it is freed, so the threshold never adapts: each read of one short
    request cost three more system calls, mmap, mremap and munmap (`strace -c`; see CPython issue
    #85451). Below the threshold the buffer comes from the heap. Transports without
    `max_size` (uvloop's, the tests' in-memory writers) are left as they are.
    """
    if isinstance(getattr(transport, "max_size", None), int):
        setattr(transport, "max_size", size)  # noqa: B010 (not declared on asyncio.BaseTransport)
