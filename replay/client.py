"""ReplayClient: writes episodes (items) into replay tables in Redis/Valkey and reads them back.

Every write of an episode is one Lua script: all its keys, the table's item index and the
table counters change together or not at all, and a retried write of the same episode id
stores nothing twice. Redis errors are translated at this edge into
:mod:`fleetloop.replay.errors`.
"""

import io
import json
import logging
import time
from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis
from PIL import Image
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from . import keys
from .episode import Episode, EpisodeInfo
from .errors import (
    EmptyReplayError,
    InvalidEpisodeError,
    ReplayError,
    ReplayTimeoutError,
    ReplayUnavailableError,
    SchemaMismatchError,
)

logger = logging.getLogger(__name__)

INSERTS = Counter("fleetloop_replay_inserts", "Episodes stored into a replay table.", ["table"])
SAMPLES = Counter("fleetloop_replay_samples", "Windows sampled from a replay table.", ["table"])
INSERT_REJECTS = Counter(
    "fleetloop_replay_insert_rejects",
    "Episode writes that stored nothing (invalid, duplicate, timeout, unavailable, error).",
    ["reason"],
)

PNG_COMPRESS_LEVEL = 1
"""zlib level for frame PNGs: fast to encode on actors, still lossless."""
_PIPELINE_CHUNK = 512
"""Max episodes per pipelined round trip when scanning a table."""

# KEYS: meta, state, action, intervened, reward, items, counters, tables, frame keys...
# ARGV: table, episode_id, length, nbytes, state, action, intervened, reward,
#       n_meta_pairs, meta field/value pairs..., frame PNGs (same order as frame KEYS)...
# Returns {created (1/0), table, seq}. "#!lua" without flags: refused up front when the
# server is out of memory, so a write never stops half way.
_WRITE_EPISODE_LUA = """#!lua
local meta = KEYS[1]
if redis.call('EXISTS', meta) == 1 then
  local found = redis.call('HMGET', meta, 'table', 'seq')
  return {0, found[1], tonumber(found[2])}
end
local table_name, episode_id = ARGV[1], ARGV[2]
local seq = redis.call('HINCRBY', KEYS[7], 'seq', 1)
for i = 2, 5 do
  redis.call('SET', KEYS[i], ARGV[i + 3])
end
local n_meta = tonumber(ARGV[9])
local fields = {'seq', seq}
for i = 10, 9 + 2 * n_meta do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', meta, unpack(fields))
local first_frame_arg = 10 + 2 * n_meta
for i = 9, #KEYS do
  redis.call('SET', KEYS[i], ARGV[first_frame_arg + i - 9])
end
redis.call('ZADD', KEYS[6], seq, episode_id)
redis.call('HINCRBY', KEYS[7], 'episodes', 1)
redis.call('HINCRBY', KEYS[7], 'steps', tonumber(ARGV[3]))
redis.call('HINCRBY', KEYS[7], 'bytes', tonumber(ARGV[4]))
redis.call('SADD', KEYS[8], table_name)
return {1, table_name, seq}
"""


def redact_url(url: str) -> str:
    """Return ``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def translate_errors(url: str, what: str) -> Iterator[None]:
    """Re-raise Redis errors raised inside the block as replay errors naming ``url``.

    Raises:
        ReplayTimeoutError: the server did not answer within the socket timeout.
        ReplayUnavailableError: connection refused/reset, unknown host, bad credentials, or
            not a Redis server.
        ReplayError: any other Redis error.
    """
    try:
        yield
    except redis.TimeoutError as exc:
        raise ReplayTimeoutError(
            f"replay at {url} did not answer ({what}) within the socket timeout: {exc}; "
            "the server may be overloaded or paused, retry or raise socket_timeout"
        ) from exc
    except redis.ConnectionError as exc:
        raise ReplayUnavailableError(
            f"cannot reach the replay at {url} ({what}): {str(exc).rstrip('.')}. Check that "
            "the Redis/Valkey server is running and the URL and password are right, or leave "
            "the replay URL unset to use the embedded server"
        ) from exc
    except redis.InvalidResponse as exc:
        raise ReplayUnavailableError(
            f"the server at {url} ({what}) does not speak the Redis protocol: {exc}. "
            "Check the host and port of the replay URL"
        ) from exc
    except redis.RedisError as exc:
        raise ReplayError(f"replay at {url} failed ({what}): {exc}") from exc


class ReplayClient:
    """Connection to a replay server; writes and reads episodes of named tables.

    Args:
        url: ``redis://[user:password@]host:port/db`` (or ``rediss://`` for TLS).
        socket_timeout: seconds to wait for any reply before ReplayTimeoutError.
        password: password, if not in the URL.
        connect_timeout: seconds to wait for a TCP connection (kept short so an
            unreachable server fails fast).

    Raises:
        ReplayUnavailableError: the server cannot be reached.
        SchemaMismatchError: the server holds data of another SCHEMA_VERSION.
    """

    def __init__(
        self,
        url: str,
        socket_timeout: float = 10.0,
        password: str | None = None,
        connect_timeout: float = 1.0,
    ) -> None:
        self.url = redact_url(url)
        options = {"password": password} if password is not None else {}
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(ExponentialBackoff(cap=0.25, base=0.05), retries=2),
            **options,
        )
        self._write_script = self._redis.register_script(_WRITE_EPISODE_LUA)
        with translate_errors(self.url, "schema check"):
            self._check_schema()

    @property
    def redis(self) -> redis.Redis:
        """The underlying redis-py client (bytes replies); wrap calls in translate_errors."""
        return self._redis

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
        if found is None or int(found) != keys.SCHEMA_VERSION:
            raise SchemaMismatchError(
                f"replay at {self.url} holds schema version {found.decode() if found else None}"
                f", this fleetloop reads and writes schema version {keys.SCHEMA_VERSION}; "
                "use a matching fleetloop or a fresh server/data dir"
            )

    # ---- writes -------------------------------------------------------------------------

    def write_episode(self, table: str, episode: Episode) -> str:
        """Store ``episode`` as a new item of ``table``, atomically.

        Writing an episode id that is already stored changes nothing (a retried write never
        duplicates) and returns the id.

        Returns:
            The episode id.

        Raises:
            ValueError: invalid table name.
            InvalidEpisodeError: the episode failed validation; nothing was stored.
            ReplayTimeoutError, ReplayUnavailableError: the write may or may not have been
                applied; retrying with the same episode is safe.
        """
        keys.check_table(table)
        try:
            episode.validate()
        except InvalidEpisodeError:
            INSERT_REJECTS.labels(reason="invalid").inc()
            raise
        steps = sorted(int(s) for s in episode.frames)
        frames = [_encode_png(episode.frames[s]) for s in steps]
        arrays = [
            np.ascontiguousarray(episode.states, keys.FLOAT_DTYPE).tobytes(),
            np.ascontiguousarray(episode.actions, keys.FLOAT_DTYPE).tobytes(),
            np.ascontiguousarray(episode.intervened, keys.FLAG_DTYPE).tobytes(),
            np.ascontiguousarray(episode.rewards, keys.FLOAT_DTYPE).tobytes(),
        ]
        nbytes = sum(map(len, arrays)) + sum(map(len, frames))
        height, width, _ = episode.frames[0].shape
        meta = {
            "schema_version": keys.SCHEMA_VERSION,
            "episode_id": episode.episode_id,
            "table": table,
            "length": episode.length,
            "state_dim": episode.states.shape[1],
            "action_dim": episode.actions.shape[1],
            "frame_steps": json.dumps(steps),
            "frame_height": height,
            "frame_width": width,
            "instruction": episode.instruction,
            "embodiment": episode.embodiment,
            "source": episode.source,
            "policy_version": int(episode.policy_version),
            "actor_id": episode.actor_id,
            "success": int(bool(episode.success)),
            "nbytes": nbytes,
            "created_at": f"{time.time():.6f}",
        }
        eid = episode.episode_id
        script_keys = [keys.episode_key(eid, "meta")]
        script_keys += [keys.episode_key(eid, name) for name in keys.EPISODE_ARRAYS]
        script_keys += [keys.table_items(table), keys.table_counters(table), keys.TABLES_KEY]
        script_keys += [keys.frame_key(eid, s) for s in steps]
        args = [table, eid, episode.length, nbytes, *arrays, len(meta)]
        for name, value in meta.items():
            args += [name, value]
        args += frames
        try:
            with translate_errors(self.url, f"write episode {eid} to table {table!r}"):
                created, stored_table, seq = self._write_script(keys=script_keys, args=args)
        except ReplayTimeoutError:
            INSERT_REJECTS.labels(reason="timeout").inc()
            raise
        except ReplayUnavailableError:
            INSERT_REJECTS.labels(reason="unavailable").inc()
            raise
        except ReplayError:
            INSERT_REJECTS.labels(reason="error").inc()
            raise
        if created:
            INSERTS.labels(table=table).inc()
            logger.debug("stored episode %s in %s (seq %d, %d bytes)", eid, table, seq, nbytes)
        else:
            INSERT_REJECTS.labels(reason="duplicate").inc()
            stored_table = stored_table.decode()
            if stored_table != table:
                logger.warning(
                    "episode %s already stored in table %r (seq %d); not writing it to %r",
                    eid, stored_table, seq, table,
                )
        return eid

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
            info = _parse_info(raw)
            pipe = self._redis.pipeline(transaction=False)
            for name in keys.EPISODE_ARRAYS:
                pipe.get(keys.episode_key(episode_id, name))
            for step in info.frame_steps:
                pipe.get(keys.frame_key(episode_id, step))
            state, action, intervened, reward, *frames = pipe.execute()
        length = info.length
        return Episode(
            states=_decode_floats(state, (length, info.state_dim)),
            actions=_decode_floats(action, (length, info.action_dim)),
            frames={s: decode_png(f) for s, f in zip(info.frame_steps, frames)},
            instruction=info.instruction,
            embodiment=info.embodiment,
            source=info.source,
            policy_version=info.policy_version,
            actor_id=info.actor_id,
            intervened=np.frombuffer(intervened, keys.FLAG_DTYPE).astype(bool),
            rewards=_decode_floats(reward, (length,)),
            success=info.success,
            episode_id=info.episode_id,
        )

    def episode_ids(self, table: str) -> list[str]:
        """Ids of the table's episodes in insertion order."""
        with translate_errors(self.url, f"list episodes of {table!r}"):
            return [m.decode() for m in self._redis.zrange(keys.table_items(table), 0, -1)]

    def episode_infos(self, table: str, after_seq: int = 0) -> list[EpisodeInfo]:
        """Summaries of the table's episodes inserted after sequence ``after_seq``, in order.

        Samplers pass the last seq they have seen to fetch only new episodes.
        """
        with translate_errors(self.url, f"scan episodes of {table!r}"):
            ids = self._redis.zrangebyscore(keys.table_items(table), f"({after_seq}", "+inf")
            infos = []
            for start in range(0, len(ids), _PIPELINE_CHUNK):
                pipe = self._redis.pipeline(transaction=False)
                for eid in ids[start:start + _PIPELINE_CHUNK]:
                    pipe.hmget(keys.episode_key(eid.decode(), "meta"), keys.META_FIELDS)
                infos += [_parse_info(raw) for raw in pipe.execute() if raw[0] is not None]
        return infos

    def tables(self) -> list[str]:
        """The standard TABLES plus every other table ever written to, sorted after them."""
        with translate_errors(self.url, "list tables"):
            written = {m.decode() for m in self._redis.smembers(keys.TABLES_KEY)}
        return list(keys.TABLES) + sorted(written - set(keys.TABLES))

    def table_stats(self) -> dict[str, dict[str, int]]:
        """Per table (see :meth:`tables`): ``{"episodes", "steps", "bytes"}`` counts."""
        tables = self.tables()
        with translate_errors(self.url, "read table counters"):
            pipe = self._redis.pipeline(transaction=False)
            for table in tables:
                pipe.hmget(keys.table_counters(table), ["episodes", "steps", "bytes"])
            rows = pipe.execute()
        return {
            table: {
                name: int(value or 0) for name, value in zip(("episodes", "steps", "bytes"), row)
            }
            for table, row in zip(tables, rows)
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
        """Per-dimension min/max of states and actions over every step of the table's
        episodes of ``embodiment`` (for normalisation).

        Returns:
            ``state_min``, ``state_max`` (S,), ``action_min``, ``action_max`` (A,), float32.

        Raises:
            EmptyReplayError: the table has no episode of that embodiment.
            ReplayError: episodes of that embodiment disagree on state/action dims.
        """
        infos = [i for i in self.episode_infos(table) if i.embodiment == embodiment]
        if not infos:
            raise EmptyReplayError(
                f"table {table!r} at {self.url} has no episode of embodiment {embodiment!r}"
            )
        dims = {(i.state_dim, i.action_dim) for i in infos}
        if len(dims) > 1:
            raise ReplayError(
                f"episodes of embodiment {embodiment!r} in table {table!r} have different "
                f"(state_dim, action_dim): {sorted(dims)}"
            )
        bounds: dict[str, np.ndarray] = {}
        for start in range(0, len(infos), _PIPELINE_CHUNK):
            chunk = infos[start:start + _PIPELINE_CHUNK]
            with translate_errors(self.url, f"read arrays of {table!r}"):
                pipe = self._redis.pipeline(transaction=False)
                for info in chunk:
                    pipe.get(keys.episode_key(info.episode_id, "state"))
                    pipe.get(keys.episode_key(info.episode_id, "action"))
                raw = pipe.execute()
            for i, info in enumerate(chunk):
                for name, blob, dim in (
                    ("state", raw[2 * i], info.state_dim),
                    ("action", raw[2 * i + 1], info.action_dim),
                ):
                    rows = _decode_floats(blob, (info.length, dim))
                    lo, hi = rows.min(axis=0), rows.max(axis=0)
                    if f"{name}_min" in bounds:
                        lo = np.minimum(bounds[f"{name}_min"], lo)
                        hi = np.maximum(bounds[f"{name}_max"], hi)
                    bounds[f"{name}_min"], bounds[f"{name}_max"] = lo, hi
        return {k: bounds[k] for k in ("state_min", "state_max", "action_min", "action_max")}


class ReplayCollector:
    """Prometheus collector reading per-table counters from the replay at scrape time.

    Register it yourself: ``prometheus_client.REGISTRY.register(ReplayCollector(client))``.
    Exposes ``fleetloop_replay_episodes{table}``, ``fleetloop_replay_steps{table}`` and
    ``fleetloop_replay_up`` (0 when the server could not be read).
    """

    def __init__(self, client: ReplayClient) -> None:
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


def decode_png(blob: bytes) -> np.ndarray:
    """Decode a stored frame into a uint8 (h, w, 3) array."""
    with Image.open(io.BytesIO(blob)) as image:
        return np.asarray(image.convert("RGB"))


def _encode_png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(
        buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    return buf.getvalue()


def _decode_floats(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(blob, keys.FLOAT_DTYPE).astype(np.float32).reshape(shape)


def _parse_info(raw: list[bytes | None]) -> EpisodeInfo:
    meta = {name: (value or b"").decode() for name, value in zip(keys.META_FIELDS, raw)}
    return EpisodeInfo(
        episode_id=meta["episode_id"],
        table=meta["table"],
        seq=int(meta["seq"]),
        length=int(meta["length"]),
        state_dim=int(meta["state_dim"]),
        action_dim=int(meta["action_dim"]),
        frame_steps=tuple(json.loads(meta["frame_steps"])),
        frame_shape=(int(meta["frame_height"]), int(meta["frame_width"]), 3),
        instruction=meta["instruction"],
        embodiment=meta["embodiment"],
        source=meta["source"],
        policy_version=int(meta["policy_version"]),
        actor_id=meta["actor_id"],
        success=meta["success"] == "1",
        nbytes=int(meta["nbytes"]),
    )
