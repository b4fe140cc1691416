"""Check a client of your own: tools that put any server and client under seeded faults.

    FaultProxy    a TCP proxy in front of any server: seeded delay, split, coalesce and reset faults,
                  bounded memory, a fault log (proxy.py; the plan itself is pure, in faults.py)
    hammer        concurrent calls through your client, seeded deadlines and cancellations, and a
                  per-call oracle that names whose reply a crossed call got (hammer.py)
    sweep, replay, shrink   run a check once per seed, re-run a seed, shrink a failing Setting to a
                  minimal one (explore.py, shrink.py)
"""

from __future__ import annotations

from sockrace.check.explore import Setting, replay, sweep
from sockrace.check.faults import Decision, Direction, FaultRecord, Faults, simulate
from sockrace.check.hammer import HammerError, hammer
from sockrace.check.proxy import FaultProxy, ProxyStatistics, serve_proxy
from sockrace.check.result import HammerResult
from sockrace.check.schedule import SeededEventLoop, run_with_schedule, seeded_loop_factory, sweep_schedules
from sockrace.check.shrink import shrink

__all__ = [
    "Decision",
    "Direction",
    "FaultProxy",
    "FaultRecord",
    "Faults",
    "HammerError",
    "HammerResult",
    "ProxyStatistics",
    "SeededEventLoop",
    "Setting",
    "hammer",
    "replay",
    "run_with_schedule",
    "seeded_loop_factory",
    "serve_proxy",
    "shrink",
    "simulate",
    "sweep",
    "sweep_schedules",
]
