"""ReachEnv: a planar two-link arm reaches the coloured ball named by a language instruction.

Words used here:
- *arm*: one robot, driven by one PettingZoo agent (``arm_0``); its MJCF names start ``arm_0/``.
- *target*: one of three coloured balls (red, green, blue) on the table. Each episode assigns the
  colours to three reachable slots in a random order and jitters each slot a little, so the
  camera image, not the colour name alone, tells where the goal is.
- *goal*: the target the instruction names ("reach the red ball").
- *success*: the fingertip is within ``success_threshold`` metres of the goal; an episode is
  judged at its final step (episodes always run ``max_steps`` steps, then truncate).

Observations carry proprioceptive state and the instruction; images come from
``render_camera(agent)`` on demand because a software-rendered frame costs tens of ms.
"""

from __future__ import annotations

import dataclasses
import string
from pathlib import Path
from typing import Any

import gymnasium
import mujoco
import numpy as np

from fleetloop.actors.envs.base import MujocoTaskEnv

ASSET_PATH = Path(__file__).parent / "assets" / "reach_arm.xml"
COLOURS = ("red", "green", "blue")
INSTRUCTION_TEMPLATE = "reach the {colour} ball"

_SLOT_RADIUS = 0.27
_SLOT_ANGLES = (0.7, 0.0, -0.7)
_SLOT_JITTER = 0.025
_HOME_QPOS = (0.0, 2.2)
_HOME_JITTER = 0.1
_SUBSTEPS = 5


@dataclasses.dataclass(frozen=True)
class _Arm:
    """MuJoCo addresses of one arm, resolved from its ``<agent>/`` names."""

    qpos_adr: np.ndarray
    qvel_adr: np.ndarray
    ctrl_adr: np.ndarray
    base_body: int
    fingertip_site: int
    camera: str

    @classmethod
    def resolve(cls, model: mujoco.MjModel, agent: str) -> _Arm:
        joints = [model.joint(f"{agent}/{name}") for name in ("shoulder", "elbow")]
        return cls(
            qpos_adr=np.array([j.qposadr[0] for j in joints]),
            qvel_adr=np.array([j.dofadr[0] for j in joints]),
            ctrl_adr=np.array([model.actuator(f"{agent}/{n}").id for n in ("shoulder", "elbow")]),
            base_body=model.body(f"{agent}/base").id,
            fingertip_site=model.site(f"{agent}/fingertip").id,
            camera="ego",
        )


class ReachEnv(MujocoTaskEnv):
    """Language-conditioned reaching with one planar arm per agent.

    Observation per agent: ``{"state": float32 (4,) = [q_shoulder, q_elbow, qd_shoulder,
    qd_elbow], "instruction": str}``. Action per agent: float32 (2,) absolute joint position
    targets in radians, clipped to the joint limits. Reward: minus the fingertip-goal distance.
    Infos per agent: ``{"distance": float, "success": bool}``.

    ``model``/``data`` are the MuJoCo model and state; ``link_lengths`` (upper arm, forearm) in
    metres is shared by every arm. ``goal_position`` is privileged, meant for scripted experts.
    """

    metadata = {
        "name": "fleetloop_reach_v0",
        "render_modes": ["rgb_array"],
        "is_parallelizable": True,
    }
    render_mode = "rgb_array"
    state_dim = 4
    action_dim = 2
    embodiment = "sim_arm"

    def __init__(
        self,
        image_size: int = 64,
        max_steps: int = 64,
        seed: int | None = None,
        success_threshold: float = 0.03,
        shuffle_layout: bool = True,
    ) -> None:
        """Load the scene; nothing is rendered until ``render_camera`` is called.

        Args:
            image_size: side in pixels of the square ``render_camera`` image.
            max_steps: env steps per episode before truncation.
            seed: seed for the episode generator; ``reset(seed=...)`` reseeds it.
            success_threshold: fingertip-goal distance in metres that counts as success.
            shuffle_layout: shuffle which ball sits on which spot every episode, so the
                instruction can only be followed by looking; False keeps one colour per
                spot (the instruction alone then locates the goal, up to the jitter).

        Raises:
            ValueError: an argument is out of range.
        """
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if not success_threshold > 0:
            raise ValueError(f"success_threshold must be > 0, got {success_threshold}")
        self.image_size = image_size
        self.max_steps = max_steps
        self.success_threshold = success_threshold
        self.shuffle_layout = shuffle_layout
        self.possible_agents = ["arm_0"]
        self.model = mujoco.MjModel.from_xml_path(str(ASSET_PATH))
        self.data = mujoco.MjData(self.model)
        self.control_dt = self.model.opt.timestep * _SUBSTEPS  # simulated seconds per control step
        self.agents: list[str] = []
        self._arms = {agent: _Arm.resolve(self.model, agent) for agent in self.possible_agents}
        self._target_mocap = {
            colour: self.model.body_mocapid[self.model.body(f"target_{colour}").id]
            for colour in COLOURS
        }
        self._goals: dict[str, str] = {}
        self._rng = np.random.default_rng(seed)
        self._steps = 0

        first = self.possible_agents[0]
        self.link_lengths = (
            float(np.linalg.norm(self.model.body(f"{first}/forearm").pos)),
            float(np.linalg.norm(self.model.site_pos[self._arms[first].fingertip_site])),
        )
        self._observation_spaces = {
            agent: gymnasium.spaces.Dict(
                {
                    "state": gymnasium.spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32),
                    "instruction": gymnasium.spaces.Text(
                        max_length=64, charset=string.ascii_lowercase + " "
                    ),
                }
            )
            for agent in self.possible_agents
        }
        self._action_spaces = {}
        for agent, arm in self._arms.items():
            low, high = self.model.actuator_ctrlrange[arm.ctrl_adr].T.astype(np.float32)
            self._action_spaces[agent] = gymnasium.spaces.Box(
                low, high, (self.action_dim,), np.float32
            )

    def observation_space(self, agent: str) -> gymnasium.spaces.Dict:
        """Dict space of ``state`` (Box (4,)) and ``instruction`` (Text)."""
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> gymnasium.spaces.Box:
        """Box (2,) of joint position targets bounded by the joint limits."""
        return self._action_spaces[agent]

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, dict], dict[str, dict]]:
        """Start an episode: place targets, pick goals, jitter the home pose.

        Args:
            seed: reseeds the episode generator when given.
            options: ``{"goal": colour}`` pins every agent's goal; other keys are ignored.
                The generator is consumed identically either way, so a seed fixes the layout.

        Returns:
            (observations, infos) keyed by agent.

        Raises:
            ValueError: ``options["goal"]`` is not one of ``COLOURS``.
        """
        pinned = (options or {}).get("goal")
        if pinned is not None and pinned not in COLOURS:
            raise ValueError(f"options['goal'] must be one of {COLOURS}, got {pinned!r}")
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        mujoco.mj_resetData(self.model, self.data)
        order = self._rng.permutation(len(COLOURS))  # drawn either way: a seed fixes the rest
        if not self.shuffle_layout:
            order = np.arange(len(COLOURS))
        for slot, colour_index in enumerate(order):
            angle = _SLOT_ANGLES[slot]
            xy = _SLOT_RADIUS * np.array([np.cos(angle), np.sin(angle)])
            mocap = self._target_mocap[COLOURS[colour_index]]
            self.data.mocap_pos[mocap, :2] = xy + self._rng.uniform(-_SLOT_JITTER, _SLOT_JITTER, 2)
        self.agents = list(self.possible_agents)
        for agent in self.agents:
            arm = self._arms[agent]
            drawn = COLOURS[self._rng.integers(len(COLOURS))]
            self._goals[agent] = pinned or drawn
            qpos = np.array(_HOME_QPOS) + self._rng.uniform(-_HOME_JITTER, _HOME_JITTER, 2)
            self.data.qpos[arm.qpos_adr] = qpos
            self.data.ctrl[arm.ctrl_adr] = qpos
        mujoco.mj_forward(self.model, self.data)
        self._steps = 0
        return {agent: self._observe(agent) for agent in self.agents}, {
            agent: self._info(agent) for agent in self.agents
        }

    def _apply(self, actions: dict[str, np.ndarray]) -> None:
        self.advance(self.data, actions)

    def advance(self, data: mujoco.MjData, actions: dict[str, np.ndarray]) -> None:
        """One control step of ``data`` (the env's own, or an expert's scratch copy) under joint targets."""
        for agent, target in actions.items():
            space = self._action_spaces[agent]
            data.ctrl[self._arms[agent].ctrl_adr] = np.clip(target, space.low, space.high)
        mujoco.mj_step(self.model, data, nstep=_SUBSTEPS)

    def fingertip(self, agent: str, data: mujoco.MjData | None = None) -> np.ndarray:
        """Privileged: world position (3,) of ``agent``'s fingertip in ``data`` (default: the env's)."""
        return (data or self.data).site_xpos[self._arms[agent].fingertip_site].copy()

    def succeeded(self, agent: str, data: mujoco.MjData | None = None) -> bool:
        """The fingertip is within ``success_threshold`` of the goal in ``data`` (default: the env's)."""
        goal = self.data.mocap_pos[self._target_mocap[self._goals[agent]]]
        return bool(np.linalg.norm(self.fingertip(agent, data) - goal) <= self.success_threshold)

    def _camera(self, agent: str) -> str:
        return self._arms[agent].camera

    def goal(self, agent: str) -> str:
        """Colour of ``agent``'s goal in the current episode."""
        return self._goals[agent]

    def goal_position(self, agent: str) -> np.ndarray:
        """Privileged: goal xy (2,) in ``agent``'s base frame, for scripted experts."""
        goal = self.data.mocap_pos[self._target_mocap[self._goals[agent]], :2]
        return goal - self.data.xpos[self._arms[agent].base_body, :2]

    def joint_positions(self, agent: str) -> np.ndarray:
        """Current [q_shoulder, q_elbow] of ``agent``'s arm, float64 (2,)."""
        return self.data.qpos[self._arms[agent].qpos_adr].copy()

    def _observe(self, agent: str) -> dict[str, Any]:
        arm = self._arms[agent]
        state = np.concatenate([self.data.qpos[arm.qpos_adr], self.data.qvel[arm.qvel_adr]])
        return {
            "state": state.astype(np.float32),
            "instruction": INSTRUCTION_TEMPLATE.format(colour=self._goals[agent]),
        }

    def _info(self, agent: str) -> dict[str, Any]:
        goal = self.data.mocap_pos[self._target_mocap[self._goals[agent]]]
        distance = float(np.linalg.norm(self.fingertip(agent) - goal))
        return {"distance": distance, "success": distance <= self.success_threshold}
