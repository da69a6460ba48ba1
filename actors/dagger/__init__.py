"""DAgger modes: the registry of how rollouts become corrections.

``MODES`` maps ``actors.dagger.mode`` to its strategy (who drives each chunk, whether a gate may
take over, where each segment goes with which class); config validation reads it. A new mode is
one module with a ``DaggerMode`` subclass plus one line here.

- ``dagger`` (BetaMixtureDagger): beta-mixture rollouts; every planning state relabelled with the
  expert's chunk.
- ``hg-dagger`` (HGDagger): the policy drives, an operator takes over through a gate; takeovers
  and the planning states before them become corrections.
"""

from __future__ import annotations

from fleetloop.actors.dagger.base import (
    CLASSES,
    DEMO,
    INTERVENTION,
    PRE_INTERVENTION,
    PRE_INTERVENTION_RELABEL,
    RELABEL,
    ROBOT,
    ROBOT_FAILURE,
    DaggerMode,
    Segment,
    robot_class,
    runs,
)
from fleetloop.actors.dagger.beta_mixture import BetaMixtureDagger
from fleetloop.actors.dagger.hg_dagger import HGDagger

MODES: dict[str, type[DaggerMode]] = {mode.name: mode for mode in (BetaMixtureDagger, HGDagger)}


def make_mode(name: str) -> DaggerMode:
    """The mode registered as ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the modes.
    """
    if name not in MODES:
        raise ValueError(f"unknown DAgger mode {name!r}; modes: {sorted(MODES)}")
    return MODES[name]()


__all__ = ["CLASSES", "DEMO", "INTERVENTION", "MODES", "PRE_INTERVENTION", "PRE_INTERVENTION_RELABEL", "RELABEL",
           "ROBOT", "ROBOT_FAILURE", "BetaMixtureDagger", "DaggerMode", "HGDagger", "Segment", "make_mode",
           "robot_class", "runs"]
