"""The seeded scheduling event loop: its draws, its loop, and what it finds that asyncio's FIFO hides."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque

import pytest

from benchmarks import schedule_cost
from helpers import LoopErrors, MemoryLink, race_in_memory
from sockrace.check.explore import sweep_schedules
from sockrace.check.schedule import (
    PERTURBATIONS,
    Perturbation,
    Program,
    Schedule,
    ScheduleRun,
    SeededEventLoop,
    run_with_schedule,
    seeded_loop_factory,
)
from sockrace.client import Locked
from sockrace.connection import SharedConnection
from sockrace.protocol import Echo, format_request
from sockrace.race import run_mode
from sockrace.server import Server, ServerConfig
from sockrace.workload import Verdict, WorkloadConfig

# Enough seeds to see a batch go every way it can, few enough to keep each test well under a second.
SEEDS = range(50)
# The bound: the plain loop never shows the planted bug in this many runs, the seeded loop
# shows it within this many seeds.
RUNS = 200
SAFE_MODES = ("locked", "locked-cancel-safe", "pipelined", "multiplexed")


# ------------------------------------------------------------------ the draws, without a loop


def test_the_same_seed_draws_the_same_orders_and_digest() -> None:
    first, second = Schedule(7, record=True), Schedule(7, record=True)
    orders = [list(first.order(n)) for n in (1, 2, 5, 0, 9, 3)]
    assert orders == [list(second.order(n)) for n in (1, 2, 5, 0, 9, 3)]
    assert first.digest() == second.digest()
    assert first.choices == second.choices
    assert first.decisions == 4  # batches of 0 and 1 have no order to choose
    assert all(sorted(order) == list(range(len(order))) for order in orders)


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_recorded_choices_are_made_again_under_any_seed(perturbation: Perturbation) -> None:
    sizes = (2, 5, 1, 3, 2, 9)
    first = Schedule(7, perturbation, record=True)
    orders = [list(first.order(n)) for n in sizes]
    assert first.choices is not None
    again = Schedule(8, perturbation, record=True, replay=first.choices)
    assert [list(again.order(n)) for n in sizes] == orders
    assert (again.digest(), again.choices, again.replay_left_at) == (first.digest(), first.choices, None)
    # Another seed alone draws another schedule: the choices, not the seed, made it the same.
    drawn = Schedule(8, perturbation)
    assert [list(drawn.order(n)) for n in sizes] != orders


def test_a_recorded_choice_that_does_not_fit_its_batch_ends_the_replay_there() -> None:
    first = Schedule(7, record=True)
    for n in (3, 4, 5):
        first.order(n)
    assert first.choices is not None
    again = Schedule(7, record=True, replay=first.choices)
    first_choice = first.choices[0]
    assert isinstance(first_choice, tuple)
    assert list(again.order(3)) == list(first_choice)
    again.order(6)  # the second choice orders 4 units: it does not fit, and the seed draws from here
    assert again.replay_left_at == 1
    again.order(4)
    assert again.replay_left_at == 1


def test_another_seed_draws_another_schedule() -> None:
    digests = set()
    for seed in SEEDS:
        schedule = Schedule(seed)
        for _ in range(5):
            schedule.order(6)
        digests.add(schedule.digest())
    assert len(digests) == len(SEEDS)


def test_reverse_keeps_a_batch_or_reverses_it_and_does_both() -> None:
    seen: Counter[int] = Counter()
    for seed in SEEDS:
        order = list(Schedule(seed, "reverse", record=True).order(4))
        assert order in ([0, 1, 2, 3], [3, 2, 1, 0])
        seen[order[0]] += 1
    assert seen[0] > 0
    assert seen[3] > 0


def test_shuffle_puts_every_callback_of_a_batch_first_sometimes() -> None:
    firsts = {Schedule(seed).order(4)[0] for seed in SEEDS}
    assert firsts == {0, 1, 2, 3}


def test_unknown_perturbation_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"^unknown perturbation 'random'; choose from shuffle, reverse$"):
        Schedule(1, "random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown perturbation"):
        seeded_loop_factory(1, "fifo")  # type: ignore[arg-type]


# ------------------------------------------------------------------ the loop


async def interleaving(tasks: int = 4, steps: int = 3) -> list[tuple[int, int]]:
    order: list[tuple[int, int]] = []

    async def task(i: int) -> None:
        for step in range(steps):
            order.append((i, step))
            await asyncio.sleep(0)

    await asyncio.gather(*(task(i) for i in range(tasks)))
    return order


def run_seeded(seed: int, perturbation: Perturbation = "shuffle") -> tuple[list[tuple[int, int]], int, str]:
    with asyncio.Runner(loop_factory=seeded_loop_factory(seed, perturbation)) as runner:
        order = runner.run(asyncio.wait_for(interleaving(), 5))
        loop = runner.get_loop()
        assert isinstance(loop, SeededEventLoop)
        return order, loop.decisions, loop.digest()


def test_plain_asyncio_runs_each_batch_in_fifo_order() -> None:
    fifo = [(i, step) for step in range(3) for i in range(4)]
    assert asyncio.run(asyncio.wait_for(interleaving(), 5)) == fifo


def test_a_seed_gives_one_interleaving_and_its_digest_again() -> None:
    order, decisions, digest = run_seeded(3)
    assert decisions > 0
    assert run_seeded(3) == (order, decisions, digest)


def test_seeds_give_interleavings_that_fifo_never_does() -> None:
    fifo = [(i, step) for step in range(3) for i in range(4)]
    orders = {tuple(run_seeded(seed)[0]) for seed in range(20)}
    assert len(orders) > 10
    assert all(sorted(order) == sorted(fifo) for order in orders)
    # Batches stay batches: no task takes its next step before every task has taken this one.
    assert all([step for _, step in order] == sorted(step for _, step in order) for order in orders)


def test_reverse_runs_a_pass_forwards_or_backwards() -> None:
    orders = {tuple(run_seeded(seed, "reverse")[0]) for seed in range(20)}
    for order in orders:
        for step in range(3):
            tasks = [i for i, s in order if s == step]
            assert tasks in ([0, 1, 2, 3], [3, 2, 1, 0])
    assert len(orders) > 2


def test_a_handle_cancelled_while_held_never_runs() -> None:
    ran: list[str] = []
    loop = SeededEventLoop(1)
    try:
        handle = loop.call_soon(ran.append, "cancelled")
        loop.call_soon(ran.append, "kept")
        handle.cancel()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    assert ran == ["kept"]


def test_a_handle_cancelled_by_an_earlier_callback_of_its_batch_never_runs() -> None:
    outcomes = set()
    for seed in range(20):
        ran: list[str] = []
        victims: list[asyncio.Handle] = []

        def cancel_victim(ran: list[str] = ran, victims: list[asyncio.Handle] = victims) -> None:
            ran.append("canceller")
            victims[0].cancel()

        async def schedule_victim(ran: list[str] = ran, victims: list[asyncio.Handle] = victims) -> None:
            victims.append(asyncio.get_running_loop().call_soon(ran.append, "victim"))

        async def schedule_canceller() -> None:
            asyncio.get_running_loop().call_soon(cancel_victim)

        async def main() -> None:
            # Scheduled by two tasks, the two callbacks are two units of one batch.
            await asyncio.gather(schedule_victim(), schedule_canceller())
            await asyncio.sleep(0)

        with asyncio.Runner(loop_factory=seeded_loop_factory(seed)) as runner:
            runner.run(asyncio.wait_for(main(), 5))
        outcomes.add(tuple(ran))
    # Both orders were drawn; when the canceller came first, the victim did not run.
    assert outcomes == {("canceller",), ("victim", "canceller")}


def test_callbacks_scheduled_in_a_row_stay_in_a_row() -> None:
    """asyncio relies on it: a transport schedules connection_made() before it starts reading."""
    for seed in range(20):
        ran: list[int] = []

        async def schedules_three(ran: list[int] = ran) -> None:
            loop = asyncio.get_running_loop()
            for number in range(3):
                loop.call_soon(ran.append, number)
            await asyncio.sleep(0)

        with asyncio.Runner(loop_factory=seeded_loop_factory(seed)) as runner:
            runner.run(asyncio.wait_for(schedules_three(), 5))
        assert ran == [0, 1, 2]


def test_a_closed_loop_refuses_callbacks_as_asyncio_does() -> None:
    loop = SeededEventLoop(1)
    loop.close()
    with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
        loop.call_soon(print)


def test_timers_and_threads_still_work() -> None:
    async def program() -> int:
        await asyncio.sleep(0.001)
        return await asyncio.to_thread(sum, [1, 2, 3])

    with asyncio.Runner(loop_factory=seeded_loop_factory(5)) as runner:
        assert runner.run(asyncio.wait_for(program(), 5)) == 6


def test_real_sockets_work_under_a_seeded_schedule() -> None:
    """A real server on loopback and a locked client: every request over TCP answered correctly."""

    async def program() -> None:
        # asyncio's own connect path depends on the order of one future's done-callbacks: an error
        # there goes to the loop's exception handler, not to the program.
        loop_errors = LoopErrors().install()
        async with Server(ServerConfig(port=0)) as server:
            host, port = server.address
            result = await run_mode(host, port, Locked, WorkloadConfig(concurrency=5, requests=4, seed=2))
        assert Counter(o.verdict for o in result.outcomes) == {Verdict.CORRECT: 20}
        loop_errors.check()

    for seed in range(10):
        run = run_with_schedule(program, seed, timeout_s=10)
        assert run.error is None, run.traceback
        assert run.decisions > 0


# ------------------------------------------------------------------ a planted order-dependent bug


class EagerPipelinedClient:
    """A pipelined client with a bug that asyncio's FIFO hides: it takes its place in the reply queue,
    then yields once (to let other callers' requests join the same write, it says), then writes.

    Replies come back in the order of the writes and are handed out in the order of the queue: the two
    agree only while every caller that queued first also writes first, which FIFO always arranges.
    """

    def __init__(self, connection: SharedConnection) -> None:
        self.connection = connection
        self.waiting: deque[asyncio.Future[bytes]] = deque()
        self.reader: asyncio.Task[None] | None = None

    async def request(self, payload: str) -> bytes:
        if self.reader is None:
            self.reader = asyncio.create_task(self._read_replies())
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)  # the place in line is taken here...
        await asyncio.sleep(0)
        self.connection.write(format_request(Echo(text=payload)))  # ...and relied on here
        return await future

    async def _read_replies(self) -> None:
        while True:
            line = await self.connection.read_line()
            self.waiting.popleft().set_result(line)

    async def aclose(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


def eager_client_program(data_seed: int) -> Program:
    """Callers share one EagerPipelinedClient over an in-memory link to sockrace's own server and
    raise AssertionError, naming both requests, on the first reply that answers another caller."""
    tokens = random.Random(data_seed)
    callers = 2 + data_seed % 3
    payloads = [[f"c{c}.{i}.{tokens.randrange(10**6)}" for i in range(3)] for c in range(callers)]

    async def caller(client: EagerPipelinedClient, mine: list[str]) -> None:
        for payload in mine:
            reply = await client.request(payload)
            if reply != f"OK {payload}\n".encode():
                raise AssertionError(f"{payload} got the reply {reply.decode().strip()!r}")

    async def program() -> None:
        link = MemoryLink(Server(ServerConfig()))
        client = EagerPipelinedClient(link.connection)
        try:
            await asyncio.gather(*(caller(client, mine) for mine in payloads))
        finally:
            await client.aclose()
            await link.close()

    return program


def test_the_plain_loop_never_shows_the_planted_bug() -> None:
    for data_seed in range(RUNS):
        asyncio.run(asyncio.wait_for(eager_client_program(data_seed)(), 5))


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_the_seeded_loop_shows_the_planted_bug_and_replays_it_exactly(perturbation: Perturbation) -> None:
    sweep = sweep_schedules(eager_client_program(0), range(RUNS), perturbation=perturbation, timeout_s=5)
    failure = sweep.first
    assert failure is not None, f"no failure in {len(sweep.tried)} seeds"
    assert failure.error is not None
    assert failure.error.startswith("AssertionError: c")
    assert "got the reply 'OK c" in failure.error
    assert sweep.tried == tuple(range(failure.seed + 1))  # stopped at the first
    replays = [
        run_with_schedule(eager_client_program(0), failure.seed, perturbation=perturbation, timeout_s=5)
        for _ in range(20)
    ]
    assert {(run.error, run.decisions, run.digest) for run in replays} == {
        (failure.error, failure.decisions, failure.digest)
    }


def test_a_failing_runs_choices_bring_its_failure_back_under_another_seed() -> None:
    sweep = sweep_schedules(eager_client_program(0), range(RUNS), timeout_s=5)
    assert sweep.first is not None
    failing = run_with_schedule(eager_client_program(0), sweep.first.seed, timeout_s=5, record=True)
    assert failing.error is not None
    assert failing.choices is not None
    passing = next(seed for seed in range(RUNS)
                   if run_with_schedule(eager_client_program(0), seed, timeout_s=5).error is None)
    again = run_with_schedule(eager_client_program(0), passing, timeout_s=5, replay=failing.choices)
    assert (again.error, again.digest, again.replay_left_at) == (failing.error, failing.digest, None)


def test_each_data_seed_of_the_planted_bug_fails_under_some_schedule_seed() -> None:
    for data_seed in range(5):
        sweep = sweep_schedules(eager_client_program(data_seed), range(RUNS), timeout_s=5)
        assert sweep.first is not None, data_seed


# ------------------------------------------------------------------ sockrace's own strategies


def race_program(mode: str, seed: int, outcomes: Counter[Verdict]) -> Program:
    async def program() -> None:
        config = WorkloadConfig(concurrency=8, requests=4, seed=seed)
        result = await race_in_memory(mode, config)
        outcomes.update(o.verdict for o in result.outcomes)

    return program


@pytest.mark.parametrize("mode", SAFE_MODES)
def test_safe_strategies_never_cross_under_any_schedule(mode: str) -> None:
    outcomes: Counter[Verdict] = Counter()
    for seed in SEEDS:
        run = run_with_schedule(race_program(mode, seed, outcomes), seed, timeout_s=5)
        assert run.error is None, run.traceback
    assert outcomes == {Verdict.CORRECT: 8 * 4 * len(SEEDS)}


def test_unsafe_crosses_under_the_seeded_schedules() -> None:
    crossing_seeds = 0
    for seed in range(10):
        outcomes: Counter[Verdict] = Counter()
        run_with_schedule(race_program("unsafe", seed, outcomes), seed, timeout_s=5)
        crossing_seeds += outcomes[Verdict.CROSSED] > 0
    assert crossing_seeds == 10


# ------------------------------------------------------------------ the sweep and its errors


def test_a_sweep_without_failures_tries_every_seed() -> None:
    async def fine() -> None:
        await asyncio.sleep(0)

    sweep = sweep_schedules(fine, range(5))
    assert (sweep.tried, sweep.failures, sweep.first) == (tuple(range(5)), (), None)


def test_a_sweep_can_go_on_past_the_first_failure() -> None:
    async def first_task_finishes_first() -> None:
        finished: list[int] = []

        async def task(i: int) -> None:
            await asyncio.sleep(0)
            finished.append(i)

        await asyncio.gather(task(0), task(1))
        assert finished == [0, 1], f"finished in the order {finished}"

    seen: list[int] = []
    sweep = sweep_schedules(first_task_finishes_first, range(20), keep_going=True,
                            on_progress=lambda progress: seen.append(progress.done))
    assert sweep.tried == tuple(range(20))
    assert seen == list(range(1, 21))
    assert 0 < len(sweep.failures) < 20
    assert {run.error for run in sweep.failures} == {"AssertionError: finished in the order [1, 0]"}
    assert sweep.failing_seeds == tuple(run.seed for run in sweep.failures)
    # The one Sweep of a check's sweep, in the same words: the seed and how it failed.
    assert sweep.summary().startswith(f"20 seeds tried, {len(sweep.failures)} failing (")
    assert f"{sweep.failing_seeds[0]} (AssertionError)" in sweep.summary()


def test_a_program_that_hangs_is_a_timeout_failure_not_a_hang() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    run = run_with_schedule(hangs, 1, timeout_s=0.05)
    assert run.error == "TimeoutError"
    assert run.failed


def test_tasks_a_program_leaves_are_cancelled() -> None:
    leftovers: list[asyncio.Task[None]] = []

    async def leaves_a_task() -> None:
        leftovers.append(asyncio.create_task(asyncio.Event().wait()))  # type: ignore[arg-type]

    assert not run_with_schedule(leaves_a_task, 1).failed
    assert leftovers[0].cancelled()


def test_bad_arguments_are_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"^program must be a callable"):
        run_with_schedule(42, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^timeout_s must be positive, got 0$"):
        run_with_schedule(lambda: asyncio.sleep(0), 1, timeout_s=0)


def test_a_run_records_its_seed_and_schedule() -> None:
    run = run_with_schedule(lambda: interleaving(), 4, perturbation="reverse")
    assert isinstance(run, ScheduleRun)
    assert (run.seed, run.perturbation, run.error, run.choices) == (4, "reverse", None, None)
    assert run.decisions > 0
    assert len(run.digest) == 32


def test_a_recorded_run_keeps_every_decision_of_the_program() -> None:
    run = run_with_schedule(lambda: interleaving(), 4, record=True)
    assert run.choices is not None
    assert len(run.choices) == run.decisions
    assert all(isinstance(choice, tuple) and sorted(choice) == list(range(len(choice)))
               for choice in run.choices)
    again = run_with_schedule(lambda: interleaving(), 4, record=True)
    assert (again.choices, again.digest) == (run.choices, run.digest)


# ------------------------------------------------------------------ the cost benchmark, kept from rotting


def test_the_cost_benchmark_runs_small(capsys: pytest.CaptureFixture[str]) -> None:
    """Structure only: every workload and perturbation gets a line; no speed is judged here."""
    assert schedule_cost.main(["--rounds", "1", "-c", "2", "-n", "2", "--tasks", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in lines[1:4]] == list(schedule_cost.WORKLOADS)
    assert all("shuffle" in line and "reverse" in line for line in lines[1:])
    assert lines[-1].startswith("worst ratio to plain: shuffle ")
