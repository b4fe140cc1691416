"""Check a client of your own: tools that put any server and client under seeded faults.

    FaultProxy    a TCP proxy in front of any server: seeded delay, split, coalesce and reset faults,
                  bounded memory, a fault log (proxy.py; the plan itself is pure, in faults.py)
"""

from __future__ import annotations

from sockrace.check.faults import Decision, Direction, FaultRecord, Faults, simulate
from sockrace.check.proxy import FaultProxy, ProxyStatistics, serve_proxy

__all__ = [
    "Decision",
    "Direction",
    "FaultProxy",
    "FaultRecord",
    "Faults",
    "ProxyStatistics",
    "serve_proxy",
    "simulate",
]
