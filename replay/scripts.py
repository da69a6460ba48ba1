"""Server-side Lua of the replay: every change to a table is one atomic script.

- :data:`WRITE_EPISODE`: idempotent insert of an episode (all keys, item index, priority,
  counters, tally), refused while the table's rate limiter blocks inserts, followed by FIFO
  eviction past the table's capacity (the *remover*). Evicted ids are remembered for the
  table's ``evicted_id_ttl_s``; a write of one stores nothing, so a write retried after
  its episode was evicted is still idempotent.
- :data:`CONFIGURE_TABLE`: replace the table's config hash, then evict past the new
  capacity.
- :data:`ACQUIRE_SAMPLES`: admit ``n`` samples of each given table if every table's rate
  limiter allows it, and count them; otherwise change nothing.
- :data:`READ_INDEX` (read only): a table's config, oldest seq and priority version, and the
  meta of up to ``limit`` episodes inserted after a seq: one consistent view per call, so a
  sampler's index never misses episodes the table holds.
- :data:`READ_WINDOWS` (read only): the state row, action rows and frame of a batch of
  windows in one command.
- :data:`UPDATE_PRIORITIES`: set the priority of stored episodes, ignoring ids no longer
  stored, and bump ``priority_version`` so samplers reload.

A script refused by a rate limiter replies ``{-1, table, inserts, samples, size, wanted}``
(:data:`REFUSED`) and changes nothing; the client retries it (rate_limiter.await_admission).

Eviction touches the keys of the evicted episode without declaring them in KEYS; standalone
Redis/Valkey allows this, Redis Cluster does not (the replay shards client-side instead, see
:mod:`.sharding`).
"""

import json
import time

import numpy as np

from . import keys
from .episode import Episode, encode_png
from .rate_limiter import RATE_LIMITER_LUA
from .table import TableConfig

_HELPERS_LUA = """
local EPISODE_KEY_PREFIX = '%(prefix)s'
local EPISODE_ARRAYS = {%(arrays)s}
local TALLY_FIELDS = {%(tally)s}
local function episode_key(id, field) return EPISODE_KEY_PREFIX .. id .. '}:' .. field end
local function counts(counters)
  local c = redis.call('HMGET', counters, 'episodes', 'seq', 'samples')
  return tonumber(c[1] or 0), tonumber(c[2] or 0), tonumber(c[3] or 0)
end
local function tally_episode(tally, meta, delta)
  local values = redis.call('HMGET', meta, unpack(TALLY_FIELDS))
  for i, name in ipairs(TALLY_FIELDS) do
    local field = name .. ':' .. values[i]
    if redis.call('HINCRBY', tally, field, delta) <= 0 then redis.call('HDEL', tally, field) end
  end
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Forget ids evicted longer than the table's evicted_id_ttl_s ago; returns now and the TTL (ms).
local function expire_evicted(config, evicted)
  local ttl_ms = 1000 * tonumber(redis.call('HGET', config, 'evicted_id_ttl_s') or '%(ttl)r')
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', evicted, '-inf', '(' .. (now - ttl_ms))
  return now, ttl_ms
end
-- now, ttl_ms: expire_evicted's reply, which the caller got first.
local function evict_past_capacity(config, items, counters, priorities, tally, evicted, now, ttl_ms)
  local capacity = tonumber(redis.call('HGET', config, 'capacity') or '')
  local n = 0
  if not capacity then return 0 end
  while redis.call('ZCARD', items) > capacity do
    local oldest = redis.call('ZPOPMIN', items)[1]
    local meta = episode_key(oldest, 'meta')
    local m = redis.call('HMGET', meta, 'length', 'nbytes', 'frame_steps')
    tally_episode(tally, meta, -1)
    local doomed = {meta}
    for _, field in ipairs(EPISODE_ARRAYS) do doomed[#doomed + 1] = episode_key(oldest, field) end
    for _, step in ipairs(cjson.decode(m[3])) do
      doomed[#doomed + 1] = episode_key(oldest, 'frame:' .. step)
    end
    redis.call('DEL', unpack(doomed))
    redis.call('ZREM', priorities, oldest)
    if ttl_ms > 0 then redis.call('ZADD', evicted, now, oldest) end
    redis.call('HINCRBY', counters, 'episodes', -1)
    redis.call('HINCRBY', counters, 'steps', -tonumber(m[1]))
    redis.call('HINCRBY', counters, 'bytes', -tonumber(m[2]))
    redis.call('HINCRBY', counters, 'evicted', 1)
    n = n + 1
  end
  return n
end
""" % {
    "prefix": keys.EPISODE_KEY_PREFIX,
    "arrays": ", ".join(f"'{name}'" for name in keys.EPISODE_ARRAYS),
    "tally": ", ".join(f"'{name}'" for name in keys.TALLY_FIELDS),
    "ttl": TableConfig.evicted_id_ttl_s,
}

# "#!lua" without flags: a script is refused up front when the server is out of memory, so
# a write never stops half way.
_PREAMBLE = "#!lua\n" + RATE_LIMITER_LUA + _HELPERS_LUA

REFUSED = -1
"""First element of a reply refused by a rate limiter."""
WRITE_STORED, WRITE_EVICTED = 1, 2
"""First element of WRITE_EPISODE's reply when it stored the episode, and when it stored nothing
because the id was evicted within evicted_id_ttl_s (0: already stored)."""

WRITE_EPISODE_KEYS: tuple[str, ...] = (
    "meta", *keys.EPISODE_ARRAYS, "items", "counters", "tables", "config", "priorities",
    "tally", "evicted",
)
"""KEYS of WRITE_EPISODE, followed by one frame key per stored frame."""

WRITE_EPISODE = _PREAMBLE + """
-- ARGV: table, episode_id, length, nbytes, state, action, intervened, reward, label, priority,
--       n_meta, meta field/value pairs..., frame PNGs (same order as the frame KEYS)...
-- Returns {1, table, seq} stored; {0, table, seq} already stored (nothing written);
-- {2, table, 0} evicted within evicted_id_ttl_s (nothing written);
-- {-1, table, inserts, samples, size, 1} refused by the rate limiter (nothing written).
local meta, items, counters, tables, config, priorities, tally, evicted =
  KEYS[1], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13]
if redis.call('EXISTS', meta) == 1 then
  local found = redis.call('HMGET', meta, 'table', 'seq')
  return {0, found[1], tonumber(found[2])}
end
local table_name, episode_id = ARGV[1], ARGV[2]
local now, ttl_ms = expire_evicted(config, evicted)
if redis.call('ZSCORE', evicted, episode_id) then
  return {2, table_name, 0}
end
local size, inserts, samples = counts(counters)
if not can_insert(rate_limiter(config), size, inserts, samples, 1) then
  return {-1, table_name, tostring(inserts), tostring(samples), tostring(size), 1}
end
local seq = redis.call('HINCRBY', counters, 'seq', 1)
for i = 2, 6 do
  if ARGV[i + 3] ~= '' then redis.call('SET', KEYS[i], ARGV[i + 3]) end
end
local n_meta = tonumber(ARGV[11])
local fields = {'seq', seq}
for i = 12, 11 + 2 * n_meta do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', meta, unpack(fields))
local first_frame_arg = 12 + 2 * n_meta
for i = 14, #KEYS do
  redis.call('SET', KEYS[i], ARGV[first_frame_arg + i - 14])
end
redis.call('ZADD', items, seq, episode_id)
redis.call('ZADD', priorities, ARGV[10], episode_id)
redis.call('HINCRBY', counters, 'episodes', 1)
redis.call('HINCRBY', counters, 'steps', tonumber(ARGV[3]))
redis.call('HINCRBY', counters, 'bytes', tonumber(ARGV[4]))
tally_episode(tally, meta, 1)
redis.call('SADD', tables, table_name)
evict_past_capacity(config, items, counters, priorities, tally, evicted, now, ttl_ms)
return {1, table_name, seq}
"""

TABLE_SCRIPT_KEYS: tuple[str, ...] = ("config", "items", "counters", "priorities", "tally", "evicted")
"""KEYS of CONFIGURE_TABLE (then the tables set)."""

CONFIGURE_TABLE = _PREAMBLE + """
-- ARGV: table, config field/value pairs... Returns the number of episodes evicted.
redis.call('DEL', KEYS[1])
if #ARGV > 1 then redis.call('HSET', KEYS[1], unpack(ARGV, 2)) end
redis.call('SADD', KEYS[7], ARGV[1])
local now, ttl_ms = expire_evicted(KEYS[1], KEYS[6])
return evict_past_capacity(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], now, ttl_ms)
"""

ACQUIRE_SAMPLES = _PREAMBLE + """
-- KEYS: config, counters of each table; ARGV: table name, samples wanted, of each table.
-- Returns {1} admitted and counted, or {-1, table, inserts, samples, size, wanted} for the
-- first table whose rate limiter refuses (nothing counted).
for i = 1, #KEYS / 2 do
  local wanted = tonumber(ARGV[2 * i])
  local size, inserts, samples = counts(KEYS[2 * i])
  if not can_sample(rate_limiter(KEYS[2 * i - 1]), size, inserts, samples, wanted) then
    return {-1, ARGV[2 * i - 1], tostring(inserts), tostring(samples), tostring(size), wanted}
  end
end
for i = 1, #KEYS / 2 do
  redis.call('HINCRBY', KEYS[2 * i], 'samples', tonumber(ARGV[2 * i]))
end
return {1}
"""

UPDATE_PRIORITIES = """#!lua
-- KEYS: priorities, counters; ARGV: id, priority, id, priority...
-- Returns the number of stored episodes updated.
local updated = 0
for i = 1, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
    updated = updated + 1
  end
end
if updated > 0 then redis.call('HINCRBY', KEYS[2], 'priority_version', 1) end
return updated
"""


def write_episode_request(
    table: str, episode: Episode, priority: float
) -> tuple[list[str], list, int]:
    """KEYS and ARGV of WRITE_EPISODE for a validated episode, and its payload bytes."""
    steps = sorted(int(s) for s in episode.frames)
    frames = [encode_png(episode.frames[s]) for s in steps]
    arrays = [
        np.ascontiguousarray(episode.states, keys.FLOAT_DTYPE).tobytes(),
        np.ascontiguousarray(episode.actions, keys.FLOAT_DTYPE).tobytes(),
        np.ascontiguousarray(episode.intervened, keys.FLAG_DTYPE).tobytes(),
        np.ascontiguousarray(episode.rewards, keys.FLOAT_DTYPE).tobytes(),
        b"" if episode.labels is None else np.ascontiguousarray(episode.labels, keys.FLOAT_DTYPE).tobytes(),
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
        "label_horizon": episode.label_horizon,
        "version_changes": json.dumps([[int(step), int(version)] for step, version in episode.version_changes]),
    }
    eid = episode.episode_id
    per_episode = {"meta": keys.episode_key(eid, "meta")}
    per_episode |= {name: keys.episode_key(eid, name) for name in keys.EPISODE_ARRAYS}
    per_episode |= {kind: keys.table_key(table, kind) for kind in keys.TABLE_KEY_KINDS}
    per_episode["tables"] = keys.TABLES_KEY
    script_keys = [per_episode[name] for name in WRITE_EPISODE_KEYS]
    script_keys += [keys.frame_key(eid, s) for s in steps]
    args = [table, eid, episode.length, nbytes, *arrays, priority, len(meta)]
    args += [v for item in meta.items() for v in item]
    return script_keys, args + frames, nbytes

INDEX_SCRIPT_KEYS: tuple[str, ...] = ("config", "items", "counters")
"""KEYS of READ_INDEX."""

READ_INDEX = "#!lua flags=no-writes\n" + _HELPERS_LUA + """
local META_FIELDS = {%s}
-- KEYS: config, items, counters; ARGV: after_seq, limit.
-- Returns {config field/value pairs, oldest seq ('' when empty), priority_version,
-- 1 if more episodes follow the last one returned else 0, meta values of each episode...}.
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2] or ''
local version = redis.call('HGET', KEYS[3], 'priority_version') or '0'
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'LIMIT', 0, tonumber(ARGV[2]) + 1)
local more = 0
if #ids > tonumber(ARGV[2]) then
  more = 1
  ids[#ids] = nil
end
local out = {redis.call('HGETALL', KEYS[1]), oldest, version, more}
for _, id in ipairs(ids) do
  out[#out + 1] = redis.call('HMGET', episode_key(id, 'meta'), unpack(META_FIELDS))
end
return out
""" % ", ".join(f"'{name}'" for name in keys.META_FIELDS)

READ_WINDOWS = """#!lua flags=no-writes
-- KEYS: state, action, frame key of each window; ARGV: first and last byte of the state
-- row, then of the action rows, of each window. Returns state, action, frame of each
-- window (the frame nil when the episode is gone): one command instead of three per window.
local out = {}
for i = 1, #KEYS / 3 do
  local a = 4 * (i - 1)
  out[3 * i - 2] = redis.call('GETRANGE', KEYS[3 * i - 2], ARGV[a + 1], ARGV[a + 2])
  out[3 * i - 1] = redis.call('GETRANGE', KEYS[3 * i - 1], ARGV[a + 3], ARGV[a + 4])
  out[3 * i] = redis.call('GET', KEYS[3 * i])
end
return out
"""
