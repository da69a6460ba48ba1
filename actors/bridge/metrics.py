"""Prometheus metrics of the robot bridge (``fleetloop_bridge_*``)."""

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "fleetloop_bridge_requests_total", "Bridge calls by method and final gRPC status code.", ["method", "code"]
)
ACT_SECONDS = Histogram(
    "fleetloop_bridge_act_seconds", "Time to validate and execute one action chunk.",
    buckets=(0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INTERVENTIONS = Counter("fleetloop_bridge_interventions_total", "Operator takeovers started, by reason.", ["reason"])
ACTIVE_INTERVENTIONS = Gauge("fleetloop_bridge_active_interventions", "Operator takeovers in progress.")
REJECTED = Counter(
    "fleetloop_bridge_rejected_total",
    "Bridge requests refused, by reason (e.g. unauthenticated, stale_episode, non_finite, operator_control).",
    ["reason"],
)
