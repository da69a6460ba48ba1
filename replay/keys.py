"""Redis key layout of the replay, versioned by :data:`SCHEMA_VERSION`.

Vocabulary (Reverb's): a *table* holds *items*; here an item is one episode. Every key
lives under :data:`PREFIX`. Per-episode keys carry the episode id as a hash tag
(``{episode_id}``) so that all keys of one episode map to one cluster slot.

Layout (``<id>`` = episode id, ``<table>`` = table name, ``<t>`` = step)::

    fl:schema_version                  string  SCHEMA_VERSION the data was written with
    fl:tables                          set     names of tables ever written to
    fl:table:<table>:items             zset    episode ids scored by insertion sequence
    fl:table:<table>:counters          hash    see COUNTER_FIELDS
    fl:table:<table>:config            hash    TableConfig fields plus the RateLimiter's
                                               ``rl_*`` parameters (table.py)
    fl:table:<table>:priorities        zset    episode ids scored by sampling priority
    fl:table:<table>:tally             hash    ``source:<s>``, ``embodiment:<e>``,
                                               ``policy_version:<v>`` -> stored episodes
    fl:table:<table>:evicted           zset    ids of evicted episodes scored by eviction
                                               time (ms), kept evicted_id_ttl_s (table.py)
    fl:ep:{<id>}:meta                  hash    see META_FIELDS
    fl:ep:{<id>}:state                 string  float32 little-endian, T x S row-major
    fl:ep:{<id>}:action                string  float32 little-endian, T x A row-major
    fl:ep:{<id>}:intervened            string  uint8, T
    fl:ep:{<id>}:reward                string  float32 little-endian, T
    fl:ep:{<id>}:label                 string  float32 little-endian, T x L x A row-major: the
                                               expert's L-step action chunk from each step's
                                               state (empty when the episode has no labels)
    fl:ep:{<id>}:frame:<t>             string  PNG-encoded RGB camera frame at step t

Changing any of this (names, encodings, meta fields) requires bumping SCHEMA_VERSION.
"""

import re

import numpy as np

SCHEMA_VERSION = 4
"""Version of this layout; checked (and set on an empty server) by every client on connect."""
ADDITIVE_FROM = (3,)
"""Older versions whose data this layout reads as is (4 added the ``label`` array and the
``label_horizon`` meta field, absent meaning no labels): a client upgrades their marker."""

PREFIX = "fl:"
TABLES: tuple[str, ...] = ("pretrain", "rollouts", "corrections", "evaluations")
"""The standard tables: the data pyramid (pretraining data, the robots' own rollouts, corrections)
and the policy-only evaluation episodes; any name matching TABLE_NAME_RE is accepted."""

TABLE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
EPISODE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")

FLOAT_DTYPE = np.dtype("<f4")
"""On-wire dtype of state, action and reward rows."""
FLAG_DTYPE = np.dtype("u1")
"""On-wire dtype of the intervened flags."""

SCHEMA_VERSION_KEY = PREFIX + "schema_version"
TABLES_KEY = PREFIX + "tables"
TABLE_KEY = PREFIX + "table:{table}:{kind}"
TABLE_KEY_KINDS: tuple[str, ...] = ("items", "counters", "config", "priorities", "tally", "evicted")
EPISODE_KEY_PREFIX = PREFIX + "ep:{"
EPISODE_KEY = PREFIX + "ep:{{{episode_id}}}:{field}"
FRAME_KEY = PREFIX + "ep:{{{episode_id}}}:frame:{step}"

EPISODE_ARRAYS: tuple[str, ...] = ("state", "action", "intervened", "reward", "label")
"""Per-episode array keys (the ``field`` of EPISODE_KEY)."""

META_FIELDS: tuple[str, ...] = (
    "schema_version", "episode_id", "table", "seq", "length", "state_dim", "action_dim",
    "frame_steps", "frame_height", "frame_width", "instruction", "embodiment", "source",
    "policy_version", "actor_id", "success", "nbytes", "created_at", "label_horizon",
    "version_changes",
)
"""Fields of the meta hash; ``frame_steps`` is a JSON list of ints, ``success`` is 0/1,
``label_horizon`` L of the ``label`` array (0 or absent: no labels), ``version_changes`` a JSON
list of ``[step, version]`` where the acting policy's weights changed mid-episode (absent: none)."""

COUNTER_FIELDS: tuple[str, ...] = (
    "seq", "episodes", "steps", "bytes", "evicted", "samples", "priority_version",
)
"""Fields of the counters hash: ``seq`` counts inserts ever (the last insertion sequence),
``episodes``/``steps``/``bytes`` what is stored now, ``evicted`` episodes removed past
capacity, ``samples`` windows sampled (the rate limiter's count), ``priority_version``
bumped by every priority update."""
TALLY_FIELDS: tuple[str, ...] = ("source", "embodiment", "policy_version")
"""Meta fields counted per value in the tally hash."""


def check_table(table: str) -> str:
    """Return ``table`` if it is a valid table name.

    Raises:
        ValueError: the name does not match ``[a-z][a-z0-9_]{0,31}``.
    """
    if not isinstance(table, str) or not TABLE_NAME_RE.fullmatch(table):
        raise ValueError(f"invalid table name {table!r}: must match {TABLE_NAME_RE.pattern}")
    return table


def table_key(table: str, kind: str) -> str:
    """Key of one per-table structure; ``kind`` is one of TABLE_KEY_KINDS.

    Raises:
        ValueError: invalid table name or unknown kind.
    """
    if kind not in TABLE_KEY_KINDS:
        raise ValueError(f"unknown table key kind {kind!r}; expected one of {TABLE_KEY_KINDS}")
    return TABLE_KEY.format(table=check_table(table), kind=kind)


def table_items(table: str) -> str:
    """Key of the table's insertion-ordered sorted set of episode ids."""
    return table_key(table, "items")


def table_counters(table: str) -> str:
    """Key of the table's counters hash (COUNTER_FIELDS)."""
    return table_key(table, "counters")


def episode_key(episode_id: str, field: str) -> str:
    """Key of one per-episode field: ``meta`` or one of EPISODE_ARRAYS."""
    return EPISODE_KEY.format(episode_id=episode_id, field=field)


def frame_key(episode_id: str, step: int) -> str:
    """Key of the encoded camera frame rendered at ``step``."""
    return FRAME_KEY.format(episode_id=episode_id, step=int(step))
