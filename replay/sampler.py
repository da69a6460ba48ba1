"""WindowSampler: draws training windows from replay tables mixed by weight.

In Reverb's vocabulary a *sampler* is the selector that decides which items a sample call
returns. Here each window is selected in three steps:

1. a table, with probability proportional to its mixture weight, renormalised over the
   tables that currently hold episodes (the data pyramid: e.g. pretrain 0.5, rollouts 0.3,
   corrections 0.2);
2. an episode (item) of that table, uniformly: every episode is equally likely whatever its
   length, so steps of short episodes are drawn more often than steps of long ones;
3. a step t, uniformly among the steps of that episode that have a stored camera frame.

A window is the frame at t, the state at t and the actions t..t+H-1; past the end of the
episode the last action is repeated (as GR00T pads action chunks).
"""

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import keys
from .client import SAMPLES, ReplayClient, decode_png, translate_errors
from .episode import EpisodeInfo
from .errors import EmptyReplayError, ReplayError

logger = logging.getLogger(__name__)


@dataclass
class _TableIndex:
    """Cached summaries of one table's episodes, grown incrementally by insertion seq."""

    last_seq: int = 0
    infos: list[EpisodeInfo] = field(default_factory=list)


class WindowSampler:
    """Samples (frame, state, action chunk) windows across tables by mixture weight.

    The sampler keeps an index of each table's episodes (ids, lengths, dims, frame steps)
    and fetches only episodes inserted since its last refresh, at most every ``refresh_s``
    seconds or when :meth:`refresh` is called.

    Args:
        client: connected replay client.
        mixture: table name -> weight (>= 0, at least one > 0).
        horizon: H, number of actions per window.
        seed: seed of the sampler's random generator (None: fresh entropy).
        refresh_s: maximum age of the episode index before :meth:`sample` refreshes it.

    Raises:
        ValueError: empty mixture, invalid or unknown table names, negative or non-finite
            weights, all weights zero, or horizon < 1.
    """

    def __init__(
        self,
        client: ReplayClient,
        mixture: dict[str, float],
        horizon: int,
        seed: int | None = None,
        refresh_s: float = 5.0,
    ) -> None:
        if not mixture:
            raise ValueError("mixture is empty: give at least one table with a weight > 0")
        for table in mixture:
            keys.check_table(table)
        unknown = sorted(set(mixture) - set(client.tables()))
        if unknown:
            raise ValueError(
                f"mixture names unknown tables {unknown}; known tables: {client.tables()}"
            )
        bad = {t: w for t, w in mixture.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"mixture weights must be finite and >= 0, got {bad}")
        if sum(mixture.values()) <= 0:
            raise ValueError(f"mixture needs at least one weight > 0, got {mixture}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.mixture = dict(mixture)
        self.horizon = int(horizon)
        self.refresh_s = refresh_s
        self._client = client
        self._rng = np.random.default_rng(seed)
        self._index = {table: _TableIndex() for table in mixture}
        self._refreshed_at = -math.inf

    def refresh(self) -> None:
        """Fetch summaries of the episodes inserted since the last refresh."""
        for table, index in self._index.items():
            new = self._client.episode_infos(table, after_seq=index.last_seq)
            if new:
                index.infos.extend(new)
                index.last_seq = new[-1].seq
                logger.debug("sampler index: %d new episodes in %r", len(new), table)
        self._refreshed_at = time.monotonic()

    def num_episodes(self) -> dict[str, int]:
        """Episodes per mixture table in the cached index."""
        return {table: len(index.infos) for table, index in self._index.items()}

    def probabilities(self) -> dict[str, float]:
        """Current table probabilities: weights renormalised over non-empty tables."""
        weights = {
            t: w for t, w in self.mixture.items() if w > 0 and self._index[t].infos
        }
        total = sum(weights.values())
        return {t: w / total for t, w in weights.items()}

    def sample(self, batch_size: int) -> list[dict]:
        """Draw ``batch_size`` windows, reading them in one pipelined round trip.

        Returns:
            One dict per window: ``image`` uint8 (h, w, 3) frame at t, ``state`` float32
            (S,) at t, ``action`` float32 (H, A) for t..t+H-1 (last action repeated past the
            end), ``instruction``, ``embodiment``, ``table``, ``episode_id``, ``step`` (t)
            and ``policy_version``.

        Raises:
            ValueError: batch_size < 1.
            EmptyReplayError: every mixture table with weight > 0 is empty.
            ReplayTimeoutError, ReplayUnavailableError: the server did not answer.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        stale = time.monotonic() - self._refreshed_at >= self.refresh_s
        if stale or not self.probabilities():
            self.refresh()
        probs = self.probabilities()
        if not probs:
            raise EmptyReplayError(
                f"every table of the mixture {self.mixture} is empty at {self._client.url}; "
                "write episodes first (or wait for actors) before sampling"
            )
        tables = list(probs)
        picks = self._rng.choice(len(tables), size=batch_size, p=list(probs.values()))
        chosen = []
        for pick in picks:
            infos = self._index[tables[pick]].infos
            info = infos[self._rng.integers(len(infos))]
            step = info.frame_steps[self._rng.integers(len(info.frame_steps))]
            chosen.append((tables[pick], info, int(step)))
        windows = self._read(chosen)
        for table, count in zip(*np.unique(picks, return_counts=True)):
            SAMPLES.labels(table=tables[table]).inc(int(count))
        return windows

    def _read(self, chosen: list[tuple[str, EpisodeInfo, int]]) -> list[dict]:
        itemsize = keys.FLOAT_DTYPE.itemsize
        with translate_errors(self._client.url, f"sample {len(chosen)} windows"):
            pipe = self._client.redis.pipeline(transaction=False)
            for _, info, t in chosen:
                eid, end = info.episode_id, min(t + self.horizon, info.length)
                row_s, row_a = info.state_dim * itemsize, info.action_dim * itemsize
                pipe.getrange(keys.episode_key(eid, "state"), t * row_s, (t + 1) * row_s - 1)
                pipe.getrange(keys.episode_key(eid, "action"), t * row_a, end * row_a - 1)
                pipe.get(keys.frame_key(eid, t))
            raw = pipe.execute()
        windows = []
        for i, (table, info, t) in enumerate(chosen):
            state_b, action_b, frame_b = raw[3 * i:3 * i + 3]
            n_actions = min(t + self.horizon, info.length) - t
            if (
                frame_b is None
                or len(state_b) != info.state_dim * itemsize
                or len(action_b) != n_actions * info.action_dim * itemsize
            ):
                raise ReplayError(
                    f"episode {info.episode_id} of table {table!r} is missing or truncated at "
                    f"step {t} on {self._client.url}"
                )
            actions = np.frombuffer(action_b, keys.FLOAT_DTYPE).reshape(n_actions, -1)
            pad = self.horizon - n_actions
            if pad:
                actions = np.concatenate([actions, np.repeat(actions[-1:], pad, axis=0)])
            windows.append({
                "image": decode_png(frame_b),
                "state": np.frombuffer(state_b, keys.FLOAT_DTYPE).astype(np.float32),
                "action": actions.astype(np.float32),
                "instruction": info.instruction,
                "embodiment": info.embodiment,
                "table": table,
                "episode_id": info.episode_id,
                "step": t,
                "policy_version": info.policy_version,
            })
        return windows
