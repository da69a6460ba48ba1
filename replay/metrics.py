"""Prometheus metrics of the replay: counters the clients and samplers increment, and a
collector reading per-table counts from Redis at scrape time."""

import logging
from collections.abc import Iterator

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily

from .errors import ReplayError

logger = logging.getLogger(__name__)

INSERTS = Counter("fleetloop_replay_inserts", "Episodes stored into a replay table.", ["table"])
SAMPLES = Counter("fleetloop_replay_samples", "Windows sampled from a replay table.", ["table"])
INSERT_REJECTS = Counter(
    "fleetloop_replay_insert_rejects",
    "Episode writes that stored nothing (invalid, duplicate, rate_limited, timeout, "
    "unavailable, error).",
    ["reason"],
)


class ReplayCollector:
    """Prometheus collector reading per-table counters from the replay at scrape time.

    ``client`` is a ReplayClient or ShardedReplayClient (anything with ``table_stats()``).
    Register it yourself: ``prometheus_client.REGISTRY.register(ReplayCollector(client))``.
    Exposes ``fleetloop_replay_episodes{table}``, ``fleetloop_replay_steps{table}`` and
    ``fleetloop_replay_up`` (0 when the server could not be read).
    """

    def __init__(self, client) -> None:
        self._client = client

    def describe(self) -> list[GaugeMetricFamily]:
        return self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        episodes, steps, up = self._families()
        try:
            stats = self._client.table_stats()
        except ReplayError as exc:
            logger.warning("replay metrics scrape failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        for table, counts in stats.items():
            episodes.add_metric([table], counts["episodes"])
            steps.add_metric([table], counts["steps"])
        up.add_metric([], 1)
        yield from (episodes, steps, up)

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "fleetloop_replay_episodes", "Episodes stored per replay table.", labels=["table"]
            ),
            GaugeMetricFamily(
                "fleetloop_replay_steps", "Steps stored per replay table.", labels=["table"]
            ),
            GaugeMetricFamily("fleetloop_replay_up", "1 if the replay answered the scrape."),
        ]
