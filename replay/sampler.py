"""WindowSampler: draws training windows from replay tables mixed by weight.

In Reverb's vocabulary a *sampler* is the selector that decides which items a sample call
returns. Here each window is selected in three steps:

1. a table, with probability proportional to its mixture weight, renormalised over the
   tables that currently hold episodes (the data pyramid: e.g. pretrain 0.5, rollouts 0.3,
   corrections 0.2);
2. an episode (item) of that table, by the table's selector (``TableConfig.sampler``):
   ``uniform``, ``prioritized`` (probability ∝ priority ** priority_exponent) or ``fifo``
   (the oldest), times its number of windows (``sample_by: window``, the default: every
   window of a uniform table equally likely, so a 1-step correction is not drawn as often as
   a 64-step one; ``sample_by: episode`` leaves the length out). With a sharded client the
   selector spans the episodes of every shard, so sampling is proportional across shards;
3. a step t, uniformly among the steps of that episode that have a stored camera frame.

A window is the frame at t, the state at t and the actions t..t+H-1; past the end of the
episode the last action is repeated (as GR00T pads action chunks) and ``action_is_pad``
marks those steps (as LeRobot does), so that the learner can leave them out of the loss: a
takeover segment ends where the policy drove on, not where the robot stopped. In a labelled
episode (DAgger corrections: ``Episode.labels``) the actions of the window at t are the
expert's chunk recorded at t, so no window of it is padded (unless its label is shorter than H). Before reading, the
windows are counted against each table's rate limiter (which may block). An episode
evicted after the index refresh is dropped from the index and its windows are resampled;
if a resampled window's episode is gone too, the index is refreshed before the next round.
"""

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from . import keys, scripts
from .client import IndexChunk, ReplayClient
from .episode import EpisodeInfo, decode_frame
from .errors import EmptyReplayError, ReplayError, translate_errors
from .metrics import SAMPLES
from .selectors import Selector, make_selector
from .table import TableConfig

logger = logging.getLogger(__name__)

_MAX_RESAMPLE_ROUNDS = 8
"""Rounds of resampling windows whose episode was evicted before giving up."""


class _Pick(NamedTuple):
    table: str
    shard: int
    info: EpisodeInfo
    step: int


class _Window(NamedTuple):
    pick: _Pick
    state: bytes
    """float32 (S,) row at the step."""
    action: bytes
    """float32 rows: the actions of steps t..min(t+H, T)-1, or the first min(L, H) rows of the label at t."""
    frame: bytes
    """PNG of the frame at the step."""


@dataclass
class _ShardCursor:
    """How far a table's index has read one shard."""

    last_seq: int = 0
    priority_version: int = -1
    order: deque[tuple[int, str]] = field(default_factory=deque)
    """(seq, episode id) indexed from this shard, oldest first."""


@dataclass
class _TableIndex:
    """Cached summaries of one table's episodes (every shard) and the selector over them."""

    config: TableConfig
    selector: Selector
    entries: dict[str, tuple[int, EpisodeInfo]]
    """episode id -> (shard, info)."""
    cursors: list[_ShardCursor]
    most_windows: int = 0
    """The most windows (frame steps) of any indexed episode, as of the last refresh."""


def _check_mixture(mixture: dict[str, float], tables: list[str], known: str = "known tables") -> None:
    """Raise ValueError unless ``mixture`` weights some of ``tables`` (called ``known`` in the message)
    with finite weights >= 0, one > 0."""
    if not mixture:
        raise ValueError("mixture is empty: give at least one table with a weight > 0")
    for table in mixture:
        keys.check_table(table)
    unknown = sorted(set(mixture) - set(tables))
    if unknown:
        raise ValueError(f"mixture names unknown tables {unknown}; {known}: {sorted(tables)}")
    bad = {t: w for t, w in mixture.items() if not (math.isfinite(w) and w >= 0)}
    if bad:
        raise ValueError(f"mixture weights must be finite and >= 0, got {bad}")
    if sum(mixture.values()) <= 0:
        raise ValueError(f"mixture needs at least one weight > 0, got {mixture}")


class WindowSampler:
    """Samples (frame, state, action chunk) windows across tables by mixture weight.

    The sampler keeps an index of each table's episodes (ids, lengths, dims, frame steps,
    priorities), fetching only episodes inserted since its last refresh and dropping
    evicted ones, at most every ``refresh_s`` seconds or when :meth:`refresh` is called.
    Table configuration (selector) and priority updates are picked up at refresh.

    Args:
        client: a ReplayClient or ShardedReplayClient.
        mixture: table name -> weight (>= 0, at least one > 0).
        horizon: H, number of actions per window.
        seed: seed of the sampler's random generator (None: fresh entropy).
        refresh_s: maximum age of the episode index before a sample refreshes it.
        rate_limit_timeout_s: longest wait on rate limiters per sample call (default: the
            client's rate_limit_timeout_s).

    Raises:
        ValueError: empty mixture, invalid or unknown table names, negative or non-finite
            weights, all weights zero, or horizon < 1.
    """

    def __init__(
        self,
        client: ReplayClient,
        mixture: dict[str, float],
        horizon: int,
        seed: int | list[int] | None = None,
        refresh_s: float = 5.0,
        rate_limit_timeout_s: float | None = None,
    ) -> None:
        _check_mixture(mixture, client.tables())
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.mixture = dict(mixture)
        self.horizon = int(horizon)
        self.refresh_s = refresh_s
        self.rate_limit_timeout_s = rate_limit_timeout_s
        self._client = client
        self._shards: list[ReplayClient] = client.shards
        self._read_scripts = [shard.redis.register_script(scripts.READ_WINDOWS)
                              for shard in self._shards]
        self._rng = np.random.default_rng(seed)
        self._index = {
            table: _TableIndex(
                TableConfig(), make_selector("uniform"), {},
                [_ShardCursor() for _ in self._shards],
            )
            for table in mixture
        }
        self._refreshed_at = -math.inf

    def set_mixture(self, mixture: dict[str, float]) -> None:
        """Reweight the tables from the next sample call on (e.g. a correction share that grows
        round by round). Only the tables the sampler was built with can be weighted.

        Raises:
            ValueError: as the constructor's, or a table the sampler was not built with.
        """
        _check_mixture(mixture, list(self._index), known="this sampler weighs only its tables")
        self.mixture = dict(mixture)

    def get_state(self) -> dict[str, Any]:
        """The sampler's random state (JSON-able), for checkpoints."""
        return {"rng": self._rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a ``get_state()`` snapshot: the same replay yields the same windows."""
        self._rng.bit_generator.state = state["rng"]

    # ---- index --------------------------------------------------------------------------

    def refresh(self) -> None:
        """Drop evicted episodes, fetch those inserted since the last refresh, and reload
        the table config and (for prioritized tables) changed priorities."""
        for table, index in self._index.items():
            for s, shard in enumerate(self._shards):
                chunk = shard.read_index(table, after_seq=index.cursors[s].last_seq)
                if s == 0:
                    self._apply_config(index, chunk.config)
                self._refresh_shard(table, index, s, shard, chunk)
            index.most_windows = max((len(info.frame_steps) for _, info in index.entries.values()), default=0)
        self._refreshed_at = time.monotonic()

    def _apply_config(self, index: _TableIndex, config: TableConfig) -> None:
        spec = (config.sampler, config.priority_exponent)
        if spec != (index.config.sampler, index.config.priority_exponent):
            index.selector = make_selector(*spec)
            for eid in index.entries:
                index.selector.insert(eid, 1.0)
            for cursor in index.cursors:
                cursor.priority_version = -1
        index.config = config

    def _refresh_shard(
        self, table: str, index: _TableIndex, s: int, shard: ReplayClient, chunk: IndexChunk
    ) -> None:
        cursor = index.cursors[s]
        while cursor.order and (chunk.oldest_seq is None or cursor.order[0][0] < chunk.oldest_seq):
            self._drop(index, cursor.order.popleft()[1])
        priority_version, new = chunk.priority_version, []
        while True:
            for info in chunk.infos:
                index.entries[info.episode_id] = (s, info)
                index.selector.insert(info.episode_id, 1.0)
                cursor.order.append((info.seq, info.episode_id))
            new += chunk.infos
            if chunk.infos:
                cursor.last_seq = chunk.infos[-1].seq
            if not chunk.more:
                break
            chunk = shard.read_index(table, after_seq=cursor.last_seq)
        if new:
            logger.debug("sampler index: %d new episodes in %r on %s", len(new), table, shard.url)
        if index.config.sampler != "prioritized":
            return
        if priority_version != cursor.priority_version:
            priorities = shard.priorities(table)
            cursor.priority_version = priority_version
        else:
            priorities = shard.priorities(table, [info.episode_id for info in new])
        for eid, priority in priorities.items():
            index.selector.update(eid, priority)

    @staticmethod
    def _drop(index: _TableIndex, episode_id: str) -> None:
        index.entries.pop(episode_id, None)
        index.selector.delete(episode_id)

    def num_episodes(self) -> dict[str, int]:
        """Episodes per mixture table in the cached index."""
        return {table: len(index.entries) for table, index in self._index.items()}

    def probabilities(self) -> dict[str, float]:
        """Current table probabilities: weights renormalised over non-empty tables."""
        weights = {t: w for t, w in self.mixture.items() if w > 0 and self._index[t].entries}
        total = sum(weights.values())
        return {t: w / total for t, w in weights.items()}

    # ---- sampling -----------------------------------------------------------------------

    def sample(self, batch_size: int) -> list[dict[str, Any]]:
        """Draw ``batch_size`` windows, reading them with one script call per shard.

        Returns:
            One dict per window: ``image`` uint8 (h, w, 3) frame at t, ``state`` float32
            (S,) at t, ``action`` float32 (H, A) for t..t+H-1 (last action repeated past the
            end), ``action_is_pad`` bool (H,) (True on those repeated steps), ``instruction``, ``embodiment``, ``table``, ``episode_id``, ``step`` (t),
            ``policy_version`` and ``source`` (the episode's correction class).

        Raises:
            ValueError: batch_size < 1, or more windows of a table than its rate limiter
                can ever admit in one call.
            EmptyReplayError: every mixture table with weight > 0 is empty.
            RateLimitedError: a table's rate limiter refused until the timeout.
            ReplayTimeoutError, ReplayUnavailableError: the server did not answer.
        """
        return [
            {
                "image": decode_frame(w.frame, w.pick.info, w.pick.step),
                "state": np.frombuffer(w.state, keys.FLOAT_DTYPE).astype(np.float32),
                "action": self._actions(w),
                "action_is_pad": self._is_pad(w),
                **_window_meta(w.pick),
            }
            for w in self._windows(batch_size)
        ]

    def sample_batch(self, batch_size: int, decode_images: bool = True) -> dict[str, Any]:
        """Draw ``batch_size`` windows as stacked arrays, ready to batch.

        Args:
            batch_size: B.
            decode_images: decode frames into ``image``; False returns the stored PNGs as
                ``image_png`` so the consumer (e.g. a data-loader worker) decodes them.

        Returns:
            ``image`` uint8 (B, h, w, 3) or ``image_png`` list of B bytes, ``state`` float32
            (B, S), ``action`` float32 (B, H, A), ``action_is_pad`` bool (B, H), ``step`` and
            ``policy_version`` int64 (B,),
            and lists of B ``instruction``, ``embodiment``, ``table``, ``episode_id``.

        Raises:
            ValueError: the windows' state/action dims or frame shapes differ (use
                :meth:`sample`), or as :meth:`sample`.
            EmptyReplayError, RateLimitedError, ReplayTimeoutError, ReplayUnavailableError:
                as :meth:`sample`.
        """
        windows = self._windows(batch_size)
        infos = [w.pick.info for w in windows]
        shapes = {(i.state_dim, i.action_dim, i.frame_shape) for i in infos}
        if len(shapes) > 1:
            raise ValueError(
                f"windows of this batch differ in (state_dim, action_dim, frame_shape): "
                f"{sorted(shapes)}; sample them with sample() or mix one embodiment per sampler"
            )
        (state_dim, action_dim, frame_shape), = shapes
        batch: dict[str, Any] = {
            "state": np.frombuffer(b"".join(w.state for w in windows), keys.FLOAT_DTYPE)
            .reshape(len(windows), state_dim).astype(np.float32),
            "action": np.stack([self._actions(w) for w in windows]),
            "action_is_pad": np.stack([self._is_pad(w) for w in windows]),
        }
        if decode_images:
            images = np.empty((len(windows), *frame_shape), np.uint8)
            for i, w in enumerate(windows):
                images[i] = decode_frame(w.frame, w.pick.info, w.pick.step)
            batch["image"] = images
        else:
            batch["image_png"] = [w.frame for w in windows]
        metas = [_window_meta(w.pick) for w in windows]
        for name in ("step", "policy_version"):
            batch[name] = np.array([m[name] for m in metas], np.int64)
        for name in ("instruction", "embodiment", "table", "episode_id", "source"):
            batch[name] = [m[name] for m in metas]
        return batch

    def _actions(self, w: _Window) -> np.ndarray:
        actions = np.frombuffer(w.action, keys.FLOAT_DTYPE).reshape(-1, w.pick.info.action_dim)
        pad = self.horizon - len(actions)
        if pad:
            actions = np.concatenate([actions, np.repeat(actions[-1:], pad, axis=0)])
        return actions.astype(np.float32)

    def _is_pad(self, w: _Window) -> np.ndarray:
        """bool (H,): True on the steps of the window past the end of its episode (or its label)."""
        return np.arange(self.horizon) >= len(w.action) // (keys.FLOAT_DTYPE.itemsize * w.pick.info.action_dim)

    def _action_rows(self, pick: _Pick) -> tuple[str, int, int]:
        """(key, first byte, row count) of the window's actions: the label at t in a labelled episode,
        else the executed actions from t."""
        info, t = pick.info, pick.step
        row = info.action_dim * keys.FLOAT_DTYPE.itemsize
        if info.label_horizon:
            rows = min(info.label_horizon, self.horizon)
            return keys.episode_key(info.episode_id, "label"), t * info.label_horizon * row, rows
        return keys.episode_key(info.episode_id, "action"), t * row, min(t + self.horizon, info.length) - t

    def _windows(self, batch_size: int) -> list[_Window]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if time.monotonic() - self._refreshed_at >= self.refresh_s or not self.probabilities():
            self.refresh()
        picks = self._draw(batch_size)
        self._acquire(picks)
        windows = self._read(picks)
        for resample_round in range(_MAX_RESAMPLE_ROUNDS):
            missing = [i for i, w in enumerate(windows) if w is None]
            if not missing:
                break
            logger.debug("resampling %d windows of evicted episodes", len(missing))
            # The first redraw uses the index minus the episodes found evicted; if windows
            # are still missing, the index is stale beyond those: re-read it.
            if resample_round > 0 or not self.probabilities():
                self.refresh()
            for i, w in zip(missing, self._read(self._draw(len(missing)))):
                windows[i] = w
        else:
            if any(w is None for w in windows):
                raise ReplayError(
                    f"episodes were evicted faster than the sampler could read windows from "
                    f"{self._client.url} ({_MAX_RESAMPLE_ROUNDS} rounds); raise the capacity"
                )
        tables, counts = np.unique([w.pick.table for w in windows], return_counts=True)
        for table, count in zip(tables, counts):
            SAMPLES.labels(table=str(table)).inc(int(count))
        return windows

    def _draw(self, n: int) -> list[_Pick]:
        probs = self.probabilities()
        if not probs:
            raise EmptyReplayError(
                f"every table of the mixture {self.mixture} is empty at {self._client.url}; "
                "write episodes first (or wait for actors) before sampling"
            )
        tables = list(probs)
        table_picks = self._rng.choice(len(tables), size=n, p=list(probs.values()))
        picks: list[_Pick | None] = [None] * n
        for ti, table in enumerate(tables):
            slots = np.flatnonzero(table_picks == ti)
            if not len(slots):
                continue
            index = self._index[table]
            ids = self._episodes(index, len(slots))
            for slot, eid, u in zip(slots, ids, self._rng.random(len(slots))):
                shard, info = index.entries[eid]
                step = info.frame_steps[int(u * len(info.frame_steps))]
                picks[slot] = _Pick(table, shard, info, int(step))
        return picks

    def _episodes(self, index: _TableIndex, n: int) -> list[str]:
        """``n`` episode ids by the table's selector; with ``sample_by: window`` each drawn id is kept
        with probability (its windows / the most windows of any indexed episode) and the rest drawn
        again, so an episode's odds are its selector odds times its windows (exact rejection)."""
        if index.config.sample_by == "episode" or index.config.sampler == "fifo":
            return index.selector.sample(self._rng, n)
        most = index.most_windows
        kept: list[str] = []
        while len(kept) < n:
            ids = index.selector.sample(self._rng, n - len(kept))
            windows = np.array([len(index.entries[eid][1].frame_steps) for eid in ids])
            kept += [eid for eid, keep in zip(ids, self._rng.random(len(ids)) * most < windows) if keep]
        return kept

    def _acquire(self, picks: list[_Pick]) -> None:
        """Count the picks against each table's rate limiter on each shard (may block)."""
        per_shard: list[dict[str, int]] = [{} for _ in self._shards]
        for p in picks:
            per_shard[p.shard][p.table] = per_shard[p.shard].get(p.table, 0) + 1
        for shard, counts in zip(self._shards, per_shard):
            for table, count in counts.items():
                limiter = self._index[table].config.rate_limiter()
                if limiter and count > limiter.max_samples_per_call:
                    raise ValueError(
                        f"this call samples {count} windows of table {table!r} from "
                        f"{shard.url}, more than its rate limiter ({limiter.describe()}) can "
                        "admit at once; lower the batch size or raise error_buffer"
                    )
            shard.acquire_samples(counts, self.rate_limit_timeout_s)

    def _read(self, picks: list[_Pick]) -> list[_Window | None]:
        """Read the picks (one script call per shard); None where the episode was evicted."""
        itemsize = keys.FLOAT_DTYPE.itemsize
        windows: list[_Window | None] = [None] * len(picks)
        for s, shard in enumerate(self._shards):
            slots = [i for i, p in enumerate(picks) if p.shard == s]
            if not slots:
                continue
            script_keys, args = [], []
            for i in slots:
                info, t = picks[i].info, picks[i].step
                row_s, row_a = info.state_dim * itemsize, info.action_dim * itemsize
                action_key, first, rows = self._action_rows(picks[i])
                script_keys += [keys.episode_key(info.episode_id, "state"), action_key,
                                keys.frame_key(info.episode_id, t)]
                args += [t * row_s, (t + 1) * row_s - 1, first, first + rows * row_a - 1]
            with translate_errors(shard.url, f"sample {len(slots)} windows"):
                raw = self._read_scripts[s](keys=script_keys, args=args)
            for j, i in enumerate(slots):
                state_b, action_b, frame_b = raw[3 * j:3 * j + 3]
                pick = picks[i]
                if frame_b is None or not state_b:
                    self._drop(self._index[pick.table], pick.info.episode_id)
                    continue
                n_actions = self._action_rows(pick)[2]
                if (
                    len(state_b) != pick.info.state_dim * itemsize
                    or len(action_b) != n_actions * pick.info.action_dim * itemsize
                ):
                    raise ReplayError(
                        f"episode {pick.info.episode_id} of table {pick.table!r} is truncated "
                        f"at step {pick.step} on {shard.url}"
                    )
                windows[i] = _Window(pick, state_b, action_b, frame_b)
        return windows


def _window_meta(pick: _Pick) -> dict[str, Any]:
    info = pick.info
    return {
        "instruction": info.instruction,
        "embodiment": info.embodiment,
        "table": pick.table,
        "episode_id": info.episode_id,
        "step": pick.step,
        "policy_version": info.version_at(pick.step),
        "source": info.source,
    }
