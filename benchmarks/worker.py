"""A client process of the benchmark: `python -m benchmarks.worker`, driven by benchmarks.processes.Worker.

It reads one job per line on stdin (JSON), runs it, and writes one answer per line on stdout, until
stdin reaches EOF. A job that fails answers {"error": "..."}: the run goes on with the other variants.
Running the clients here, not in the process that orchestrates, lets each source tree's clients
import that tree's sockrace.
"""

from __future__ import annotations

import gc
import json
import sys
from typing import Any

from benchmarks import counter_demo
from benchmarks.clients import measure_once
from benchmarks.variants import Variant
from sockrace import loop as loops
from sockrace.workload import Plan, WorkloadConfig

_plans: dict[tuple[int, int], Plan] = {}


def plan_for(concurrency: int, requests_each: int) -> Plan:
    """The seeded plan (no yields: the benchmark measures speed, not races), built once per shape."""
    shape = (concurrency, requests_each)
    if shape not in _plans:
        config = WorkloadConfig(concurrency=concurrency, requests=requests_each, max_yields=0)
        _plans[shape] = Plan.build(config)
    return _plans[shape]


def client_job(job: dict[str, Any]) -> dict[str, Any]:
    variant = Variant(**job["variant"])
    plan = plan_for(variant.concurrency, job["requests_each"])
    address = (str(job["address"][0]), int(job["address"][1])) if job["address"] else None
    run = loops.run(measure_once(variant, plan, address), variant.loop)
    return run._asdict()


def counter_job(job: dict[str, Any]) -> dict[str, Any]:
    program = counter_demo.PROGRAMS[job["program"]]
    return {"seconds": loops.run(counter_demo.timed(program, job["coroutines"]), job["loop"])}


JOBS = {"client": client_job, "counter": counter_job}


def main() -> int:
    for line in sys.stdin:
        job = json.loads(line)
        # The long-lived objects of this process (plans, earlier results) leave the cyclic collector's
        # view, so that a collection set off by the code under test does not walk them: otherwise the
        # variant that allocates most pays for the harness's heap.
        gc.freeze()
        try:
            answer = JOBS[job["job"]](job)
        except Exception as exc:  # a broken variant is reported, the others still run
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
