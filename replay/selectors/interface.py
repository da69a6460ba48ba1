"""Selector: the contract of a strategy that picks which items a sample returns.

In Reverb's vocabulary a table's *sampler* and *remover* are both selectors. Here the
sampler side runs in the client: a WindowSampler keeps one selector per table over the
episode ids it has indexed (from every shard), and asks it which episodes each window comes
from. The remover side (FIFO eviction past capacity) runs inside the write script.
"""

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np


class Selector(ABC):
    """Holds item keys (episode ids) with priorities and samples keys from them."""

    name: ClassVar[str]
    """Name used in TableConfig.sampler."""

    @abstractmethod
    def insert(self, key: str, priority: float) -> None:
        """Add ``key``; a key already present has its priority updated.

        Raises:
            ValueError: ``priority`` is negative or not finite.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; unknown keys are ignored (an eviction may be seen twice)."""

    @abstractmethod
    def update(self, key: str, priority: float) -> None:
        """Set the priority of ``key``; unknown keys are ignored.

        Raises:
            ValueError: ``priority`` is negative or not finite.
        """

    @abstractmethod
    def sample(self, rng: np.random.Generator, n: int) -> list[str]:
        """Pick ``n`` keys (with replacement).

        Raises:
            IndexError: the selector holds no key.
        """

    @abstractmethod
    def __len__(self) -> int:
        """Number of keys held."""

    @abstractmethod
    def __contains__(self, key: str) -> bool:
        """Whether ``key`` is held."""



class DenseKeySelector(Selector, ABC):
    """Base of selectors that keep their keys in a dense list: O(1) insert and swap-remove."""

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._pos: dict[str, int] = {}

    def _append(self, key: str) -> int:
        """Add a new ``key`` at the end; returns its position."""
        self._pos[key] = len(self._keys)
        self._keys.append(key)
        return self._pos[key]

    def _remove(self, key: str) -> tuple[int, int] | None:
        """Remove ``key`` by moving the last key into its place.

        Returns:
            (pos, last): the key formerly at position ``last`` now sits at ``pos`` (equal
            when the removed key was the last); None for an unknown key.
        """
        pos = self._pos.pop(key, None)
        if pos is None:
            return None
        moved = self._keys.pop()
        last = len(self._keys)
        if pos < last:
            self._keys[pos] = moved
            self._pos[moved] = pos
        return pos, last

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._pos

def check_priority(key: str, priority: float) -> float:
    """Return ``priority`` as a float if it is finite and >= 0.

    Raises:
        ValueError: naming the key and the value.
    """
    value = float(priority)
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"priority of {key!r} must be finite and >= 0, got {priority!r}")
    return value
