"""ReachExpert: scripted expert for ReachEnv, using the privileged goal position.

It solves two-link inverse kinematics for the goal (always the positive-elbow solution) and
ramps joint targets from the current joint positions toward it at a bounded speed per step,
holding the goal configuration once reached. Used to label states for DAgger.
"""

from __future__ import annotations

import numpy as np

from fleetloop.actors.envs.reach import ReachEnv


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
