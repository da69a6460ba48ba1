"""Replay: episodes stored in Redis/Valkey tables and sampled as training windows.

Vocabulary (Reverb's): a *table* (``pretrain``, ``rollouts``, ``corrections``) holds
*items*, here whole episodes; a *sampler* selects which items and steps a sample returns.

- :class:`Episode` is the item; :meth:`Episode.validate` checks it before any write.
- :class:`ReplayClient` writes an episode atomically (one Lua script, idempotent by
  episode id) and reads episodes, table statistics and normalisation stats back.
- :class:`WindowSampler` mixes tables by weight and returns (frame, state, action chunk)
  windows read with pipelined range reads.
- :class:`EmbeddedValkey` runs the bundled Valkey server with AOF persistence when no
  Redis URL is configured.
- :mod:`.keys` names the Redis key layout and its ``SCHEMA_VERSION``; :mod:`.errors` the
  errors raised at the API edge.
"""

from .client import ReplayClient, ReplayCollector
from .episode import Episode, EpisodeInfo
from .errors import (
    EmptyReplayError,
    InvalidEpisodeError,
    PortInUseError,
    ReplayError,
    ReplayTimeoutError,
    ReplayUnavailableError,
    SchemaMismatchError,
    ServerStartError,
)
from .keys import SCHEMA_VERSION, TABLES
from .sampler import WindowSampler
from .server import EmbeddedValkey

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "EmbeddedValkey",
    "EmptyReplayError",
    "Episode",
    "EpisodeInfo",
    "InvalidEpisodeError",
    "PortInUseError",
    "ReplayClient",
    "ReplayCollector",
    "ReplayError",
    "ReplayTimeoutError",
    "ReplayUnavailableError",
    "SchemaMismatchError",
    "ServerStartError",
    "WindowSampler",
]
