"""TaskTrace: what an action chunk does in task space, as a scripted expert simulates it.

Words used here:
- *effector*: the point a task is judged by: the GR-1's right palm site, the reach arm's
  fingertip (world frame, metres).
- *grasp*: whether the robot holds the object its instruction names, after each step (None for
  tasks without grasping);
- *object*: where that object is after each step (None for tasks without one).
- *subgoal*: the phase of the task the expert is in (``grasp``, ``place`` for pick-and-place;
  ``reach`` for reaching), ``done`` once the robot's part of the task is achieved (the object
  rests on its target; what is left is moving the hand away); a takeover can end when its subgoal
  is done, and an operator does not take over a robot that is done.

Every scripted expert offers, besides ``action_chunk(agent, horizon)`` and ``action(agent)``:

- ``trace(agent, actions)``: simulate ``actions`` from the live state on a scratch copy of the
  scene (other robots follow the expert) and return their ``TaskTrace``;
- ``expert_trace(agent, horizon)``: the trace of ``action_chunk(agent, horizon)``;
- ``subgoal(agent)``: the expert's current subgoal in the live scene;
- ``can_finish(agent, steps)``: whether the expert, driving from the live state, completes the
  task within ``steps`` steps (the state is still recoverable).

Any of them raises ``ExpertUnavailable`` when the expert cannot plan from the state at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DONE = "done"
"""The subgoal of a robot whose part of the task is achieved."""


class ExpertUnavailable(RuntimeError):
    """The expert cannot plan from this state (e.g. its goal is beyond the arm's reach); the
    message says why. Whoever asked for its chunk goes on without it."""


@dataclass(frozen=True)
class TaskTrace:
    """Per executed step: the effector's position and (for grasping tasks) the grasp."""

    effector: np.ndarray
    """float (K, 3) world position of the effector after each step."""
    grasp: np.ndarray | None = None
    """bool (K,) the named object is held after each step; None: the task has no grasp."""
    object: np.ndarray | None = None
    """float (K, 3) world position of the named object after each step; None: the task has none."""

    def __len__(self) -> int:
        return int(self.effector.shape[0])

    def steps(self, start: int, stop: int) -> TaskTrace:
        """Steps ``[start, stop)``."""
        return TaskTrace(*(None if part is None else part[start:stop] for part in (self.effector, self.grasp,
                                                                                      self.object)))

    def head(self, steps: int) -> TaskTrace:
        """The first ``steps`` steps."""
        return self.steps(0, steps)
