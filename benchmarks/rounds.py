"""Measuring in rounds, and ratios paired by round.

All the variants of a run are measured round-robin, one run of each per round, so that slow drift of
the machine (thermal, noisy neighbours) hits the reference and the candidates alike. The figure kept
is the median over the rounds; latencies are pooled over the rounds. A ratio is the median of the
round-by-round ratios, each pair measured in the same round.

Servers run in their own processes (one per tree, server kind and loop, started once) and the clients
in a client process per tree, unless `inproc` is set: then each run starts its server on the client's
event loop.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from benchmarks.processes import ProcessPool, cpu_seconds
from benchmarks.variants import Settings, Variant


@dataclass(slots=True)
class Measurement:
    """All the runs of one variant."""

    variant: Variant
    rates: list[float] = field(default_factory=list)  # req/s of each run
    latencies: list[float] = field(default_factory=list)  # seconds, every request of every run
    client_cpu_us: list[float] = field(default_factory=list)  # CPU of the client process per request
    server_cpu_us: list[float] = field(default_factory=list)  # CPU of the server process per request
    wrong: int = 0  # replies that did not answer their request
    error: str | None = None  # why the variant could not be measured

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    @property
    def median_client_us(self) -> float | None:
        return statistics.median(self.client_cpu_us) if self.client_cpu_us else None

    @property
    def median_server_us(self) -> float | None:
        return statistics.median(self.server_cpu_us) if self.server_cpu_us else None

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    @property
    def ok(self) -> bool:
        return self.error is None and self.wrong == 0 and bool(self.rates)


def round_ratios(results: dict[Variant, Measurement], top: Variant, bottom: Variant) -> list[float]:
    """`top`'s req/s over `bottom`'s, round by round: paired, each pair measured in the same round,
    so that the machine's swings (2x within a minute on a small virtual machine) hit both sides alike."""
    a, b = results.get(top), results.get(bottom)
    if a is None or b is None or not a.ok or not b.ok:
        return []
    return [x / y for x, y in zip(a.rates, b.rates, strict=False) if y > 0]


def median_ratio(results: dict[Variant, Measurement], top: Variant, bottom: Variant) -> float | None:
    """The median of the round-by-round ratios (None when either side was not measured)."""
    ratios = round_ratios(results, top, bottom)
    return statistics.median(ratios) if ratios else None


def measure_run(variant: Variant, requests_each: int, settings: Settings, pool: ProcessPool,
                outcome: Measurement, keep: bool) -> None:
    """One run of `variant`; its figures go into `outcome` when `keep` (not a warm-up), errors always."""
    address = None
    server_pid = None
    if not settings.inproc:
        server_pid, address = pool.server(variant.tree, variant.server, variant.loop)
    server_cpu = cpu_seconds(server_pid)
    job = {"job": "client", "address": address, "requests_each": requests_each,
           "variant": dataclasses.asdict(variant)}
    answer = pool.worker(variant.tree).ask(job)
    if "error" in answer:
        outcome.error = answer["error"]
        return
    if server_cpu is not None:
        server_cpu = (cpu_seconds(server_pid) or server_cpu) - server_cpu
    if not keep:
        return
    requests = len(answer["latencies"])
    outcome.rates.append(answer["rate"])
    outcome.latencies.extend(answer["latencies"])
    if not settings.inproc:  # in one process, client and server CPU cannot be told apart
        outcome.client_cpu_us.append(answer["client_cpu_s"] / requests * 1e6)
    if server_cpu is not None:
        outcome.server_cpu_us.append(server_cpu / requests * 1e6)
    outcome.wrong += answer["wrong"]


def measure_variants(
    variants: Sequence[Variant], settings: Settings, progress: Callable[[str], None] = lambda _: None
) -> dict[Variant, Measurement]:
    """Measure every variant `settings.runs` times, round-robin, after one shorter warm-up round."""
    results = {v: Measurement(v) for v in variants}
    pool = ProcessPool(settings.trees)
    try:
        for round_index in range(settings.runs + 1):
            progress(f"round {round_index}/{settings.runs}" + (" (warm-up)" if round_index == 0 else ""))
            # Every other round in reverse order: a variant measured just after another one in a
            # round is measured just before it in the next, so neither always gets the warmer machine.
            for variant in variants if round_index % 2 else reversed(variants):
                outcome = results[variant]
                if outcome.error is not None:
                    continue
                requests_each = max(1, settings.requests(variant) // variant.concurrency)
                if round_index == 0:
                    requests_each = max(1, requests_each // 10)
                try:
                    measure_run(variant, requests_each, settings, pool, outcome, keep=round_index > 0)
                except RuntimeError as exc:  # a server or client process that died
                    outcome.error = str(exc)
    finally:
        pool.close()
    return results
