"""Inspection helpers: per-table statistics rows and normalisation bounds, and merging
them over shards."""

from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import keys
from .episode import decode_floats
from .errors import EmptyReplayError, ReplayError, translate_errors

PIPELINE_CHUNK = 512
"""Max episodes per pipelined round trip when scanning a table or reading its arrays."""
BOUNDS: tuple[str, ...] = (
    "state_min", "state_max", "action_min", "action_max",
    "state_mean_min", "state_mean_max", "action_mean_min", "action_mean_max",
    "state_within_max", "action_within_max",
)
"""Keys of compute_stats results, each per dim: the min/max over every step; the min/max over
episodes of each episode's mean (how much a dim varies *across* episodes); the largest range
within one episode (how much it varies *inside* one). Action rows include every label row."""


def stats_row(counters: list[bytes | None], tally: dict[bytes, bytes] | None) -> dict[str, Any]:
    """One table's table_stats row from its counters (COUNTER_FIELDS order) and, if
    detailed, its tally hash."""
    counts = {name: int(v or 0) for name, v in zip(keys.COUNTER_FIELDS, counters)}
    row: dict[str, Any] = {name: counts[name] for name in ("episodes", "steps", "bytes")}
    if tally is None:
        return row
    by: dict[str, dict] = {name: {} for name in keys.TALLY_FIELDS}
    for field, count in tally.items():
        name, value = field.decode().split(":", 1)
        by[name][int(value) if name == "policy_version" else value] = int(count)
    versions = dict(sorted(by["policy_version"].items()))
    return row | {
        "inserts": counts["seq"],
        "evicted": counts["evicted"],
        "samples": counts["samples"],
        "sources": dict(sorted(by["source"].items())),
        "embodiments": dict(sorted(by["embodiment"].items())),
        "policy_versions": versions,
        "policy_version_min": min(versions, default=None),
        "policy_version_max": max(versions, default=None),
    }


def merge_stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Add per-shard table_stats rows: numbers summed, value counts merged, the
    ``policy_version_min``/``_max`` taken over the shards that have one."""
    merged: dict[str, Any] = {}
    for row in rows:
        for name, value in row.items():
            if name in ("policy_version_min", "policy_version_max"):
                present = [v for v in (merged.get(name), value) if v is not None]
                pick = min if name.endswith("_min") else max
                merged[name] = pick(present) if present else None
            elif isinstance(value, dict):
                counts = Tally(merged.get(name, {}))
                counts.update(value)
                merged[name] = dict(sorted(counts.items()))
            else:
                merged[name] = merged.get(name, 0) + value
    return merged


def merge_bounds(
    a: Mapping[str, np.ndarray] | None, b: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Element-wise min of the ``*_min`` and max of the ``*_max`` arrays of two results.

    Raises:
        ReplayError: their shapes differ (different state/action dims).
    """
    if a is None:
        return dict(b)
    if any(a[k].shape != b[k].shape for k in BOUNDS):
        raise ReplayError(
            f"state/action dims differ: {[a[k].shape for k in BOUNDS]} vs "
            f"{[b[k].shape for k in BOUNDS]}"
        )
    return {k: (np.minimum if k.endswith("_min") else np.maximum)(a[k], b[k]) for k in BOUNDS}


def episode_bounds(states: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
    """compute_stats's keys for one episode: states (T, S), actions (N, A)."""
    out = {}
    for kind, rows in (("state", states), ("action", actions)):
        low, high, mean = rows.min(axis=0), rows.max(axis=0), rows.mean(axis=0)
        out |= {f"{kind}_min": low, f"{kind}_max": high, f"{kind}_mean_min": mean, f"{kind}_mean_max": mean,
                f"{kind}_within_max": high - low}
    return out


def compute_bounds(client, table: str, embodiment: str) -> dict[str, np.ndarray]:
    """ReplayClient.compute_stats: the ``BOUNDS`` over every step (and label) of the table's
    episodes of ``embodiment``, read in pipelined chunks from one server."""
    infos = [i for i in client.episode_infos(table) if i.embodiment == embodiment]
    if not infos:
        raise EmptyReplayError(
            f"table {table!r} at {client.url} has no episode of embodiment {embodiment!r}"
        )
    dims = {(i.state_dim, i.action_dim) for i in infos}
    if len(dims) > 1:
        raise ReplayError(
            f"episodes of embodiment {embodiment!r} in table {table!r} have different "
            f"(state_dim, action_dim): {sorted(dims)}"
        )
    bounds = None
    for start in range(0, len(infos), PIPELINE_CHUNK):
        chunk = infos[start:start + PIPELINE_CHUNK]
        with translate_errors(client.url, f"read arrays of {table!r}"):
            pipe = client.redis.pipeline(transaction=False)
            for info in chunk:
                for name in ("state", "action", "label"):
                    pipe.get(keys.episode_key(info.episode_id, name))
            raw = pipe.execute()
        for i, info in enumerate(chunk):
            states = decode_floats(raw[3 * i], (info.length, info.state_dim))
            actions = decode_floats(raw[3 * i + 1], (info.length, info.action_dim))
            if info.label_horizon:
                labels = decode_floats(raw[3 * i + 2], (info.length * info.label_horizon, info.action_dim))
                actions = np.concatenate([actions, labels])
            bounds = merge_bounds(bounds, episode_bounds(states, actions))
    return bounds
