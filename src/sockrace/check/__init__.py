"""Check a client of your own: tools that put any server and client under seeded faults.

    FaultProxy    a TCP proxy in front of any server: seeded delay, split, coalesce and reset faults,
                  bounded memory, a fault log (proxy.py; the plan itself is pure, in faults.py)
    hammer        concurrent calls through your client, seeded deadlines and cancellations, and a
                  per-call oracle that names whose reply a crossed call got (hammer.py)
    run_check     a whole check: the proxy, your scenario through it, the hammer (runner.py)
    sweep, replay, shrink   run a check once per seed, re-run a seed, shrink a failing run's record
                  to a minimal one (explore.py, shrink.py); check_attempt runs one Setting through
                  run_check; sweep_schedules runs a program once per seed of the seeded loop, with
                  the same engine and the same Sweep
    RunRecord     a failing run as a file (record.py): save_record, load_record
    counting_loop the event loop `sockrace check` runs on: asyncio's own, its passes counted, so that
                  a replay and a shrink follow a recorded tape pass for pass (passes.py)

Everything the documentation's examples use is here: `from sockrace.check import ...` is the one import.
"""

from __future__ import annotations

from sockrace.check.explore import (
    Failure,
    Replay,
    Setting,
    Sweep,
    check_attempt,
    replay,
    sweep,
    sweep_schedules,
)
from sockrace.check.faults import Decision, Direction, FaultRecord, Faults
from sockrace.check.forwarding import simulate
from sockrace.check.hammer import hammer
from sockrace.check.passes import counting_loop
from sockrace.check.proxy import FaultProxy, ProxyStatistics, serve_proxy
from sockrace.check.record import RunRecord
from sockrace.check.record import load as load_record
from sockrace.check.record import save as save_record
from sockrace.check.result import HammerResult
from sockrace.check.runner import CheckConfig, CheckRun, run_check
from sockrace.check.schedule import SeededEventLoop, run_with_schedule, seeded_loop_factory
from sockrace.check.shrink import Shrunk, shrink
from sockrace.errors import (
    HammerError,
    NotFailing,
    RecordError,
    ScenarioError,
    ScenarioNotFound,
    UpstreamError,
)

__all__ = [
    "CheckConfig",
    "CheckRun",
    "Decision",
    "Direction",
    "Failure",
    "FaultProxy",
    "FaultRecord",
    "Faults",
    "HammerError",
    "HammerResult",
    "NotFailing",
    "ProxyStatistics",
    "RecordError",
    "Replay",
    "RunRecord",
    "ScenarioError",
    "ScenarioNotFound",
    "SeededEventLoop",
    "Setting",
    "Shrunk",
    "Sweep",
    "UpstreamError",
    "check_attempt",
    "counting_loop",
    "hammer",
    "load_record",
    "replay",
    "run_check",
    "run_with_schedule",
    "save_record",
    "seeded_loop_factory",
    "serve_proxy",
    "shrink",
    "simulate",
    "sweep",
    "sweep_schedules",
]
