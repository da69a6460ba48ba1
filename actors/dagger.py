"""DAgger variants and the correction classes of the episodes actors write.

Every episode an actor writes carries its class as ``source``:

- ``demo``: an expert demonstration (the expert drove every step);
- ``relabel``: the expert's label of every state a DAgger trajectory visited;
- ``intervention``: steps the expert/operator drove after taking over (HG-DAgger);
- ``pre_intervention``: the policy's last steps before a takeover (what went wrong);
- ``robot``: the policy's own steps, nowhere near a takeover.

Modes (``actors.dagger.mode``):

- ``dagger``: a beta-mixture rollout; the executed steps go to ``rollouts`` as ``robot`` and the
  expert labels of all its states to ``corrections`` as ``relabel``.
- ``hg-dagger``: the policy drives and an InterventionGate lets the expert take over; only the
  takeover segments become ``corrections`` (``intervention``); the policy's segments go to
  ``rollouts`` as ``pre_intervention`` or ``robot``.

An episode's initial replay priority is its class weight (``actors.dagger.class_weights``), so a
table sampled ``prioritized`` draws each class in proportion to its weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fleetloop.actors.rollout import Trajectory
from fleetloop.replay import Episode

CLASSES = ("demo", "relabel", "intervention", "pre_intervention", "robot")
DEMO, RELABEL, INTERVENTION, PRE_INTERVENTION, ROBOT = CLASSES
MODES = ("dagger", "hg-dagger")


def beta_for_round(beta_start: float, beta_decay: float, round_index: int) -> float:
    """Probability that the expert drives a chunk in ``round_index`` (beta_i = beta_0 * decay^i)."""
    if round_index < 0:
        raise ValueError(f"round_index must be >= 0, got {round_index}")
    return beta_start * beta_decay**round_index


@dataclass(frozen=True)
class Segment:
    """Steps ``[start, end)`` of a trajectory that belong to one correction class."""

    cls: str
    start: int
    end: int


def segments(intervened: Sequence[bool], pre_steps: int) -> list[Segment]:
    """Split a gated trajectory into takeover runs (``intervention``), the up to ``pre_steps``
    policy steps before each takeover (``pre_intervention``), and the rest (``robot``), in order."""
    if pre_steps < 0:
        raise ValueError(f"pre_steps must be >= 0, got {pre_steps}")
    classes = [INTERVENTION if flag else ROBOT for flag in intervened]
    for step in range(1, len(classes)):
        if intervened[step] and not intervened[step - 1]:
            for before in range(max(0, step - pre_steps), step):
                if not intervened[before]:
                    classes[before] = PRE_INTERVENTION
    result: list[Segment] = []
    for step, cls in enumerate(classes):
        if result and result[-1].cls == cls and result[-1].end == step:
            result[-1] = Segment(cls, result[-1].start, step + 1)
        else:
            result.append(Segment(cls, step, step + 1))
    return result


def to_episode(traj: Trajectory, *, relabel: bool, source: str, embodiment: str, policy_version: int,
               actor_id: str, start: int = 0, end: int | None = None) -> Episode:
    """The replay episode of steps ``[start, end)`` of a trajectory: executed actions, or the
    expert's labels when ``relabel``. A segment starts with the newest frame rendered at or
    before its first step (what the robot last saw)."""
    end = len(traj.states) if end is None else end
    if not 0 <= start < end <= len(traj.states):
        raise ValueError(f"segment [{start}, {end}) is outside the trajectory's {len(traj.states)} steps")
    first_frame = max(step for step in traj.frames if step <= start)
    frames = {0: traj.frames[first_frame]}
    frames.update({step - start: frame for step, frame in traj.frames.items() if start < step < end})
    return Episode(
        states=np.stack(traj.states[start:end]).astype(np.float32),
        actions=np.stack((traj.labels if relabel else traj.actions)[start:end]).astype(np.float32),
        frames=frames,
        instruction=traj.instruction,
        embodiment=embodiment,
        source=source,
        policy_version=policy_version,
        actor_id=actor_id,
        intervened=np.asarray(traj.intervened[start:end], dtype=bool),
        rewards=np.asarray(traj.rewards[start:end], dtype=np.float32),
        success=traj.success,
    )
