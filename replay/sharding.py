"""ShardedReplayClient: one replay spread over several Redis/Valkey servers by episode id.

Each episode lives wholly on one server (*shard*), chosen by rendezvous hashing of its id:
every shard i scores ``blake2b(f"{i}:{episode_id}")`` and the highest score wins. The choice
is stable across processes and restarts, so any client finds an episode without a lookup,
and appending a shard to the URL list moves only ~1/(n+1) of the ids' placements (existing
episodes stay where they were written; keep the URL order fixed).

Capacity and bandwidth grow with the shards: each server stores and serves only its share.
Per-table configuration is written to every shard, and applies **per shard**: ``capacity``
bounds each server (the replay holds up to n x capacity episodes, FIFO per shard), and the
rate limiter counts each shard's inserts and samples (both spread evenly by the hash and by
proportional sampling, so the ratio holds overall; ``min_size_to_sample`` is per shard).
WindowSampler indexes all shards and samples across them in proportion to their episodes
(or priorities).
"""

import hashlib
import logging
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import keys, stats
from .client import ReplayClient
from .episode import Episode, EpisodeInfo
from .errors import EmptyReplayError, ReplayUnavailableError
from .table import TableConfig

logger = logging.getLogger(__name__)


def shard_index(episode_id: str, num_shards: int) -> int:
    """Index of the shard storing ``episode_id`` among ``num_shards`` (rendezvous hashing).

    Raises:
        ValueError: num_shards < 1.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    scores = [
        hashlib.blake2b(f"{i}:{episode_id}".encode(), digest_size=8).digest()
        for i in range(num_shards)
    ]
    return max(range(num_shards), key=scores.__getitem__)


class ShardedReplayClient:
    """ReplayClient's API over several servers; episodes are placed by :func:`shard_index`.

    Args:
        urls: one ``redis://`` URL per shard; the order fixes placement, only append.
        **options: ReplayClient options (socket_timeout, password, connect_timeout,
            tables, rate_limit_timeout_s) applied to every shard.

    Raises:
        ValueError: no URL, or a URL given twice.
        ReplayUnavailableError: a shard cannot be reached (the message names its URL).
        SchemaMismatchError: a shard holds data of another SCHEMA_VERSION.
    """

    def __init__(self, urls: Sequence[str], **options: Any) -> None:
        if not urls:
            raise ValueError("ShardedReplayClient needs at least one URL")
        if len(set(urls)) != len(urls):
            raise ValueError(f"shard URLs must be distinct, got {list(urls)}")
        self._shards: list[ReplayClient] = []
        try:
            for i, url in enumerate(urls):
                try:
                    self._shards.append(ReplayClient(url, **options))
                except ReplayUnavailableError as exc:
                    raise ReplayUnavailableError(
                        f"replay shard {i + 1} of {len(urls)} is down: {exc}"
                    ) from exc
        except BaseException:
            self.close()
            raise
        self.url = ",".join(shard.url for shard in self._shards)

    @property
    def shards(self) -> list[ReplayClient]:
        """One client per shard, in URL order."""
        return list(self._shards)

    def shard_for(self, episode_id: str) -> ReplayClient:
        """The client of the shard that stores ``episode_id``."""
        return self._shards[shard_index(episode_id, len(self._shards))]

    def close(self) -> None:
        """Close every shard's connection pool."""
        for shard in self._shards:
            shard.close()

    def __enter__(self) -> "ShardedReplayClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- per episode: routed to its shard -----------------------------------------------

    def write_episode(
        self, table: str, episode: Episode, priority: float = 1.0, timeout_s: float | None = None
    ) -> str:
        """ReplayClient.write_episode on the episode's shard."""
        return self.shard_for(episode.episode_id).write_episode(table, episode, priority, timeout_s)

    def read_episode(self, episode_id: str) -> Episode:
        """ReplayClient.read_episode on the episode's shard."""
        return self.shard_for(episode_id).read_episode(episode_id)

    def update_priorities(self, table: str, priorities: Mapping[str, float]) -> int:
        """ReplayClient.update_priorities, each id on its shard; returns the number updated."""
        by_shard: dict[int, dict[str, float]] = {}
        for eid, priority in priorities.items():
            by_shard.setdefault(shard_index(eid, len(self._shards)), {})[eid] = priority
        return sum(self._shards[i].update_priorities(table, p) for i, p in by_shard.items())

    # ---- per table: every shard ---------------------------------------------------------

    def configure_table(self, table: str, config: TableConfig | Mapping[str, Any]) -> int:
        """ReplayClient.configure_table on every shard (capacity is per shard); returns the
        episodes evicted in total."""
        return sum(shard.configure_table(table, config) for shard in self._shards)

    def table_config(self, table: str) -> TableConfig:
        """The table's configuration as stored on the first shard."""
        return self._shards[0].table_config(table)

    def tables(self) -> list[str]:
        """The standard tables, then every other table known to any shard, sorted."""
        known = {table for shard in self._shards for table in shard.tables()}
        return list(keys.TABLES) + sorted(known - set(keys.TABLES))

    def episode_ids(self, table: str) -> list[str]:
        """Ids of the table's episodes: each shard's in insertion order, shard after shard."""
        return [eid for shard in self._shards for eid in shard.episode_ids(table)]

    def episode_infos(self, table: str) -> list[EpisodeInfo]:
        """Summaries of the table's episodes, shard after shard (seq is per shard)."""
        return [info for shard in self._shards for info in shard.episode_infos(table)]

    def priorities(self, table: str, episode_ids: list[str] | None = None) -> dict[str, float]:
        """Priorities of the table's stored episodes (all, or those of ``episode_ids``)."""
        merged: dict[str, float] = {}
        for i, shard in enumerate(self._shards):
            ids = None if episode_ids is None else [
                eid for eid in episode_ids if shard_index(eid, len(self._shards)) == i
            ]
            merged |= shard.priorities(table, ids)
        return merged

    def table_stats(self, detailed: bool = False) -> dict[str, dict[str, Any]]:
        """ReplayClient.table_stats summed over the shards (counts added, min/max merged)."""
        per_shard = [shard.table_stats(detailed) for shard in self._shards]
        return {
            table: stats.merge_stats([s.get(table, {}) for s in per_shard])
            for table in self.tables()
        }

    def count_by(self, table: str, field: str) -> dict[object, int]:
        """ReplayClient.count_by summed over the shards."""
        total: Tally = Tally()
        for shard in self._shards:
            total.update(shard.count_by(table, field))
        return dict(total)

    def compute_stats(self, table: str, embodiment: str) -> dict[str, np.ndarray]:
        """ReplayClient.compute_stats merged over the shards holding that embodiment.

        Raises:
            EmptyReplayError: no shard has an episode of that embodiment in the table.
            ReplayError: shards disagree on state/action dims.
        """
        bounds = None
        for shard in self._shards:
            try:
                bounds = stats.merge_bounds(bounds, shard.compute_stats(table, embodiment))
            except EmptyReplayError:
                continue
        if bounds is None:
            raise EmptyReplayError(
                f"table {table!r} at {self.url} has no episode of embodiment {embodiment!r}"
            )
        return bounds

