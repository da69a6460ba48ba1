"""UniformSelector: every item equally likely, whatever its priority or length."""

import numpy as np

from .interface import Selector, check_priority


class UniformSelector(Selector):
    """Uniform sampling with O(1) insert and delete (swap-remove)."""

    name = "uniform"

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._pos: dict[str, int] = {}

    def insert(self, key: str, priority: float) -> None:
        check_priority(key, priority)
        if key not in self._pos:
            self._pos[key] = len(self._keys)
            self._keys.append(key)

    def delete(self, key: str) -> None:
        pos = self._pos.pop(key, None)
        if pos is None:
            return
        last = self._keys.pop()
        if pos < len(self._keys):
            self._keys[pos] = last
            self._pos[last] = pos

    def update(self, key: str, priority: float) -> None:
        check_priority(key, priority)

    def sample(self, rng: np.random.Generator, n: int) -> list[str]:
        if not self._keys:
            raise IndexError("cannot sample from an empty UniformSelector")
        return [self._keys[i] for i in rng.integers(len(self._keys), size=n)]

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._pos
