"""End to end: `sockrace compare`, the counter demo and `sockrace counter`, timed round by round on one
tree, or alternately on several (the A/B run)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from benchmarks import commands, counter_demo
from benchmarks.commands import Timing
from benchmarks.processes import Worker
from benchmarks.variants import Tree
from sockrace import loop as loops


def new_timings(loop: str, seed_program: bool) -> dict[str, Timing]:
    """The timings of one tree, in the order they are taken within a round."""
    loop_args = ["--loop", loop] if loop != loops.DEFAULT_LOOP else []
    demo, seed = counter_demo.new_timings()
    timings = {"compare": Timing("compare", ["python", "-m", "sockrace", "compare", *loop_args]),
               "counter demo": demo}
    if seed_program:
        timings["seed program"] = seed
    timings["counter"] = Timing("counter", ["python", "-m", "sockrace", "counter", *loop_args])
    return timings


def _time_round(timings: dict[str, Timing], tree: Tree, worker: Worker, loop: str, flip: bool) -> None:
    programs = [(name, program) for name, program in (("counter demo", "demo"), ("seed program", "seed"))
                if name in timings]
    for name, timing in timings.items():
        if name == "counter demo":
            # The demo and the seed program back to back, in the other order every other round.
            for paired, program in reversed(programs) if flip else programs:
                counter_demo.time_once(timings[paired], program, worker, loop)
        elif name != "seed program":
            commands.time_once(timing, timing.command[3:], tree)


def time_end_to_end(trees: Sequence[Tree], loop: str, runs: int, progress: Callable[[str], None],
                    seed_program: bool = False) -> list[dict[str, Timing]]:
    """Every timing of every tree, `runs` rounds, the trees in the other order every other round.

    With `seed_program`, the seed tutorial's program is timed beside the counter demo.
    """
    per_tree = [new_timings(loop, seed_program) for _ in trees]
    workers = [Worker(tree) for tree in trees]
    try:
        for index in range(runs):
            progress(f"end to end, round {index + 1}/{runs}")
            sides = list(range(len(trees)))
            for side in reversed(sides) if index % 2 else sides:
                _time_round(per_tree[side], trees[side], workers[side], loop, flip=bool(index % 2))
    finally:
        for worker in workers:
            worker.close()
    return per_tree
