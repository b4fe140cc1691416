"""What the suite measures: variants (one client against one server), grouped by the question they answer.

A *variant* is one client against one server (kind, concurrency, event loop) on one source tree. A
*group* lists the variants of one question; its first variant is the reference the others are divided by.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sockrace import loop as loops

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
THIS_TREE: Final = "this tree"

# Requests per run at scale 1. Chosen so that one run lasts a few tenths of a second on a 2-core
# machine: long enough to dwarf connection setup, short enough for seven rounds in about a minute.
LOCKSTEP_REQUESTS: Final = 3_000
PIPELINED_REQUESTS: Final = 30_000
# The windowed load generator drives the fastest servers at several hundred thousand requests per
# second: more requests keep its runs long enough to measure.
WINDOWED_REQUESTS: Final = 100_000
# The concurrency of the strategy comparison: enough coroutines for `locked` to queue and for the
# pipelining strategies to fill their write batches.
STRATEGIES_CONCURRENCY: Final = 100


@dataclass(frozen=True, slots=True)
class Tree:
    """A copy of sockrace's `src/` that clients and servers import, through PYTHONPATH."""

    name: str
    src: Path


@dataclass(frozen=True, slots=True)
class Variant:
    """One client of `client` kind, `concurrency` coroutines over one connection, against `server`."""

    client: str  # "reference lock-step", "reference pipelined", "reference windowed" or "sockrace <mode>"
    server: str  # "readline", "bulk" (the reference servers) or "sockrace"
    concurrency: int = 1
    requests: int = LOCKSTEP_REQUESTS  # per run, over all coroutines, at scale 1
    loop: str = loops.DEFAULT_LOOP
    tree: str = THIS_TREE  # the name of the Tree whose sockrace the client and the server import

    @property
    def key(self) -> str:
        where = "" if self.tree == THIS_TREE else f" ({self.tree})"
        return f"{self.client} c={self.concurrency} -> {self.server} server [{self.loop}]{where}"

    @property
    def mode(self) -> str | None:
        """The sockrace strategy name, or None for a reference client."""
        kind, _, mode = self.client.partition(" ")
        return mode if kind == "sockrace" else None

    @property
    def runs_sockrace(self) -> bool:
        """Whether the client or the server is sockrace's: only then can two trees differ."""
        return self.mode is not None or self.server == "sockrace"

    def on(self, tree: str) -> Variant:
        return dataclasses.replace(self, tree=tree)


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    variants: tuple[Variant, ...]  # the first is the reference

    @property
    def reference(self) -> Variant:
        return self.variants[0]


def build_groups(loop: str, uvloop_installed: bool) -> list[Group]:
    """The questions the benchmark asks, each as a reference and the variants divided by it."""
    ref_lockstep = Variant("reference lock-step", "readline", loop=loop)
    lockstep_on_sockrace = Variant("reference lock-step", "sockrace", loop=loop)

    def pipelined(client: str, server: str, concurrency: int) -> Variant:
        return Variant(client, server, concurrency, PIPELINED_REQUESTS, loop)

    groups = [
        Group("lock-step server", (ref_lockstep, lockstep_on_sockrace)),
        # The windowed load generator does almost nothing per request, so that the server is the
        # bottleneck here (against the pipelined client, on 2 cores, the client often is).
        Group("pipelined server", tuple(
            Variant("reference windowed", server, 100, WINDOWED_REQUESTS, loop)
            for server in ("readline", "bulk", "sockrace")
        )),
        Group("locked client", (
            lockstep_on_sockrace,
            *(Variant("sockrace locked", "sockrace", c, loop=loop) for c in (1, 10, 100, 1000)),
        )),
    ]
    for concurrency in (100, 1000):
        groups.append(Group(f"pipelining clients c={concurrency}", (
            pipelined("reference pipelined", "sockrace", concurrency),
            pipelined("sockrace pipelined", "sockrace", concurrency),
            pipelined("sockrace multiplexed", "sockrace", concurrency),
        )))
    c = STRATEGIES_CONCURRENCY
    groups.append(Group(f"strategies c={c}", (
        Variant("sockrace locked", "sockrace", c, loop=loop),
        Variant("sockrace locked-cancel-safe", "sockrace", c, loop=loop),
        pipelined("sockrace pipelined", "sockrace", c),
        pipelined("sockrace multiplexed", "sockrace", c),
    )))
    groups.append(Group("reference machine", (
        ref_lockstep,
        pipelined("reference pipelined", "readline", 100),
        pipelined("reference pipelined", "bulk", 100),
    )))
    if uvloop_installed:
        groups.append(Group("uvloop lock-step", (
            dataclasses.replace(lockstep_on_sockrace, loop="asyncio"),
            dataclasses.replace(lockstep_on_sockrace, loop="uvloop"),
        )))
    return groups


@dataclass(frozen=True, slots=True)
class Settings:
    runs: int = 7
    scale: float = 1.0
    inproc: bool = False
    loop: str = loops.DEFAULT_LOOP
    sections: tuple[str, ...] = ()  # only the groups (or "end to end", "idle memory") naming one; () = all
    end_to_end: bool = True  # `sockrace compare` and the counter demo
    memory: bool = True  # server memory per idle connection
    trees: tuple[Tree, ...] = (Tree(THIS_TREE, REPO_ROOT / "src"),)

    def requests(self, variant: Variant) -> int:
        return max(variant.concurrency, round(variant.requests * self.scale))

    def selects(self, section: str) -> bool:
        return not self.sections or any(word in section for word in self.sections)

    def tree(self, name: str) -> Tree:
        for tree in self.trees:
            if tree.name == name:
                return tree
        raise KeyError(f"no tree named {name!r}")
