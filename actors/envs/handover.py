"""GR1HandoverEnv: one GR-1 hands the named object to another, who places it on the named target.

Two agents face each other across a table: ``gr1_0`` (the giver, pelvis at the origin, facing
+x) and ``gr1_1`` (the taker, pelvis at x = ``ROBOT_DISTANCE``, facing -x). The three objects
lie on the giver's half in a random order over three slots, the three targets on the taker's
half likewise. The giver picks the named object and holds it at the handover point above the
middle of the table; the taker grasps it there, the giver lets go, and the taker places it on
the named target. Success: the object rests on the target at the final step. Each agent acts
with its own 44-dim action; see gr1.py for the robot and the weld-assisted grasp.
"""

from __future__ import annotations

import numpy as np

from fleetloop.actors.envs.gr1 import (
    OBJECTS,
    TABLE_TOP,
    TARGET_PHRASES,
    TARGETS,
    GR1TableEnv,
    scene_mjcf,
)

GIVER, TAKER = "gr1_0", "gr1_1"
GIVER_TEMPLATE = "pick up the {object} and hand it to the other robot"
TAKER_TEMPLATE = "take the {object} from the other robot and place it {phrase}"
ROBOT_DISTANCE = 0.9
HANDOVER_POINT = np.array([ROBOT_DISTANCE / 2, 0.0, TABLE_TOP + 0.2])
"""World point above the middle of the table where the giver holds the object out."""

_ROW = 0.29
_COLUMNS = (-0.34, -0.16, 0.02)
_JITTER = np.array([0.03, 0.025])
_TABLE = ((ROBOT_DISTANCE / 2, 0.0), (0.3, 0.6))


class GR1HandoverEnv(GR1TableEnv):
    """Language-conditioned handover between two GR-1s (agents ``gr1_0`` and ``gr1_1``).

    Observations, actions, rewards and infos as ``GR1PickPlaceEnv``, per agent; ``grasped`` is
    whether that agent's hand holds the object. ``privileged_state(agent)`` gives the object's
    xyz and the agent's goal point in its pelvis frame: the handover point for the giver, the
    target for the taker.
    """

    metadata = {**GR1TableEnv.metadata, "name": "fleetloop_gr1_handover_v0"}
    handover_point = HANDOVER_POINT

    def __init__(
        self, image_size: int = 64, max_steps: int = 160, seed: int | None = None, shuffle_layout: bool = True
    ) -> None:
        """Build the scene; nothing is rendered until ``render_camera`` is called.

        Args:
            image_size: side in pixels of the square ``render_camera`` image.
            max_steps: control steps (20 Hz) per episode before truncation.
            seed: seed for the episode generator; ``reset(seed=...)`` reseeds it.
            shuffle_layout: deal objects and targets to their slots in a random order every
                episode; False keeps one slot per item.

        Raises:
            ValueError: an argument is out of range.
        """
        super().__init__([GIVER, TAKER], image_size, max_steps, seed, shuffle_layout)

    def instruction(self, agent: str) -> str:
        """The giver's or the taker's instruction, both naming the object; the taker's the target."""
        if agent == GIVER:
            return GIVER_TEMPLATE.format(object=self._object)
        return TAKER_TEMPLATE.format(object=self._object, phrase=TARGET_PHRASES[self._target])

    def _goal_point(self, agent: str) -> np.ndarray:
        return HANDOVER_POINT.copy() if agent == GIVER else self.target_position(agent)

    def _scene_xml(self) -> str:
        return scene_mjcf({GIVER: ((0.0, 0.0), 0.0), TAKER: ((ROBOT_DISTANCE, 0.0), np.pi)}, _TABLE)

    def _place_items(self) -> None:
        for agent, names in ((GIVER, OBJECTS), (TAKER, TARGETS)):
            position, rotation = self.scene.base_pose(agent)
            for name, slot in zip(names, self._deal(len(_COLUMNS))):
                local = np.array([_ROW, _COLUMNS[slot]]) + self._rng.uniform(-_JITTER, _JITTER)
                xy = position[:2] + rotation[:2, :2] @ local
                if name in OBJECTS:
                    self.scene.place_object(name, xy, self._rng.uniform(-np.pi, np.pi))
                else:
                    self.scene.place_target(name, xy)
