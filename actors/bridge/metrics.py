"""Prometheus metrics of the robot bridge (``fleetloop_bridge_*``).

They join the default registry only in a process that serves a bridge (``register()``, called by
``RobotBridgeServer.start``): actors import this package for its client, and their endpoints must
not show a bridge's series.
"""

import threading

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

REQUESTS = Counter(
    "fleetloop_bridge_requests_total", "Bridge calls by method and final gRPC status code.", ["method", "code"],
    registry=None,
)
ACT_SECONDS = Histogram(
    "fleetloop_bridge_act_seconds", "Time to validate and execute one action chunk.",
    buckets=(0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=None,
)
INTERVENTIONS = Counter("fleetloop_bridge_interventions_total", "Operator takeovers started, by reason.", ["reason"],
                        registry=None)
ACTIVE_INTERVENTIONS = Gauge("fleetloop_bridge_active_interventions", "Operator takeovers in progress.", registry=None)
REJECTED = Counter(
    "fleetloop_bridge_rejected_total",
    "Bridge requests refused, by reason (e.g. unauthenticated, stale_episode, non_finite, operator_control).",
    ["reason"], registry=None,
)
ALL = (REQUESTS, ACT_SECONDS, INTERVENTIONS, ACTIVE_INTERVENTIONS, REJECTED)

_registered = False
_lock = threading.Lock()


def register() -> None:
    """Export the bridge's metrics from this process's default registry (once)."""
    global _registered
    with _lock:
        if not _registered:
            for metric in ALL:
                REGISTRY.register(metric)
            _registered = True
