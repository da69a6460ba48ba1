"""Loss weights by how far a window's state lies from the demonstrations' states.

A correction collected where the policy strayed far from anything demonstrated (an arm in an odd
pose after a dropped object) teaches a recovery the improved policy rarely needs, while one
collected near demonstrated states (the grasp it almost made) corrects the policy where it
usually is. ``StateDistanceWeights`` multiplies the loss weight of windows of chosen correction
classes by ``exp(-strength * d / median d)``, ``d`` the distance of the window's first state to
the nearest reference state, renormalised to a mean of 1 over those windows of the batch: the
classes keep their share of the loss (``learner.class_weights``), only the emphasis inside them
moves.

Vocabulary:
    reference states: every step's state of the reference tables (``learner.distance_weights.
        reference``, the demonstrations by default), per embodiment, at most ``max_reference_states``
        (whole episodes, drawn evenly).
    distance: root mean square over state dims of the difference in units of the reference states'
        standard deviation (floored at ``STD_FLOOR``, so a dim the demonstrations hold still does
        not dominate).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fleetloop.replay import ReplayClient

STD_FLOOR = 1e-2
"""Smallest standard deviation (raw units) a state dim is measured in."""


class ReferenceStates:
    """The reference states of one embodiment, standardised, with their nearest-neighbour distance."""

    def __init__(self, states: np.ndarray):
        if states.ndim != 2 or not len(states):
            raise ValueError(f"reference states must be a non-empty (N, S) array, got shape {states.shape}")
        self.mean = states.mean(axis=0)
        self.std = np.maximum(states.std(axis=0), STD_FLOOR)
        self.points = ((states - self.mean) / self.std).astype(np.float32)
        self._squared_norms = (self.points * self.points).sum(1)

    def distance(self, states: np.ndarray) -> np.ndarray:
        """(n,) distance of each of ``states`` (n, S) to its nearest reference state."""
        z = ((np.asarray(states, np.float32) - self.mean) / self.std).astype(np.float32)
        squared = (z * z).sum(1)[:, None] - 2 * z @ self.points.T + self._squared_norms[None, :]
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0) / z.shape[1])


def read_reference_states(replay: ReplayClient, tables: Sequence[str], max_states: int) -> dict[str, ReferenceStates]:
    """Reference states per embodiment from ``tables`` (tables that do not exist are skipped)."""
    stored = set(replay.tables())
    episode_ids = [episode_id for table in tables if table in stored for episode_id in replay.episode_ids(table)]
    by_embodiment: dict[str, list[np.ndarray]] = {}
    counted = 0
    for index in _even_order(len(episode_ids)):
        if counted >= max_states:
            break
        episode = replay.read_episode(episode_ids[index])
        by_embodiment.setdefault(episode.embodiment, []).append(episode.states)
        counted += len(episode.states)
    return {embodiment: ReferenceStates(np.concatenate(parts)) for embodiment, parts in by_embodiment.items()}


def _even_order(n: int) -> list[int]:
    """0..n-1 in an order whose every prefix spreads over the whole range (a stride that halves)."""
    order, seen, stride = [], set(), max(1, n)
    while len(order) < n:
        for index in range(0, n, stride):
            if index not in seen:
                seen.add(index)
                order.append(index)
        stride = max(1, stride // 2)
    return order


class StateDistanceWeights:
    """Per-window loss-weight factors for windows of ``classes`` (see the module docstring).

    Args:
        replay: where the reference tables live.
        classes: correction classes whose windows are weighted; others get 1.
        reference: tables whose states are the reference (read on first use and by ``refresh``).
        strength: 0 weighs every window alike; larger favours windows near the reference.
        max_reference_states: cap on the reference states read per call of ``refresh``.
    """

    def __init__(self, replay: ReplayClient, classes: Sequence[str], reference: Sequence[str], strength: float,
                 max_reference_states: int):
        self.replay = replay
        self.classes = frozenset(classes)
        self.reference_tables = list(reference)
        self.strength = strength
        self.max_reference_states = max_reference_states
        self._reference: dict[str, ReferenceStates] | None = None

    def refresh(self) -> None:
        """Read the reference states again (e.g. after demonstrations were added)."""
        self._reference = read_reference_states(self.replay, self.reference_tables, self.max_reference_states)

    def factors(self, windows: Sequence[dict]) -> list[float]:
        """A factor per window: 1 outside ``classes`` or without reference states of its
        embodiment; inside, ``exp(-strength * d / median d)`` renormalised to mean 1 over them."""
        if self._reference is None:
            self.refresh()
        reference = self._reference  # refresh may swap it from the driver's thread meanwhile
        factors = [1.0] * len(windows)
        picked = [i for i, w in enumerate(windows) if w["source"] in self.classes and w["embodiment"] in reference]
        if not picked:
            return factors
        distances = np.empty(len(picked))
        for embodiment in {windows[i]["embodiment"] for i in picked}:  # one distance call per embodiment
            rows = [k for k, i in enumerate(picked) if windows[i]["embodiment"] == embodiment]
            distances[rows] = reference[embodiment].distance(np.stack([windows[picked[k]]["state"] for k in rows]))
        scale = float(np.median(distances))
        raw = np.exp(-self.strength * distances / scale) if scale > 0 else np.ones(len(picked))
        for i, value in zip(picked, raw / raw.mean()):
            factors[i] = float(value)
        return factors
