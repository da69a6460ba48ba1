"""What every DAgger mode shares: the correction classes, segments, and the mode interface.

Every episode an actor writes carries its correction class as ``source``:

- ``demo``: an expert demonstration (the expert drove every step);
- ``relabel``: planning states of a DAgger rollout, each labelled with the expert's H-step chunk
  from that state (``dagger`` mode);
- ``intervention``: the steps an operator drove after taking over, each labelled with the
  expert's chunk from that state when a simulated operator drove, else with the executed actions;
- ``pre_intervention_relabel``: the policy's planning state(s) just before a takeover, labelled
  with the expert's chunk from there: where the wrong decision was made;
- ``pre_intervention``: the policy's own steps just before a takeover (what went wrong; weighted
  about 0 by the learner);
- ``robot``: the policy's own steps, nowhere near a takeover, in an episode that succeeded (the
  operator let them run and the task got done: Sirius trains on them);
- ``robot_failure``: the same in an episode that failed (the gate missed what went wrong; weighted
  0 by default).

A *mode* (``actors.dagger.mode``) decides who drives each chunk, whether a gate may take over,
and where each part of a finished trajectory goes (table and class): its ``segments``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from fleetloop.actors.rollout import Trajectory
    from fleetloop.config import DaggerSection

CLASSES = ("demo", "relabel", "intervention", "pre_intervention_relabel", "pre_intervention", "robot", "robot_failure")
DEMO, RELABEL, INTERVENTION, PRE_INTERVENTION_RELABEL, PRE_INTERVENTION, ROBOT, ROBOT_FAILURE = CLASSES


def robot_class(success: bool) -> str:
    """The class of the policy's own steps in an episode that succeeded or failed."""
    return ROBOT if success else ROBOT_FAILURE


@dataclass(frozen=True)
class Segment:
    """Steps of a trajectory written as one episode of ``cls`` to ``table``.

    ``labelled``: each step's action is the expert's chunk recorded at that step
    (``Trajectory.labels``); otherwise the executed actions. Labelled steps need not be
    consecutive (e.g. planning states); unlabelled ones are.
    """

    table: str
    cls: str
    steps: tuple[int, ...]
    labelled: bool = False

    @classmethod
    def whole(cls, table: str, correction_class: str, length: int) -> "Segment":
        """Every step of a trajectory of ``length`` steps, unlabelled (a demonstration, a rollout)."""
        return cls(table, correction_class, tuple(range(length)))


def runs(steps: Sequence[int]) -> list[tuple[int, ...]]:
    """Consecutive runs of sorted ``steps``: [0, 1, 2, 5, 6] -> [(0, 1, 2), (5, 6)]."""
    result: list[list[int]] = []
    for step in steps:
        if result and result[-1][-1] == step - 1:
            result[-1].append(step)
        else:
            result.append([step])
    return [tuple(run) for run in result]


class DaggerMode(abc.ABC):
    """A DAgger variant (one module per mode, registered in actors/dagger/__init__.py)."""

    name: ClassVar[str]
    gated: ClassVar[bool]
    """An operator watches the policy through a gate and may take over (needs a policy)."""

    def judges_plans(self, options: "DaggerSection") -> bool:
        """Whether an operator judges the policy's plans in this mode's episodes (``options``:
        actors.dagger); a gated mode always does."""
        return self.gated

    def expert_drives(self, rng: np.random.Generator, beta: float) -> bool:
        """Whether the expert drives the next chunk of an ungated rollout."""
        return False

    def beta(self, beta_start: float, beta_decay: float, round_index: int) -> float:
        """The probability the expert drives a chunk in ``round_index`` (ungated modes)."""
        return 0.0

    @abc.abstractmethod
    def segments(self, traj: "Trajectory", options: "DaggerSection") -> list[Segment]:
        """The parts of a finished trajectory to write, in order (``options``: actors.dagger)."""
