"""ReplayClient: writes episodes (items) into replay tables in Redis/Valkey and reads them back.

Every write of an episode is one Lua script (:mod:`.scripts`): all its keys, the table's
item index, priority, counters and tally change together or not at all; the table's rate
limiter may refuse it (the client then waits) and FIFO eviction past the table's capacity
happens in the same script. A retried write of the same episode id stores nothing twice.
Redis errors are translated at this edge into :mod:`fleetloop.replay.errors`.
"""

import logging
from collections import Counter as Tally
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from . import keys, scripts, stats
from .episode import Episode, EpisodeInfo, decode_floats, decode_frame, parse_info
from .errors import (
    InvalidEpisodeError,
    RateLimitedError,
    ReplayError,
    ReplayTimeoutError,
    ReplayUnavailableError,
    SchemaMismatchError,
    redact_url,
    translate_errors,
)
from .metrics import INSERT_REJECTS, INSERTS, ReplayCollector
from .rate_limiter import await_admission
from .selectors.interface import check_priority
from .table import TableConfig

__all__ = ["ReplayClient", "ReplayCollector", "redact_url", "translate_errors"]

logger = logging.getLogger(__name__)

_UPGRADE_SCHEMA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end
return 1
"""

_POLL_S = (0.002, 0.05)
"""First and longest pause between retries of a call the rate limiter refused."""

INDEX_CHUNK = 512
"""Episodes per read_index call."""


@dataclass(frozen=True)
class IndexChunk:
    """One consistent read of a table's index (ReplayClient.read_index)."""

    config: TableConfig
    oldest_seq: int | None
    """Insertion seq of the oldest stored episode (None when empty): every lower seq was evicted."""
    priority_version: int
    infos: list[EpisodeInfo]
    """Episodes inserted after the seq asked for, in order, all stored at the time of the read."""
    more: bool
    """More episodes follow ``infos[-1]``: read again after its seq."""


class ReplayClient:
    """Connection to a replay server; writes and reads episodes of named tables.

    Args:
        url: ``redis://[user:password@]host:port/db`` (or ``rediss://`` for TLS); ``user`` is an
            ACL user.
        socket_timeout: seconds to wait for any reply before ReplayTimeoutError.
        password: password, if not in the URL.
        tls_ca_file: ``rediss://``: PEM CA that verifies the server (required for TLS).
        tls_cert_file, tls_key_file: ``rediss://``: this client's certificate and key, for servers
            that authenticate clients (``tls-auth-clients yes``).
        connect_timeout: seconds to wait for a TCP connection (kept short so an
            unreachable server fails fast).
        tables: table name -> TableConfig (or its plain dict), stored on connect with
            :meth:`configure_table`; other tables keep their stored configuration.
        rate_limit_timeout_s: default seconds a write or sample waits on a rate limiter
            before RateLimitedError.

    Raises:
        ValueError: an invalid table name or table config.
        ReplayUnavailableError: the server cannot be reached.
        SchemaMismatchError: the server holds data of another SCHEMA_VERSION.
    """

    def __init__(
        self,
        url: str,
        socket_timeout: float = 10.0,
        password: str | None = None,
        connect_timeout: float = 1.0,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tables: Mapping[str, TableConfig | Mapping[str, Any]] | None = None,
        rate_limit_timeout_s: float = 60.0,
    ) -> None:
        configs = {
            keys.check_table(name): c if isinstance(c, TableConfig) else TableConfig.from_dict(c)
            for name, c in (tables or {}).items()
        }
        self.url = redact_url(url)
        self.rate_limit_timeout_s = rate_limit_timeout_s
        options = {"password": password} if password is not None else {}
        if url.startswith("rediss://"):
            if not tls_ca_file:
                raise ValueError(f"{redact_url(url)}: a rediss:// replay needs tls_ca_file to verify the server")
            options.update(ssl_ca_certs=tls_ca_file, ssl_certfile=tls_cert_file, ssl_keyfile=tls_key_file,
                           ssl_cert_reqs="required")
        elif tls_ca_file or tls_cert_file or tls_key_file:
            raise ValueError(f"{redact_url(url)}: TLS files given for a plain redis:// URL; use rediss://")
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(ExponentialBackoff(cap=0.25, base=0.05), retries=2),
            **options,
        )
        self._write_script = self._redis.register_script(scripts.WRITE_EPISODE)
        self._configure_script = self._redis.register_script(scripts.CONFIGURE_TABLE)
        self._read_index_script = self._redis.register_script(scripts.READ_INDEX)
        self._acquire_script = self._redis.register_script(scripts.ACQUIRE_SAMPLES)
        self._priorities_script = self._redis.register_script(scripts.UPDATE_PRIORITIES)
        with translate_errors(self.url, "schema check"):
            self._check_schema()
        for name, config in configs.items():
            self.configure_table(name, config)

    @property
    def redis(self) -> redis.Redis:
        """The underlying redis-py client (bytes replies); wrap calls in translate_errors."""
        return self._redis

    @property
    def shards(self) -> list["ReplayClient"]:
        """The servers this client spreads episodes over: just itself (see sharding.py)."""
        return [self]

    def shard_for(self, episode_id: str) -> "ReplayClient":
        """The client of the server that stores ``episode_id``: itself."""
        return self

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()

    def __enter__(self) -> "ReplayClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _check_schema(self) -> None:
        self._redis.set(keys.SCHEMA_VERSION_KEY, keys.SCHEMA_VERSION, nx=True)
        found = self._redis.get(keys.SCHEMA_VERSION_KEY)
        if found is not None and int(found) in keys.ADDITIVE_FROM:
            # Compare-and-set: a concurrent upgrade or an older client's marker is never overwritten blindly.
            self._redis.eval(_UPGRADE_SCHEMA, 1, keys.SCHEMA_VERSION_KEY, int(found), keys.SCHEMA_VERSION)
            logger.info("replay at %s: schema version %s upgraded to %d (additive)", self.url, found.decode(),
                        keys.SCHEMA_VERSION)
            found = self._redis.get(keys.SCHEMA_VERSION_KEY)
        if found is None or int(found) != keys.SCHEMA_VERSION:
            raise SchemaMismatchError(
                f"replay at {self.url} holds schema version {found.decode() if found else None}"
                f", this fleetloop reads and writes schema version {keys.SCHEMA_VERSION}; "
                "use a matching fleetloop or a fresh server/data dir"
            )

    # ---- table configuration ------------------------------------------------------------

    def configure_table(self, table: str, config: TableConfig | Mapping[str, Any]) -> int:
        """Store ``config`` as the table's configuration (replacing any earlier one); if the
        table now holds more than ``capacity`` episodes, evict the oldest.

        Returns:
            Number of episodes evicted.

        Raises:
            ValueError: invalid table name or config.
        """
        if not isinstance(config, TableConfig):
            config = TableConfig.from_dict(config)
        pairs = [v for item in config.to_fields().items() for v in item]
        table_keys = [keys.table_key(table, kind) for kind in scripts.TABLE_SCRIPT_KEYS]
        with translate_errors(self.url, f"configure table {table!r}"):
            evicted = self._configure_script(
                keys=[*table_keys, keys.TABLES_KEY], args=[table, *pairs]
            )
        logger.info("table %r configured: %s (%d evicted)", table, config, evicted)
        return int(evicted)

    def table_config(self, table: str) -> TableConfig:
        """The table's stored configuration (``TableConfig()`` if never configured)."""
        with translate_errors(self.url, f"read config of {table!r}"):
            stored = self._redis.hgetall(keys.table_key(table, "config"))
        return TableConfig.from_fields({k.decode(): v.decode() for k, v in stored.items()})

    def read_index(self, table: str, after_seq: int = 0, limit: int = INDEX_CHUNK) -> IndexChunk:
        """What a sampler needs to refresh its index of ``table``: one atomic read of the table's
        config, oldest seq and priority version and of the first ``limit`` episodes inserted
        after ``after_seq``."""
        table_keys = [keys.table_key(table, kind) for kind in scripts.INDEX_SCRIPT_KEYS]
        with translate_errors(self.url, f"read index of {table!r}"):
            stored, oldest, version, more, *rows = self._read_index_script(
                keys=table_keys, args=[int(after_seq), int(limit)])
        config = TableConfig.from_fields(
            {k.decode(): v.decode() for k, v in zip(stored[::2], stored[1::2])})
        return IndexChunk(config, int(oldest) if oldest else None, int(version),
                          [parse_info(raw) for raw in rows], bool(more))

    # ---- writes -------------------------------------------------------------------------

    def write_episode(
        self, table: str, episode: Episode, priority: float = 1.0, timeout_s: float | None = None
    ) -> str:
        """Store ``episode`` as a new item of ``table``, atomically.

        Writing an episode id that is already stored, or was evicted from ``table`` within its
        ``evicted_id_ttl_s``, changes nothing (a retried write never duplicates) and returns the id. If the table's rate limiter refuses the insert, the
        call waits until it admits it; past ``capacity`` the oldest episode is evicted.

        Args:
            table: table name.
            episode: the item.
            priority: initial sampling priority (finite, >= 0).
            timeout_s: longest wait on the rate limiter (default: rate_limit_timeout_s).

        Returns:
            The episode id.

        Raises:
            ValueError: invalid table name or priority.
            InvalidEpisodeError: the episode failed validation; nothing was stored.
            RateLimitedError: the rate limiter refused the insert until the timeout.
            ReplayTimeoutError, ReplayUnavailableError: the write may or may not have been
                applied; retrying with the same episode is safe.
        """
        keys.check_table(table)
        priority = check_priority(episode.episode_id, priority)
        try:
            episode.validate()
        except InvalidEpisodeError:
            INSERT_REJECTS.labels(reason="invalid").inc()
            raise
        script_keys, args, nbytes = scripts.write_episode_request(table, episode, priority)
        eid = episode.episode_id
        try:
            with translate_errors(self.url, f"write episode {eid} to table {table!r}"):
                reply = self._until_admitted(
                    lambda: self._write_script(keys=script_keys, args=args), "insert", timeout_s
                )
        except RateLimitedError:
            INSERT_REJECTS.labels(reason="rate_limited").inc()
            raise
        except ReplayTimeoutError:
            INSERT_REJECTS.labels(reason="timeout").inc()
            raise
        except ReplayUnavailableError:
            INSERT_REJECTS.labels(reason="unavailable").inc()
            raise
        except ReplayError:
            INSERT_REJECTS.labels(reason="error").inc()
            raise
        outcome, stored_table, seq = reply
        if outcome == scripts.WRITE_STORED:
            INSERTS.labels(table=table).inc()
            logger.debug("stored episode %s in %s (seq %d, %d bytes)", eid, table, seq, nbytes)
        elif outcome == scripts.WRITE_EVICTED:
            INSERT_REJECTS.labels(reason="evicted").inc()
            logger.info("episode %s was stored in %r and evicted since; not storing it again", eid, table)
        else:
            INSERT_REJECTS.labels(reason="duplicate").inc()
            stored_table = stored_table.decode()
            if stored_table != table:
                logger.warning(
                    "episode %s already stored in table %r (seq %d); not writing it to %r",
                    eid, stored_table, seq, table,
                )
        return eid

    def acquire_samples(self, counts: Mapping[str, int], timeout_s: float | None = None) -> None:
        """Count ``counts[table]`` samples of each table, once every table's rate limiter
        admits them (all or none); samplers call this before reading windows.

        Raises:
            RateLimitedError: some table's limiter refused until the timeout.
        """
        tables = [t for t, n in counts.items() if n > 0]
        if not tables:
            return
        script_keys = [
            key for t in tables for key in (keys.table_key(t, "config"), keys.table_counters(t))
        ]
        args = [v for t in tables for v in (t, int(counts[t]))]
        with translate_errors(self.url, f"acquire samples {dict(counts)}"):
            self._until_admitted(
                lambda: self._acquire_script(keys=script_keys, args=args), "sample", timeout_s
            )

    def update_priorities(self, table: str, priorities: Mapping[str, float]) -> int:
        """Set the sampling priority of stored episodes of ``table``; ids no longer stored
        (evicted) are ignored. Samplers see the change at their next index refresh.

        Returns:
            Number of episodes updated.

        Raises:
            ValueError: invalid table name, or a negative or non-finite priority.
        """
        args = [v for eid, p in priorities.items() for v in (eid, check_priority(eid, p))]
        if not args:
            return 0
        script_keys = [keys.table_key(table, "priorities"), keys.table_counters(table)]
        with translate_errors(self.url, f"update {len(priorities)} priorities of {table!r}"):
            return int(self._priorities_script(keys=script_keys, args=args))

    def priorities(self, table: str, episode_ids: list[str] | None = None) -> dict[str, float]:
        """Priorities of the table's stored episodes (all, or those of ``episode_ids`` that
        are still stored)."""
        key = keys.table_key(table, "priorities")
        with translate_errors(self.url, f"read priorities of {table!r}"):
            if episode_ids is None:
                return {m.decode(): s for m, s in self._redis.zrange(key, 0, -1, withscores=True)}
            if not episode_ids:
                return {}
            scores = self._redis.zmscore(key, episode_ids)
        return {eid: s for eid, s in zip(episode_ids, scores) if s is not None}

    def _until_admitted(
        self, call: Callable[[], list], action: str, timeout_s: float | None
    ) -> list:
        """Run a script (``action``: "insert" or "sample") until the rate limiter admits it.

        Raises:
            RateLimitedError: still refused after ``timeout_s`` (default
                rate_limit_timeout_s); names the table, the limiter and the counts.
        """
        timeout_s = self.rate_limit_timeout_s if timeout_s is None else timeout_s
        admitted, reply = await_admission(
            call, lambda r: r[0] == scripts.REFUSED, timeout_s, _POLL_S
        )
        if admitted:
            return reply
        table = reply[1].decode()
        inserts, samples, size, wanted = (int(v) for v in reply[2:6])
        what = "an insert" if action == "insert" else f"a sample of {wanted} windows"
        limiter = self.table_config(table).rate_limiter()
        ratio = f"{samples / inserts:.2f}" if inserts else "n/a"
        raise RateLimitedError(
            f"rate limiter of table {table!r} at {self.url} kept {what} waiting {timeout_s:g} s "
            f"({limiter.describe() if limiter else 'no limiter'}): inserts={inserts}, "
            f"samples={samples}, size={size}, samples per insert so far {ratio}; raise the "
            "timeout or the error_buffer, or check that writers and samplers both run"
        )

    # ---- reads --------------------------------------------------------------------------

    def read_episode(self, episode_id: str) -> Episode:
        """Read a stored episode back in full.

        Raises:
            KeyError: no episode with that id.
        """
        with translate_errors(self.url, f"read episode {episode_id}"):
            raw = self._redis.hmget(keys.episode_key(episode_id, "meta"), keys.META_FIELDS)
            if raw[0] is None:
                raise KeyError(f"no episode {episode_id!r} in the replay at {self.url}")
            info = parse_info(raw)
            pipe = self._redis.pipeline(transaction=False)
            for name in keys.EPISODE_ARRAYS:
                pipe.get(keys.episode_key(episode_id, name))
            for step in info.frame_steps:
                pipe.get(keys.frame_key(episode_id, step))
            state, action, intervened, reward, label, *frames = pipe.execute()
        length = info.length
        horizon = info.label_horizon
        return Episode(
            states=decode_floats(state, (length, info.state_dim)),
            actions=decode_floats(action, (length, info.action_dim)),
            frames={s: decode_frame(f, info, s) for s, f in zip(info.frame_steps, frames)},
            instruction=info.instruction,
            embodiment=info.embodiment,
            source=info.source,
            policy_version=info.policy_version,
            actor_id=info.actor_id,
            intervened=np.frombuffer(intervened, keys.FLAG_DTYPE).astype(bool),
            rewards=decode_floats(reward, (length,)),
            success=info.success,
            episode_id=info.episode_id,
            labels=decode_floats(label, (length, horizon, info.action_dim)) if horizon else None,
            version_changes=info.version_changes,
        )

    def episode_ids(self, table: str) -> list[str]:
        """Ids of the table's episodes in insertion order."""
        with translate_errors(self.url, f"list episodes of {table!r}"):
            return [m.decode() for m in self._redis.zrange(keys.table_items(table), 0, -1)]

    def episode_infos(self, table: str, after_seq: int = 0) -> list[EpisodeInfo]:
        """Summaries of the table's episodes inserted after sequence ``after_seq``, in order
        (read INDEX_CHUNK at a time)."""
        infos = []
        while True:
            chunk = self.read_index(table, after_seq)
            infos += chunk.infos
            if not chunk.more:
                return infos
            after_seq = chunk.infos[-1].seq

    def tables(self) -> list[str]:
        """The standard TABLES plus every other table ever written to, sorted after them."""
        with translate_errors(self.url, "list tables"):
            written = {m.decode() for m in self._redis.smembers(keys.TABLES_KEY)}
        return list(keys.TABLES) + sorted(written - set(keys.TABLES))

    def table_stats(self, detailed: bool = False) -> dict[str, dict[str, Any]]:
        """Per table (see :meth:`tables`): what it stores now.

        Args:
            detailed: add the insert/eviction/sample counts and per-value episode counts.

        Returns:
            table -> ``{"episodes", "steps", "bytes"}``; with ``detailed`` also
            ``"inserts"`` (ever), ``"evicted"``, ``"samples"`` (windows, ever),
            ``"sources"``, ``"embodiments"`` (value -> stored episodes),
            ``"policy_versions"`` (version -> stored episodes, ascending) and
            ``"policy_version_min"``/``"policy_version_max"`` (None when empty).
        """
        tables = self.tables()
        with translate_errors(self.url, "read table counters"):
            pipe = self._redis.pipeline(transaction=False)
            for table in tables:
                pipe.hmget(keys.table_counters(table), keys.COUNTER_FIELDS)
                if detailed:
                    pipe.hgetall(keys.table_key(table, "tally"))
            replies = pipe.execute()
        step = 2 if detailed else 1
        return {
            table: stats.stats_row(replies[i * step], replies[i * step + 1] if detailed else None)
            for i, table in enumerate(tables)
        }

    def count_by(self, table: str, field: str) -> dict[object, int]:
        """Count the table's episodes by an EpisodeInfo field, e.g. ``"source"`` or
        ``"policy_version"``.

        Raises:
            ValueError: ``field`` is not an EpisodeInfo field.
        """
        if field not in EpisodeInfo.__dataclass_fields__:
            raise ValueError(
                f"count_by field {field!r} is not one of {sorted(EpisodeInfo.__dataclass_fields__)}"
            )
        return dict(Tally(getattr(info, field) for info in self.episode_infos(table)))

    def compute_stats(self, table: str, embodiment: str) -> dict[str, np.ndarray]:
        """Per-dimension bounds of states and actions (labels included) over every step of the
        table's episodes of ``embodiment`` (for normalisation).

        Returns:
            ``state_min``, ``state_max`` (S,), ``action_min``, ``action_max`` (A,), float32, and
            the spread of per-episode means and the largest within-episode range of each dim
            (``stats.BOUNDS``).

        Raises:
            EmptyReplayError: the table has no episode of that embodiment.
            ReplayError: episodes of that embodiment disagree on state/action dims.
        """
        return stats.compute_bounds(self, table, embodiment)
