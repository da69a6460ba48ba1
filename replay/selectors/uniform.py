"""UniformSelector: every item equally likely, whatever its priority or length."""

import numpy as np

from .interface import DenseKeySelector, check_priority


class UniformSelector(DenseKeySelector):
    """Uniform sampling with O(1) insert and delete (swap-remove)."""

    name = "uniform"

    def insert(self, key: str, priority: float) -> None:
        check_priority(key, priority)
        if key not in self._pos:
            self._append(key)

    def delete(self, key: str) -> None:
        self._remove(key)

    def update(self, key: str, priority: float) -> None:
        check_priority(key, priority)

    def sample(self, rng: np.random.Generator, n: int) -> list[str]:
        if not self._keys:
            raise IndexError("cannot sample from an empty UniformSelector")
        return [self._keys[i] for i in rng.integers(len(self._keys), size=n)]
