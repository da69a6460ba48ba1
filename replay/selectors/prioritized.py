"""PrioritizedSelector: items drawn with probability proportional to priority ** exponent."""

import numpy as np

from .interface import DenseKeySelector, check_priority


class PrioritizedSelector(DenseKeySelector):
    """Prioritised sampling, as Reverb's Prioritized selector.

    ``P(key) = priority(key) ** priority_exponent / sum(priority ** priority_exponent)``;
    when every priority is zero, keys are drawn uniformly. The cumulative sum is cached and
    rebuilt (O(N), vectorised) after any change, so sampling a batch costs O(n log N).

    Args:
        priority_exponent: exponent applied to priorities (>= 0; 0 means uniform).

    Raises:
        ValueError: priority_exponent is negative or not finite.
    """

    name = "prioritized"

    def __init__(self, priority_exponent: float = 1.0) -> None:
        if not (np.isfinite(priority_exponent) and priority_exponent >= 0):
            raise ValueError(
                f"priority_exponent must be finite and >= 0, got {priority_exponent!r}"
            )
        super().__init__()
        self.priority_exponent = float(priority_exponent)
        self._priorities = np.zeros(16)
        self._cumsum: np.ndarray | None = None

    def insert(self, key: str, priority: float) -> None:
        value = check_priority(key, priority)
        if key in self._pos:
            self._set(self._pos[key], value)
            return
        if len(self._keys) == len(self._priorities):
            self._priorities = np.concatenate([self._priorities, np.zeros(len(self._keys))])
        self._set(self._append(key), value)

    def delete(self, key: str) -> None:
        removed = self._remove(key)
        if removed is None:
            return
        pos, last = removed
        self._priorities[pos] = self._priorities[last]
        self._cumsum = None

    def update(self, key: str, priority: float) -> None:
        value = check_priority(key, priority)
        if key in self._pos:
            self._set(self._pos[key], value)

    def priority(self, key: str) -> float:
        """Current priority of ``key``.

        Raises:
            KeyError: unknown key.
        """
        return float(self._priorities[self._pos[key]])

    def sample(self, rng: np.random.Generator, n: int) -> list[str]:
        if not self._keys:
            raise IndexError("cannot sample from an empty PrioritizedSelector")
        if self._cumsum is None:
            weights = self._priorities[:len(self._keys)] ** self.priority_exponent
            self._cumsum = np.cumsum(weights)
        total = self._cumsum[-1]
        if total <= 0:
            picks = rng.integers(len(self._keys), size=n)
        else:
            picks = np.searchsorted(self._cumsum, rng.random(n) * total, side="right")
            picks = np.minimum(picks, len(self._keys) - 1)
        return [self._keys[i] for i in picks]

    def _set(self, pos: int, value: float) -> None:
        self._priorities[pos] = value
        self._cumsum = None
