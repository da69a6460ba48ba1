"""Replay: episodes stored in Redis/Valkey tables and sampled as training windows.

Vocabulary (Reverb's, defined in :mod:`.table`): a *table* (``pretrain``, ``rollouts``,
``corrections``) holds *items*, here whole episodes; a *sampler* selects which items and
steps a sample returns, a *remover* which item is evicted past capacity, and a
*RateLimiter* keeps samples and inserts in ratio.

- :class:`Episode` is the item; :meth:`Episode.validate` checks it before any write.
- :class:`ReplayClient` writes an episode atomically (one Lua script, idempotent by
  episode id, FIFO eviction past capacity) and reads episodes, table statistics,
  priorities and normalisation stats back; :class:`ShardedReplayClient` does the same over
  several servers, placing each episode by a stable hash of its id.
- :class:`TableConfig` sets a table's capacity, selector and rate limiter
  (:class:`MinSize`, :class:`SampleToInsertRatio`); it is stored in Redis.
- :class:`WindowSampler` mixes tables by weight and returns (frame, state, action chunk)
  windows, one dict each (:meth:`~WindowSampler.sample`) or stacked arrays
  (:meth:`~WindowSampler.sample_batch`).
- :class:`EmbeddedValkey` runs the bundled Valkey server with AOF persistence when no
  Redis URL is configured.
- :mod:`.keys` names the Redis key layout and its ``SCHEMA_VERSION``; :mod:`.scripts` the
  Lua that changes it; :mod:`.errors` the errors raised at the API edge.
"""

from .client import ReplayClient
from .episode import Episode, EpisodeInfo
from .errors import (
    EmptyReplayError,
    InvalidEpisodeError,
    PortInUseError,
    RateLimitedError,
    ReplayError,
    ReplayTimeoutError,
    ReplayUnavailableError,
    SchemaMismatchError,
    ServerStartError,
)
from .keys import SCHEMA_VERSION, TABLES
from .metrics import ReplayCollector
from .rate_limiter import MinSize, RateLimiter, SampleToInsertRatio
from .sampler import WindowSampler
from .server import EmbeddedValkey
from .sharding import ShardedReplayClient, shard_index
from .table import TableConfig

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "EmbeddedValkey",
    "EmptyReplayError",
    "Episode",
    "EpisodeInfo",
    "InvalidEpisodeError",
    "MinSize",
    "PortInUseError",
    "RateLimitedError",
    "RateLimiter",
    "ReplayClient",
    "ReplayCollector",
    "ReplayError",
    "ReplayTimeoutError",
    "ReplayUnavailableError",
    "SampleToInsertRatio",
    "SchemaMismatchError",
    "ServerStartError",
    "ShardedReplayClient",
    "TableConfig",
    "WindowSampler",
    "shard_index",
    "DatasetError",
    "ingest_dataset",
    "IngestReport",
    "export_table",
    "ExportReport",
]

from .lerobot import DatasetError  # noqa: E402
from .ingest import ingest_dataset, IngestReport  # noqa: E402
from .export import export_table, ExportReport  # noqa: E402
