"""Prometheus metrics of the replay: counters the clients and samplers increment, and a
collector reading per-table counts from Redis at scrape time."""

import logging
from collections.abc import Iterator

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import RedisError

from .errors import ReplayError

logger = logging.getLogger(__name__)

INSERTS = Counter("fleetloop_replay_inserts", "Episodes stored into a replay table.", ["table"])
SAMPLES = Counter("fleetloop_replay_samples", "Windows sampled from a replay table.", ["table"])
INSERT_REJECTS = Counter(
    "fleetloop_replay_insert_rejects",
    "Episode writes that stored nothing (invalid, duplicate, evicted, rate_limited, timeout, "
    "unavailable, error).",
    ["reason"],
)


class ReplayCollector:
    """Prometheus collector reading the replay's state from Redis at scrape time.

    ``client`` is a ReplayClient or ShardedReplayClient (``table_stats()``, ``table_config()``,
    ``shards``). Register it yourself: ``prometheus_client.REGISTRY.register(ReplayCollector(client))``.
    Exposes per table ``fleetloop_replay_episodes``, ``_steps``, ``_bytes`` and ``_capacity`` (tables
    with a capacity; summed over shards, as capacity applies per shard), the servers'
    ``fleetloop_replay_memory_used_bytes`` and ``_memory_max_bytes`` (summed; 0 = no maxmemory), and
    ``fleetloop_replay_up`` (0 when the replay could not be read).
    """

    def __init__(self, client) -> None:
        self._client = client

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families().values())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = self._families()
        try:
            stats = self._client.table_stats()
            capacities = {table: self._client.table_config(table).capacity for table in stats}
            memory = [shard.redis.info("memory") for shard in self._client.shards]
        except (ReplayError, RedisError) as exc:
            logger.warning("replay metrics scrape failed: %s", exc)
            families["up"].add_metric([], 0)
            yield families["up"]
            return
        shards = len(memory)
        for table, counts in stats.items():
            for name in ("episodes", "steps", "bytes"):
                families[name].add_metric([table], counts[name])
            if capacities[table] is not None:
                families["capacity"].add_metric([table], capacities[table] * shards)
        families["memory_used"].add_metric([], sum(info["used_memory"] for info in memory))
        families["memory_max"].add_metric([], sum(info.get("maxmemory", 0) for info in memory))
        families["up"].add_metric([], 1)
        yield from families.values()

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        table = ["table"]
        return {
            "episodes": GaugeMetricFamily("fleetloop_replay_episodes", "Episodes stored per replay table.", labels=table),
            "steps": GaugeMetricFamily("fleetloop_replay_steps", "Steps stored per replay table.", labels=table),
            "bytes": GaugeMetricFamily("fleetloop_replay_bytes", "Bytes of episode data stored per replay table.",
                                       labels=table),
            "capacity": GaugeMetricFamily("fleetloop_replay_capacity",
                                          "Episodes a table holds before FIFO eviction (tables with a capacity).",
                                          labels=table),
            "memory_used": GaugeMetricFamily("fleetloop_replay_memory_used_bytes",
                                             "Memory the replay server(s) use (INFO used_memory)."),
            "memory_max": GaugeMetricFamily("fleetloop_replay_memory_max_bytes",
                                            "The replay server(s)' maxmemory limit; 0 = none."),
            "up": GaugeMetricFamily("fleetloop_replay_up", "1 if the replay answered the scrape."),
        }
