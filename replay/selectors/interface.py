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


def check_priority(key: str, priority: float) -> float:
    """Return ``priority`` as a float if it is finite and >= 0.

    Raises:
        ValueError: naming the key and the value.
    """
    value = float(priority)
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"priority of {key!r} must be finite and >= 0, got {priority!r}")
    return value
