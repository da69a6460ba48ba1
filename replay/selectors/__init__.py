"""Selectors: strategies picking which items a sample returns, one per module.

- :mod:`.interface`: the :class:`Selector` contract;
- :mod:`.uniform`, :mod:`.prioritized`, :mod:`.fifo`: the strategies, named in
  ``TableConfig.sampler`` by their ``name``.
"""

from .fifo import FifoSelector
from .interface import Selector
from .prioritized import PrioritizedSelector
from .uniform import UniformSelector

SELECTORS: dict[str, type[Selector]] = {
    cls.name: cls for cls in (UniformSelector, PrioritizedSelector, FifoSelector)
}
"""Selector classes by name."""


def make_selector(name: str, priority_exponent: float = 1.0) -> Selector:
    """A new empty selector of the named strategy.

    Args:
        name: one of SELECTORS.
        priority_exponent: used by ``"prioritized"`` only.

    Raises:
        ValueError: unknown name or invalid exponent.
    """
    if name not in SELECTORS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SELECTORS)}")
    if name == PrioritizedSelector.name:
        return PrioritizedSelector(priority_exponent)
    return SELECTORS[name]()


__all__ = [
    "SELECTORS",
    "FifoSelector",
    "PrioritizedSelector",
    "Selector",
    "UniformSelector",
    "make_selector",
]
