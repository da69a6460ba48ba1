"""FifoSelector: always the oldest item, as Reverb's Fifo selector.

As a table's *remover*, FIFO is what the write script does past capacity: it deletes the
episode with the lowest insertion sequence (see :mod:`fleetloop.replay.scripts`). As a
*sampler* (``TableConfig(sampler="fifo")``) every window comes from the oldest episode the
sampler has indexed, e.g. to consume a table in arrival order together with a small
capacity.
"""

import numpy as np

from .interface import Selector, check_priority


class FifoSelector(Selector):
    """Keys in insertion order; sample returns the oldest key ``n`` times."""

    name = "fifo"

    def __init__(self) -> None:
        self._keys: dict[str, None] = {}

    def insert(self, key: str, priority: float) -> None:
        check_priority(key, priority)
        self._keys.setdefault(key, None)

    def delete(self, key: str) -> None:
        self._keys.pop(key, None)

    def update(self, key: str, priority: float) -> None:
        check_priority(key, priority)

    def sample(self, rng: np.random.Generator, n: int) -> list[str]:
        if not self._keys:
            raise IndexError("cannot sample from an empty FifoSelector")
        return [next(iter(self._keys))] * n

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._keys
