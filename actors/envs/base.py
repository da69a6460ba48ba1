"""MujocoTaskEnv: what every fleetloop MuJoCo task shares as a PettingZoo ParallelEnv.

Action checks, the step protocol (validate every live agent's action, apply, advance, then
observe; episodes run ``max_steps`` control steps and truncate; reward is minus the info's
``distance``) and the on-demand ego-camera renderer. A task supplies ``action_dim``, the
MuJoCo ``model``/``data``, ``image_size``, ``max_steps`` and the hooks ``_apply``,
``_camera``, ``_observe`` and ``_info``; ``reset`` sets ``agents`` and ``_steps = 0``.
"""

from __future__ import annotations

import abc
from typing import Any

import mujoco
import numpy as np
from pettingzoo import ParallelEnv


class MujocoTaskEnv(ParallelEnv, abc.ABC):
    """Base of the reach and GR-1 tasks (see the module docstring for the contract)."""

    action_dim: int
    _renderer: mujoco.Renderer | None = None

    @abc.abstractmethod
    def _apply(self, actions: dict[str, np.ndarray]) -> None:
        """Set every live agent's checked joint targets and advance one control step."""

    @abc.abstractmethod
    def _camera(self, agent: str) -> str:
        """Name of ``agent``'s ego camera."""

    @abc.abstractmethod
    def _observe(self, agent: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _info(self, agent: str) -> dict[str, Any]: ...

    def step(
        self, actions: dict[str, np.ndarray]
    ) -> tuple[dict[str, dict], dict[str, float], dict[str, bool], dict[str, bool], dict[str, dict]]:
        """Apply absolute joint targets (clipped to the joint ranges) for every live agent and
        advance one control step.

        Returns:
            (observations, rewards, terminations, truncations, infos) keyed by agent.

        Raises:
            RuntimeError: no episode is running (call ``reset``).
            ValueError: an agent is unknown, missing, or its action is malformed or non-finite;
                nothing is applied then.
        """
        if not self.agents:
            raise RuntimeError("no episode is running; call reset() first")
        unknown = set(actions) - set(self.agents)
        if unknown:
            raise ValueError(f"actions for agents not in the episode: {sorted(unknown)}")
        for agent in self.agents:
            if agent not in actions:
                raise ValueError(f"{agent}: missing action")
        self._apply({agent: self._check_action(agent, actions[agent]) for agent in self.agents})
        self._steps += 1

        truncated = self._steps >= self.max_steps
        observations = {agent: self._observe(agent) for agent in self.agents}
        infos = {agent: self._info(agent) for agent in self.agents}
        rewards = {agent: -infos[agent]["distance"] for agent in self.agents}
        terminations = dict.fromkeys(self.agents, False)
        truncations = dict.fromkeys(self.agents, truncated)
        if truncated:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def render_camera(self, agent: str) -> np.ndarray:
        """Render ``agent``'s ego camera: uint8 (image_size, image_size, 3)."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
        self._renderer.update_scene(self.data, camera=self._camera(agent))
        return self._renderer.render()

    def render(self) -> np.ndarray:
        """Ego camera image of the first agent (``rgb_array`` mode)."""
        return self.render_camera(self.possible_agents[0])

    def close(self) -> None:
        """Release the offscreen renderer, if one was created."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def _check_action(self, agent: str, action: Any) -> np.ndarray:
        """Return ``action`` as float64 (action_dim,) or raise ValueError naming agent and problem."""
        try:
            array = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{agent}: action is not numeric ({error})") from error
        if array.shape != (self.action_dim,):
            raise ValueError(f"{agent}: action shape must be ({self.action_dim},), got {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{agent}: action has NaN or inf at indices {np.flatnonzero(~np.isfinite(array)).tolist()}")
        return array
