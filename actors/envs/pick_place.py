"""GR1PickPlaceEnv: a GR-1 picks the object named by a language instruction and places it on a target.

One agent, ``gr1_0``, stands at a table (its pelvis at the world origin, facing +x) with three
objects (red cube, green cylinder, blue ball) and three targets (plate, bowl, tray). Each
episode deals the six items to six reachable slots of the right hand's workspace (two rows of
three) in a random order, jitters each slot and turns each object by a random yaw; the
instruction, e.g. "pick up the red cube and place it on the plate", names a random object and
target (``options`` pins them). Success: the named object rests on the named target at the
final step (within its radius, on its top, released, still). See gr1.py for the robot, the
weld-assisted grasp and the observation/action layout, docs/gr1_sim.md for the numbers.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

from fleetloop.actors.envs.gr1 import (
    OBJECTS,
    STATE_DIM,
    TARGET_PHRASES,
    TARGETS,
    GR1TableEnv,
    scene_mjcf,
)

AGENT = "gr1_0"
INSTRUCTION_TEMPLATE = "pick up the {object} and place it {phrase}"

_ROWS = (0.245, 0.385)
_COLUMNS = (-0.34, -0.16, 0.02)
_JITTER = np.array([0.01, 0.025])
_TABLE = ((0.45, 0.0), (0.3, 0.6))
POSE_DIM = 6
"""Floats ``privileged_state`` appends to the state when the object pose is observed."""


class GR1PickPlaceEnv(GR1TableEnv):
    """Language-conditioned pick-and-place with one GR-1 (agent ``gr1_0``).

    Observation: ``{"state": float32 (44,), "instruction": str}``; action: float32 (44,)
    absolute joint position targets (see ``GR1TableEnv``). With ``state_includes_object_pose``
    the state is (50,): the 44 joints, then ``privileged_state`` (the named object's xyz and
    the named target's xyz in the pelvis frame), and ``embodiment`` is ``"gr1_pose"``. Infos:
    ``{"distance", "success", "grasped"}``. Privileged accessors for experts: ``goal``, ``object_pose``,
    ``target_position``, ``palm_position``, ``joint_positions``, ``grasped``,
    ``privileged_state``, and ``scene`` itself.
    """

    metadata = {**GR1TableEnv.metadata, "name": "fleetloop_gr1_pick_place_v0"}

    def __init__(
        self, image_size: int = 64, max_steps: int = 120, seed: int | None = None, shuffle_layout: bool = True,
        state_includes_object_pose: bool = False,
    ) -> None:
        """Build the scene; nothing is rendered until ``render_camera`` is called.

        Args:
            image_size: side in pixels of the square ``render_camera`` image.
            max_steps: control steps (20 Hz) per episode before truncation.
            seed: seed for the episode generator; ``reset(seed=...)`` reseeds it.
            shuffle_layout: deal the items to the slots in a random order every episode, so the
                instruction can only be followed by looking; False keeps one slot per item (the
                instruction alone then locates object and target, up to the jitter).
            state_includes_object_pose: append ``privileged_state`` (6 floats) to the state, for
                policies that cannot learn the object's place from images within their budget.

        Raises:
            ValueError: an argument is out of range.
        """
        super().__init__([AGENT], image_size, max_steps, seed, shuffle_layout)
        self.state_includes_object_pose = state_includes_object_pose
        if state_includes_object_pose:
            self.state_dim = STATE_DIM + POSE_DIM
            self.embodiment = "gr1_pose"
            state = gymnasium.spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32)
            self._observation_spaces[AGENT] = gymnasium.spaces.Dict(
                {"state": state, "instruction": self._observation_spaces[AGENT]["instruction"]})

    def instruction(self, agent: str) -> str:
        """E.g. "pick up the red cube and place it on the plate"."""
        return INSTRUCTION_TEMPLATE.format(object=self._object, phrase=TARGET_PHRASES[self._target])

    def _observe(self, agent: str) -> dict[str, Any]:
        observation = super()._observe(agent)
        if self.state_includes_object_pose:
            observation["state"] = np.concatenate([observation["state"], self.privileged_state(agent)])
        return observation

    def _scene_xml(self) -> str:
        return scene_mjcf({AGENT: ((0.0, 0.0), 0.0)}, _TABLE)

    def _place_items(self) -> None:
        slots = [np.array([x, y]) for x in _ROWS for y in _COLUMNS]
        for name, slot in zip([*OBJECTS, *TARGETS], self._deal(len(slots))):
            xy = slots[slot] + self._rng.uniform(-_JITTER, _JITTER)
            if name in OBJECTS:
                self.scene.place_object(name, xy, self._rng.uniform(-np.pi, np.pi))
            else:
                self.scene.place_target(name, xy)
