"""ReachExpert: scripted expert for ReachEnv, using the privileged goal position.

It solves two-link inverse kinematics for the goal (always the positive-elbow solution) and
ramps joint targets from the current joint positions toward it at a bounded speed per step,
holding the goal configuration once reached. Used to label states for DAgger. Traces
(trace.py) simulate a chunk on a scratch copy of the env's MuJoCo data; the effector is the
fingertip and there is no grasp.
"""

from __future__ import annotations

import mujoco
import numpy as np

from fleetloop.actors.envs.reach import ReachEnv
from fleetloop.actors.envs.trace import DONE, TaskTrace


class ReachExpert:
    """Joint-target chunks that move ``env``'s arm onto its goal ball."""

    def __init__(self, env: ReachEnv, max_step: float = 0.2) -> None:
        """Attach to ``env``.

        Args:
            env: the environment whose state and goal the expert reads.
            max_step: largest change per control step of each joint target, in radians.

        Raises:
            ValueError: ``max_step`` is not positive.
        """
        if not max_step > 0:
            raise ValueError(f"max_step must be > 0, got {max_step}")
        self.env = env
        self.max_step = max_step
        self._scratch = mujoco.MjData(env.model)

    def goal_configuration(self, agent: str) -> np.ndarray:
        """Joint positions (2,) putting the fingertip on the goal, clipped to the joint limits."""
        l1, l2 = self.env.link_lengths
        x, y = self.env.goal_position(agent)
        cos_elbow = (x * x + y * y - l1 * l1 - l2 * l2) / (2.0 * l1 * l2)
        elbow = np.arccos(np.clip(cos_elbow, -1.0, 1.0))
        shoulder = np.arctan2(y, x) - np.arctan2(l2 * np.sin(elbow), l1 + l2 * np.cos(elbow))
        space = self.env.action_space(agent)
        return np.clip([shoulder, elbow], space.low, space.high)

    def action_chunk(self, agent: str, horizon: int) -> np.ndarray:
        """Joint targets float32 (horizon, 2): a ramp from the current pose to the goal, then held.

        Raises:
            ValueError: ``horizon`` is less than 1.
        """
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        current = self.env.joint_positions(agent)
        delta = self.goal_configuration(agent) - current
        reach = self.max_step * np.arange(1, horizon + 1)[:, None]
        return (current + np.clip(delta, -reach, reach)).astype(np.float32)

    def action(self, agent: str) -> np.ndarray:
        """Next joint target float32 (2,): ``action_chunk(agent, 1)[0]``."""
        return self.action_chunk(agent, 1)[0]

    def trace(self, agent: str, actions: np.ndarray) -> TaskTrace:
        """Simulate ``actions`` (K, 2) from the live state on a scratch copy; the fingertip's path."""
        mujoco.mj_copyData(self._scratch, self.env.model, self.env.data)
        path = []
        for row in np.asarray(actions, np.float32):
            self.env.advance(self._scratch, {agent: row})
            path.append(self.env.fingertip(agent, self._scratch))
        return TaskTrace(np.array(path).reshape(-1, 3))

    def expert_trace(self, agent: str, horizon: int) -> TaskTrace:
        """The ``TaskTrace`` of ``action_chunk(agent, horizon)``."""
        return self.trace(agent, self.action_chunk(agent, horizon))

    def subgoal(self, agent: str) -> str:
        """``reach`` until the fingertip is on the goal, then ``done``."""
        return DONE if self.env.succeeded(agent) else "reach"

    def can_finish(self, agent: str, steps: int) -> bool:
        """Whether the expert's ramp from the live state ends on the goal within ``steps`` steps."""
        self.trace(agent, self.action_chunk(agent, max(1, steps)))
        return self.env.succeeded(agent, self._scratch)
