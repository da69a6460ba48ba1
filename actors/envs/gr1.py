"""Fourier GR-1 humanoid for MuJoCo: joint layout, MJCF generation, table scenes, base env.

Words used here:
- *robot*: one GR-1, driven by one PettingZoo agent (``gr1_0``, ``gr1_1``); every MJCF name of
  it starts with ``<agent>/``. Its pelvis is fixed to the world: it stands at a table.
- *layout*: the 44 joints of GR00T's GR-1 data, in its order (``JOINT_NAMES``, grouped as the
  dataset's ``meta/modality.json`` slices in ``JOINT_GROUPS``). State = the 44 joint positions,
  action = 44 absolute joint position targets, both in this order.
- *palm site*: the grasp point of the right hand, 3 cm in front of the palm's inner face.
- *object*: a small free body on the table (red cube, green cylinder, blue ball); *target*: a
  flat static body (plate, bowl, tray) that an object is to be placed on.
- *grasp*: weld-assisted. A weld between a robot's right hand and an object switches on when
  the hand's closure (mean flexion of the four fingers and the thumb, 0 = open, 1 = fully
  closed) exceeds ``GRASP_CLOSURE`` while the palm site is within ``GRASP_RADIUS`` of the
  object's centre, and off when the closure falls back below the threshold. Robot geoms are
  visual only (they collide with nothing); objects collide with the table, targets and each other.

``GR1TableEnv`` is the PettingZoo base of the GR-1 tasks (pick_place.py, handover.py): it owns
the scene, the action checks, observations and the ego cameras; tasks add the layout, the
instructions and the success test.
"""

from __future__ import annotations

import abc
import dataclasses
import string
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium
import mujoco
import numpy as np

from fleetloop.actors.envs.base import MujocoTaskEnv

JOINT_GROUPS: dict[str, int] = {
    "left_arm": 7,
    "left_hand": 6,
    "left_leg": 6,
    "neck": 3,
    "right_arm": 7,
    "right_hand": 6,
    "right_leg": 6,
    "waist": 3,
}
"""Joint group -> width, in the order of the GR-1 dataset's state and action slices."""

ARM_JOINTS = (
    "shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow_pitch",
    "wrist_yaw", "wrist_roll", "wrist_pitch",
)
HAND_JOINTS = ("pinky", "ring", "middle", "index", "thumb_bend", "thumb_rotation")
"""Hand order of the GR-1 data: four fingers, then the thumb (see docs/gr1_sim.md)."""
LEG_JOINTS = ("hip_roll", "hip_yaw", "hip_pitch", "knee_pitch", "ankle_pitch", "ankle_roll")
NECK_JOINTS = ("neck_yaw", "neck_roll", "neck_pitch")
WAIST_JOINTS = ("waist_yaw", "waist_pitch", "waist_roll")

_GROUP_JOINTS: dict[str, tuple[str, ...]] = {
    "left_arm": tuple(f"left_{j}" for j in ARM_JOINTS),
    "left_hand": tuple(f"left_{j}" for j in HAND_JOINTS),
    "left_leg": tuple(f"left_{j}" for j in LEG_JOINTS),
    "neck": NECK_JOINTS,
    "right_arm": tuple(f"right_{j}" for j in ARM_JOINTS),
    "right_hand": tuple(f"right_{j}" for j in HAND_JOINTS),
    "right_leg": tuple(f"right_{j}" for j in LEG_JOINTS),
    "waist": WAIST_JOINTS,
}
JOINT_NAMES: tuple[str, ...] = tuple(name for group in JOINT_GROUPS for name in _GROUP_JOINTS[group])
STATE_DIM = ACTION_DIM = len(JOINT_NAMES)
RIGHT_ARM = np.array([JOINT_NAMES.index(f"right_{j}") for j in ARM_JOINTS])
"""Indices of the right arm's 7 joints in the 44-vector."""
RIGHT_HAND = np.array([JOINT_NAMES.index(f"right_{j}") for j in HAND_JOINTS])
"""Indices of the right hand's 6 joints in the 44-vector."""

SUBSTEPS = 25
"""Physics steps (MuJoCo's default 2 ms) per control step: 20 Hz control, the dataset's fps."""
GRASP_CLOSURE = 0.6
"""Hand closure (0 open .. 1 closed) above which a grasp weld may switch on."""
GRASP_RADIUS = 0.03
"""Largest palm-site to object-centre distance (m) at which closing the hand grasps."""
TABLE_TOP = 1.0
"""Table top height (m): a standing counter, for a 0.60 m shoulder-to-palm reach."""

# Geometry in metres; the robot frame has x forward, y left, z up, origin on the floor.
PELVIS_HEIGHT = 0.9
HIP_Y, THIGH, SHANK = 0.1, 0.38, 0.38
WAIST_Z, SHOULDER_Z, SHOULDER_Y, NECK_Z = 0.1, 0.35, 0.2, 0.47
UPPER_ARM, FOREARM = 0.28, 0.25
CAMERA_PITCH, CAMERA_YAW, CAMERA_FOVY = 62.0, -12.0, 62.0
"""Ego camera, degrees: tilt below the horizon, turn to the left (negative: towards the right
hand's workspace), vertical field of view."""
PALM_SITE = (0.03, -0.07)
"""Palm site offset in the hand frame: (towards the palm normal, along the hand axis)."""

_RANGES: dict[str, tuple[float, float]] = {
    "shoulder_pitch": (-2.8, 1.9), "shoulder_roll": (-3.1, 0.6), "shoulder_yaw": (-2.9, 2.9),
    "elbow_pitch": (-2.8, 0.3), "wrist_yaw": (-2.9, 2.9), "wrist_roll": (-1.6, 1.6),
    "wrist_pitch": (-1.6, 1.6),
    "pinky": (0.0, 1.7), "ring": (0.0, 1.7), "middle": (0.0, 1.7), "index": (0.0, 1.7),
    "thumb_bend": (0.0, 0.8), "thumb_rotation": (0.0, 1.9),
    "hip_roll": (-0.6, 0.2), "hip_yaw": (-0.7, 0.7), "hip_pitch": (-1.8, 0.8),
    "knee_pitch": (-0.1, 2.0), "ankle_pitch": (-1.0, 0.5), "ankle_roll": (-0.4, 0.4),
    "neck_yaw": (-1.2, 1.2), "neck_roll": (-0.4, 0.4), "neck_pitch": (-0.5, 0.9),
    "waist_yaw": (-1.0, 1.0), "waist_pitch": (-0.5, 1.0), "waist_roll": (-0.5, 0.5),
}
"""Joint ranges of the right side; the left side mirrors roll and yaw joints."""
_MIRRORED = ("shoulder_roll", "shoulder_yaw", "wrist_yaw", "wrist_roll", "hip_roll", "hip_yaw", "ankle_roll")
_GAINS: dict[str, tuple[float, float, float]] = {
    "shoulder": (600.0, 30.0, 0.1),
    "elbow": (400.0, 20.0, 0.1),
    "wrist": (60.0, 3.0, 0.02),
    "hand": (2.0, 0.1, 0.001),
    "leg": (500.0, 30.0, 0.1),
    "neck": (60.0, 4.0, 0.02),
    "waist": (2000.0, 100.0, 0.5),
}
"""Joint kind -> (position gain kp in N m/rad, joint damping, armature)."""

_HOME_RIGHT_ARM = (-0.3, -0.35, 0.0, -1.3, 0.0, 0.0, 0.0)
_HOME_LEFT_ARM = (0.0, 0.15, 0.0, -0.35, 0.0, 0.0, 0.0)
_HOME_HAND = (0.0, 0.0, 0.0, 0.0, 0.0, 1.7)
"""Open hand, thumb turned to face the fingers (the GR-1 data's typical thumb rotation)."""


def joint_range(name: str) -> tuple[float, float]:
    """Range in radians of joint ``name`` (a ``JOINT_NAMES`` entry)."""
    side, _, base = name.partition("_")
    if side not in ("left", "right"):
        return _RANGES[name]
    low, high = _RANGES[base]
    return (-high, -low) if side == "left" and base in _MIRRORED else (low, high)


def _joint_kind(name: str) -> str:
    base = name.split("_", 1)[1] if name.startswith(("left_", "right_")) else name
    if base in HAND_JOINTS:
        return "hand"
    if base in LEG_JOINTS:
        return "leg"
    return base.split("_")[0]


def _home_qpos() -> np.ndarray:
    home = dict.fromkeys(JOINT_NAMES, 0.0)
    for side, arm in (("right", _HOME_RIGHT_ARM), ("left", _HOME_LEFT_ARM)):
        home.update({f"{side}_{j}": q for j, q in zip(ARM_JOINTS, arm)})
        home.update({f"{side}_{j}": q for j, q in zip(HAND_JOINTS, _HOME_HAND)})
    return np.array([home[name] for name in JOINT_NAMES])


HOME_QPOS = _home_qpos()
"""Home pose (44,): right arm ready above the table, left arm relaxed, legs/neck/waist at 0."""


# ---------------------------------------------------------------------------------------------
# MJCF generation


def _vec(values: Sequence[float]) -> str:
    return " ".join(f"{v:.6g}" for v in values)


def _joints(prefix: str, names: Sequence[str], axes: Sequence[Sequence[float]]) -> str:
    lines = []
    for name, axis in zip(names, axes):
        _, damping, armature = _GAINS[_joint_kind(name)]
        lines.append(
            f'<joint name="{prefix}{name}" axis="{_vec(axis)}" range="{_vec(joint_range(name))}" '
            f'damping="{damping}" armature="{armature}"/>'
        )
    return "\n".join(lines)


def _capsule(start: Sequence[float], end: Sequence[float], radius: float, mass: float) -> str:
    return (
        f'<geom type="capsule" fromto="{_vec([*start, *end])}" size="{radius}" mass="{mass}" '
        f'material="gr1_link"/>'
    )


def _hand(prefix: str, side: str) -> str:
    """Right/left hand: palm box, four one-joint finger capsules, a two-joint thumb, palm site.

    The palm faces the body's midline at the zero pose (+y for the right hand) with the
    fingers pointing down and the thumb forward; fingers curl towards the palm normal.
    """
    inward = 1.0 if side == "right" else -1.0
    curl = (inward, 0.0, 0.0)
    fingers = []
    for name, x in zip(("index", "middle", "ring", "pinky"), (0.03, 0.01, -0.01, -0.03)):
        fingers.append(
            f'<body name="{prefix}{side}_{name}_finger" gravcomp="1" pos="{_vec((x, 0, -0.105))}">'
            f"{_joints(prefix, [f'{side}_{name}'], [curl])}"
            f"{_capsule((0, 0, 0), (0, 0, -0.065), 0.009, 0.02)}</body>"
        )
    thumb = (
        f'<body name="{prefix}{side}_thumb" gravcomp="1" pos="{_vec((0.04, inward * 0.008, -0.035))}">'
        f"{_joints(prefix, [f'{side}_thumb_rotation'], [(0, 0, inward)])}"
        f"{_capsule((0, 0, 0), (0.025, 0, -0.015), 0.011, 0.02)}"
        f'<body gravcomp="1" pos="0.025 0 -0.015">'
        f"{_joints(prefix, [f'{side}_thumb_bend'], [(0, inward, 0)])}"
        f"{_capsule((0, 0, 0), (0.02, 0, -0.035), 0.01, 0.02)}</body></body>"
    )
    site = f'<site name="{prefix}{side}_palm" pos="{_vec((0, inward * PALM_SITE[0], PALM_SITE[1]))}" size="0.008" rgba="0 0 0 0"/>'
    return (
        f'<body name="{prefix}{side}_hand" gravcomp="1" pos="0 0 {-FOREARM}">'
        f"{_joints(prefix, [f'{side}_wrist_yaw', f'{side}_wrist_roll', f'{side}_wrist_pitch'], [(0, 0, 1), (1, 0, 0), (0, 1, 0)])}"
        f'<geom type="box" pos="0 0 -0.055" size="0.042 0.014 0.05" mass="0.4" material="gr1_hand"/>'
        f"{site}{''.join(fingers)}{thumb}</body>"
    )


def _arm(prefix: str, side: str) -> str:
    """Shoulder (pitch, roll, yaw) at one point, upper arm, elbow pitch, forearm, hand."""
    y = SHOULDER_Y if side == "left" else -SHOULDER_Y
    names = [f"{side}_{j}" for j in ARM_JOINTS]
    return (
        f'<body name="{prefix}{side}_upper_arm" gravcomp="1" pos="0 {y} {SHOULDER_Z}">'
        f"{_joints(prefix, names[:3], [(0, 1, 0), (1, 0, 0), (0, 0, 1)])}"
        f'<geom type="sphere" size="0.055" mass="0.5" material="gr1_joint"/>'
        f"{_capsule((0, 0, 0), (0, 0, -UPPER_ARM), 0.045, 1.5)}"
        f'<body name="{prefix}{side}_forearm" gravcomp="1" pos="0 0 {-UPPER_ARM}">'
        f"{_joints(prefix, names[3:4], [(0, 1, 0)])}"
        f"{_capsule((0, 0, 0), (0, 0, -FOREARM), 0.035, 1.0)}"
        f"{_hand(prefix, side)}</body></body>"
    )


def _leg(prefix: str, side: str) -> str:
    """Hip (roll, yaw, pitch), thigh, knee, shank, ankle (pitch, roll), foot."""
    y = HIP_Y if side == "left" else -HIP_Y
    names = [f"{side}_{j}" for j in LEG_JOINTS]
    return (
        f'<body name="{prefix}{side}_thigh" gravcomp="1" pos="0 {y} -0.06">'
        f"{_joints(prefix, names[:3], [(1, 0, 0), (0, 0, 1), (0, 1, 0)])}"
        f"{_capsule((0, 0, 0), (0, 0, -THIGH), 0.06, 5.0)}"
        f'<body name="{prefix}{side}_shank" gravcomp="1" pos="0 0 {-THIGH}">'
        f"{_joints(prefix, names[3:4], [(0, 1, 0)])}"
        f"{_capsule((0, 0, 0), (0, 0, -SHANK), 0.045, 3.0)}"
        f'<body name="{prefix}{side}_foot" gravcomp="1" pos="0 0 {-SHANK}">'
        f"{_joints(prefix, names[4:], [(0, 1, 0), (1, 0, 0)])}"
        f'<geom type="box" pos="0.04 0 -0.055" size="0.11 0.05 0.02" mass="1" material="gr1_joint"/>'
        f"</body></body></body>"
    )


def _head(prefix: str) -> str:
    """Neck (yaw, roll, pitch), head and the ego camera looking down at the table in front."""
    pitch, yaw = np.deg2rad(CAMERA_PITCH), np.deg2rad(CAMERA_YAW)
    forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), -np.sin(pitch)])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    xyaxes = (*right, *np.cross(-forward, right))
    return (
        f'<body name="{prefix}head" gravcomp="1" pos="0 0 {NECK_Z}">'
        f"{_joints(prefix, NECK_JOINTS, [(0, 0, 1), (1, 0, 0), (0, 1, 0)])}"
        f"{_capsule((0, 0, 0), (0, 0, 0.06), 0.04, 0.5)}"
        f'<geom type="sphere" pos="0 0 0.1" size="0.085" mass="2.5" material="gr1_link"/>'
        f'<geom type="box" pos="0.07 0 0.11" size="0.025 0.06 0.03" material="gr1_visor"/>'
        f'<camera name="{prefix}ego" pos="0.1 0 0.11" xyaxes="{_vec(xyaxes)}" fovy="{CAMERA_FOVY}"/>'
        f"</body>"
    )


def robot_mjcf(agent: str, pos: Sequence[float], yaw: float) -> tuple[str, str]:
    """MJCF of one GR-1 with its pelvis fixed at floor point ``pos`` (x, y), facing ``yaw``.

    Returns:
        (worldbody XML, actuator XML); every name starts with ``<agent>/``.
    """
    prefix = f"{agent}/"
    quat = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
    body = (
        f'<body name="{prefix}pelvis" childclass="gr1" pos="{_vec((*pos[:2], PELVIS_HEIGHT))}" quat="{_vec(quat)}">'
        f'<geom type="capsule" fromto="0 -0.11 0 0 0.11 0" size="0.08" mass="8" material="gr1_link"/>'
        f"{_leg(prefix, 'left')}{_leg(prefix, 'right')}"
        f'<body name="{prefix}torso" gravcomp="1" pos="0 0 {WAIST_Z}">'
        f"{_joints(prefix, WAIST_JOINTS, [(0, 0, 1), (0, 1, 0), (1, 0, 0)])}"
        f"{_capsule((0, 0, 0), (0, 0, 0.2), 0.09, 6.0)}"
        f'<geom type="box" pos="0 0 0.3" size="0.09 0.15 0.11" mass="10" material="gr1_link"/>'
        f"{_head(prefix)}{_arm(prefix, 'left')}{_arm(prefix, 'right')}</body></body>"
    )
    actuators = "\n".join(
        f'<position name="{prefix}{name}" joint="{prefix}{name}" kp="{_GAINS[_joint_kind(name)][0]}" '
        f'ctrlrange="{_vec(joint_range(name))}"/>'
        for name in JOINT_NAMES
    )
    return body, actuators


@dataclasses.dataclass(frozen=True)
class Item:
    """An object or target: a name (``"red cube"``), its MJCF geom and its half height."""

    name: str
    geom: str
    half_height: float
    radius: float = 0.0
    """Targets only: how far (m) from the centre, in xy, an object still counts as on it."""

    @property
    def body(self) -> str:
        """MJCF body name: the name with underscores."""
        return self.name.replace(" ", "_")


OBJECTS: dict[str, Item] = {
    item.name: item
    for item in (
        Item("red cube", '<geom type="box" size="0.02 0.02 0.02" mass="0.05" material="red"/>', 0.02),
        Item("green cylinder", '<geom type="cylinder" size="0.02 0.025" mass="0.05" material="green"/>', 0.025),
        Item(
            "blue ball",
            '<geom type="sphere" size="0.022" mass="0.05" material="blue" condim="6" friction="1 0.01 0.002"/>',
            0.022,
        ),
    )
}
TARGETS: dict[str, Item] = {
    item.name: item
    for item in (
        Item("plate", '<geom type="cylinder" size="0.06 0.006" material="plate"/>', 0.006, 0.05),
        Item("bowl", '<geom type="cylinder" size="0.055 0.012" material="bowl"/>', 0.012, 0.045),
        Item("tray", '<geom type="box" size="0.055 0.055 0.008" material="tray"/>', 0.008, 0.045),
    )
}
TARGET_PHRASES = {"plate": "on the plate", "bowl": "in the bowl", "tray": "on the tray"}

_MATERIALS = {
    "gr1_link": "0.82 0.83 0.85 1", "gr1_joint": "0.25 0.25 0.28 1", "gr1_hand": "0.35 0.35 0.38 1",
    "gr1_visor": "0.05 0.05 0.08 1", "floor": "0.45 0.47 0.5 1", "table": "0.55 0.42 0.3 1",
    "red": "0.9 0.1 0.1 1", "green": "0.1 0.75 0.15 1", "blue": "0.1 0.25 0.95 1",
    "plate": "0.95 0.95 0.92 1", "bowl": "0.95 0.75 0.1 1", "tray": "0.45 0.2 0.55 1",
}


def scene_mjcf(robots: Mapping[str, tuple[Sequence[float], float]], table: tuple[Sequence[float], Sequence[float]]) -> str:
    """MJCF of GR-1s at a table with every object and target, and a grasp weld per hand and object.

    Args:
        robots: agent -> (floor xy, yaw) of its pelvis.
        table: (centre xy, half sizes xy) of the table; its top is at ``TABLE_TOP``.
    """
    bodies, actuators = zip(*(robot_mjcf(agent, pos, yaw) for agent, (pos, yaw) in robots.items()))
    (cx, cy), (hx, hy) = table
    objects = "".join(
        f'<body name="{o.body}" pos="0 0 {TABLE_TOP + o.half_height}"><freejoint name="{o.body}"/>{o.geom}</body>'
        for o in OBJECTS.values()
    )
    targets = "".join(
        f'<body name="{t.body}" mocap="true" pos="0 0 {TABLE_TOP + t.half_height}">{t.geom}</body>'
        for t in TARGETS.values()
    )
    welds = "".join(
        f'<weld name="{agent}/grasp/{o.body}" body1="{agent}/right_hand" body2="{o.body}" active="false"/>'
        for agent in robots
        for o in OBJECTS.values()
    )
    materials = "".join(f'<material name="{name}" rgba="{rgba}"/>' for name, rgba in _MATERIALS.items())
    return f"""<mujoco model="fleetloop_gr1_table">
  <compiler angle="radian"/>
  <option integrator="implicitfast"/>
  <visual>
    <global offwidth="512" offheight="512"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
  </visual>
  <default>
    <default class="gr1">
      <geom contype="0" conaffinity="0"/>
      <joint type="hinge" limited="true"/>
    </default>
    <position ctrllimited="true"/>
  </default>
  <asset>{materials}</asset>
  <worldbody>
    <light pos="0 0 3" dir="0 0 -1" directional="true" castshadow="false" diffuse="0.4 0.4 0.4"/>
    <geom name="floor" type="plane" size="3 3 0.1" material="floor"/>
    <geom name="table" type="box" pos="{cx} {cy} {TABLE_TOP / 2}" size="{hx} {hy} {TABLE_TOP / 2}" material="table"/>
    {''.join(bodies)}{objects}{targets}
  </worldbody>
  <equality>{welds}</equality>
  <actuator>{''.join(actuators)}</actuator>
</mujoco>"""


# ---------------------------------------------------------------------------------------------
# Scene: physics of one control step, grasps and privileged queries


@dataclasses.dataclass(frozen=True)
class Robot:
    """MuJoCo addresses of one GR-1, resolved from its ``<agent>/`` names."""

    qpos_adr: np.ndarray
    dof_adr: np.ndarray
    ctrl_adr: np.ndarray
    ctrl_low: np.ndarray
    ctrl_high: np.ndarray
    pelvis: int
    palm_site: int
    camera: str
    welds: dict[str, int]

    @classmethod
    def resolve(cls, model: mujoco.MjModel, agent: str) -> Robot:
        joints = [model.joint(f"{agent}/{name}") for name in JOINT_NAMES]
        ctrl = np.array([model.actuator(f"{agent}/{name}").id for name in JOINT_NAMES])
        return cls(
            qpos_adr=np.array([j.qposadr[0] for j in joints]),
            dof_adr=np.array([j.dofadr[0] for j in joints]),
            ctrl_adr=ctrl,
            ctrl_low=model.actuator_ctrlrange[ctrl, 0].copy(),
            ctrl_high=model.actuator_ctrlrange[ctrl, 1].copy(),
            pelvis=model.body(f"{agent}/pelvis").id,
            palm_site=model.site(f"{agent}/right_palm").id,
            camera=f"{agent}/ego",
            welds={o.name: model.equality(f"{agent}/grasp/{o.body}").id for o in OBJECTS.values()},
        )


class TableScene:
    """MuJoCo model and state of GR-1s at a table; advances control steps with grasp welds.

    Everything that defines the scene's future (joint state, controls, active welds and their
    relative poses) lives in ``model.eq_data`` and ``data``, so ``load`` makes an exact copy
    that a scripted expert can simulate forward without touching the environment.
    """

    def __init__(self, xml: str, agents: Sequence[str]) -> None:
        self.xml = xml
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        self.robots = {agent: Robot.resolve(self.model, agent) for agent in agents}
        self._object_body = {name: self.model.body(o.body).id for name, o in OBJECTS.items()}
        self._object_qpos = {name: self.model.joint(o.body).qposadr[0] for name, o in OBJECTS.items()}
        self._object_dof = {name: self.model.joint(o.body).dofadr[0] for name, o in OBJECTS.items()}
        self._target_mocap = {
            name: self.model.body_mocapid[self.model.body(t.body).id] for name, t in TARGETS.items()
        }

    def copy(self) -> TableScene:
        """An independent scene with the same model and the current state."""
        scene = TableScene(self.xml, list(self.robots))
        scene.load(self)
        return scene

    def load(self, other: TableScene) -> None:
        """Copy ``other``'s full state (same XML) into this scene."""
        self.model.eq_data[:] = other.model.eq_data
        mujoco.mj_copyData(self.data, self.model, other.data)

    def reset(self, home: Mapping[str, np.ndarray]) -> None:
        """Zero the state, put each robot at its home pose (agent -> (44,)) and release grasps."""
        mujoco.mj_resetData(self.model, self.data)
        for agent, qpos in home.items():
            robot = self.robots[agent]
            self.data.qpos[robot.qpos_adr] = qpos
            self.data.ctrl[robot.ctrl_adr] = qpos

    def place_object(self, name: str, xy: Sequence[float], yaw: float) -> None:
        """Put object ``name`` at rest on the table at world ``xy``, turned by ``yaw``."""
        adr = self._object_qpos[name]
        self.data.qpos[adr : adr + 3] = (*xy, TABLE_TOP + OBJECTS[name].half_height)
        self.data.qpos[adr + 3 : adr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))

    def place_target(self, name: str, xy: Sequence[float]) -> None:
        """Put target ``name`` on the table at world ``xy``."""
        self.data.mocap_pos[self._target_mocap[name]] = (*xy, TABLE_TOP + TARGETS[name].half_height)

    def step(self, targets: Mapping[str, np.ndarray]) -> None:
        """Set joint targets (agent -> (44,), clipped to ctrlrange), run a control step, update grasps."""
        for agent, target in targets.items():
            robot = self.robots[agent]
            self.data.ctrl[robot.ctrl_adr] = np.clip(target, robot.ctrl_low, robot.ctrl_high)
        mujoco.mj_step(self.model, self.data, nstep=SUBSTEPS)
        mujoco.mj_forward(self.model, self.data)
        for agent in self.robots:
            self._update_grasp(agent)

    def closure(self, agent: str) -> float:
        """Right-hand closure: mean flexion of four fingers and thumb over their ranges, 0..1."""
        robot = self.robots[agent]
        flex = RIGHT_HAND[:5]
        q = self.data.qpos[robot.qpos_adr[flex]]
        return float(np.mean((q - robot.ctrl_low[flex]) / (robot.ctrl_high[flex] - robot.ctrl_low[flex])))

    def held_object(self, agent: str) -> str | None:
        """Name of the object welded to ``agent``'s right hand, or None."""
        for name, weld in self.robots[agent].welds.items():
            if self.data.eq_active[weld]:
                return name
        return None

    def held_by(self, name: str) -> list[str]:
        """Agents holding object ``name``."""
        return [agent for agent in self.robots if self.held_object(agent) == name]

    def joint_positions(self, agent: str) -> np.ndarray:
        """``agent``'s 44 joint positions in ``JOINT_NAMES`` order, float64."""
        return self.data.qpos[self.robots[agent].qpos_adr].copy()

    def palm_position(self, agent: str) -> np.ndarray:
        """World position (3,) of ``agent``'s right palm site."""
        return self.data.site_xpos[self.robots[agent].palm_site].copy()

    def base_pose(self, agent: str) -> tuple[np.ndarray, np.ndarray]:
        """World (position (3,), rotation (3, 3)) of ``agent``'s pelvis (fixed to the world)."""
        body = self.robots[agent].pelvis
        rotation = np.empty(9)
        mujoco.mju_quat2Mat(rotation, self.model.body_quat[body])
        return self.model.body_pos[body].copy(), rotation.reshape(3, 3)

    def object_pose(self, name: str) -> np.ndarray:
        """World pose (7,) of object ``name``: position, then quaternion (w, x, y, z)."""
        adr = self._object_qpos[name]
        return self.data.qpos[adr : adr + 7].copy()

    def object_position(self, name: str) -> np.ndarray:
        """World position (3,) of object ``name``'s centre."""
        return self.object_pose(name)[:3]

    def object_speed(self, name: str) -> float:
        """Linear speed of object ``name`` in m/s."""
        adr = self._object_dof[name]
        return float(np.linalg.norm(self.data.qvel[adr : adr + 3]))

    def target_position(self, name: str) -> np.ndarray:
        """World position (3,) of the centre of target ``name``'s top surface."""
        centre = self.data.mocap_pos[self._target_mocap[name]]
        return centre + (0.0, 0.0, TARGETS[name].half_height)

    def over_target(self, obj: str, target: str, height_tolerance: float = 0.015) -> bool:
        """Object ``obj`` is within ``target``'s radius in xy and sits on its top (by height)."""
        offset = self.object_position(obj) - self.target_position(target)
        bottom = offset[2] - OBJECTS[obj].half_height
        return bool(np.linalg.norm(offset[:2]) <= TARGETS[target].radius and abs(bottom) <= height_tolerance)

    def rests_on(self, obj: str, target: str) -> bool:
        """``obj`` is over ``target``, held by no robot and still (speed below 5 cm/s)."""
        return self.over_target(obj, target) and not self.held_by(obj) and self.object_speed(obj) < 0.05

    def _update_grasp(self, agent: str) -> None:
        robot = self.robots[agent]
        closed = self.closure(agent) > GRASP_CLOSURE
        held = self.held_object(agent)
        if not closed:
            self.data.eq_active[list(robot.welds.values())] = False
        elif held is None:
            palm = self.palm_position(agent)
            distances = {name: np.linalg.norm(self.object_position(name) - palm) for name in OBJECTS}
            nearest = min(distances, key=distances.get)
            if distances[nearest] <= GRASP_RADIUS:
                self._weld(agent, nearest)

    def _weld(self, agent: str, name: str) -> None:
        """Activate the weld holding object ``name`` at its current pose relative to the hand."""
        hand = self.model.site_bodyid[self.robots[agent].palm_site]
        body = self._object_body[name]
        hand_rot = self.data.xmat[hand].reshape(3, 3)
        relpos = hand_rot.T @ (self.data.xpos[body] - self.data.xpos[hand])
        hand_inv = np.empty(4)
        mujoco.mju_negQuat(hand_inv, self.data.xquat[hand])
        relquat = np.empty(4)
        mujoco.mju_mulQuat(relquat, hand_inv, self.data.xquat[body])
        weld = self.robots[agent].welds[name]
        self.model.eq_data[weld, :3] = 0.0
        self.model.eq_data[weld, 3:6] = relpos
        self.model.eq_data[weld, 6:10] = relquat
        self.data.eq_active[weld] = True

    def to_base(self, agent: str, point: np.ndarray) -> np.ndarray:
        """World point (3,) in ``agent``'s pelvis frame."""
        pos, rot = self.base_pose(agent)
        return rot.T @ (point - pos)


# ---------------------------------------------------------------------------------------------
# Base environment


class GR1TableEnv(MujocoTaskEnv):
    """PettingZoo base of the GR-1 table tasks: one GR-1 per agent, one named object and target.

    Observation per agent: ``{"state": float32 (44,) joint positions in JOINT_NAMES order,
    "instruction": str}``. Action per agent: float32 (44,) absolute joint position targets in
    the same order, clipped to the joint ranges. Reward: minus ``distance``, the distance from
    the named object's centre to where it would rest on the centre of the named target.
    Infos per agent: ``{"distance": float, "success": bool, "grasped": bool}`` where
    ``grasped`` says whether this agent's right hand holds the named object. Success is judged
    at the final step; episodes always run ``max_steps`` steps, then truncate.

    ``scene`` is the MuJoCo scene (model, data, robots); accessors below the API methods are
    privileged, meant for scripted experts. ``control_dt`` is the simulated time of a step.
    """

    metadata = {"render_modes": ["rgb_array"], "is_parallelizable": True}
    render_mode = "rgb_array"
    state_dim = STATE_DIM
    action_dim = ACTION_DIM
    embodiment = "gr1"
    home_jitter = 0.05
    """Largest random offset (rad) of each right-arm joint from the home pose at reset."""

    def __init__(
        self, agents: Sequence[str], image_size: int, max_steps: int, seed: int | None, shuffle_layout: bool
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.image_size = image_size
        self.max_steps = max_steps
        self.shuffle_layout = shuffle_layout
        self.possible_agents = list(agents)
        self.agents: list[str] = []
        self.scene = TableScene(self._scene_xml(), self.possible_agents)
        self.model, self.data = self.scene.model, self.scene.data
        self.control_dt = self.model.opt.timestep * SUBSTEPS  # simulated seconds per control step
        self._rng = np.random.default_rng(seed)
        self._steps = 0
        self._object, self._target = next(iter(OBJECTS)), next(iter(TARGETS))
        text = gymnasium.spaces.Text(max_length=96, charset=string.ascii_lowercase + " ")
        state = gymnasium.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)
        self._observation_spaces = {
            agent: gymnasium.spaces.Dict({"state": state, "instruction": text}) for agent in agents
        }
        self._action_spaces = {
            agent: gymnasium.spaces.Box(
                robot.ctrl_low.astype(np.float32), robot.ctrl_high.astype(np.float32), (ACTION_DIM,), np.float32
            )
            for agent, robot in self.scene.robots.items()
        }

    @abc.abstractmethod
    def _scene_xml(self) -> str:
        """MJCF of the task's scene (``scene_mjcf`` with the task's robots and table)."""

    @abc.abstractmethod
    def _place_items(self) -> None:
        """Place every object and target for a new episode, drawing from ``self._rng``."""

    def _deal(self, count: int) -> np.ndarray:
        """Slot of each of ``count`` items: a random permutation, or in order without shuffling.

        The permutation is drawn either way, so a seed fixes the rest of the layout.
        """
        order = self._rng.permutation(count)
        return order if self.shuffle_layout else np.arange(count)

    @abc.abstractmethod
    def instruction(self, agent: str) -> str:
        """``agent``'s instruction in the current episode."""

    def observation_space(self, agent: str) -> gymnasium.spaces.Dict:
        """Dict space of ``state`` (Box (44,)) and ``instruction`` (Text)."""
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> gymnasium.spaces.Box:
        """Box (44,) of joint position targets bounded by the joint ranges."""
        return self._action_spaces[agent]

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, dict], dict[str, dict]]:
        """Start an episode: home pose with jitter, draw the object and target, lay out the table.

        Args:
            seed: reseeds the episode generator when given.
            options: ``{"object": name, "target": name}`` pins either; other keys are ignored.
                The generator is consumed identically either way, so a seed fixes the layout.

        Returns:
            (observations, infos) keyed by agent.

        Raises:
            ValueError: a pinned object or target is unknown.
        """
        options = options or {}
        for key, known in (("object", OBJECTS), ("target", TARGETS)):
            if options.get(key) is not None and options[key] not in known:
                raise ValueError(f"options[{key!r}] must be one of {tuple(known)}, got {options[key]!r}")
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        home = {}
        for agent in self.possible_agents:
            home[agent] = HOME_QPOS.copy()
            home[agent][RIGHT_ARM] += self._rng.uniform(-self.home_jitter, self.home_jitter, len(RIGHT_ARM))
        self.scene.reset(home)
        drawn = (self._rng.choice(list(OBJECTS)), self._rng.choice(list(TARGETS)))
        self._object = str(options.get("object") or drawn[0])
        self._target = str(options.get("target") or drawn[1])
        self._place_items()
        mujoco.mj_forward(self.model, self.data)
        self.agents = list(self.possible_agents)
        self._steps = 0
        return {agent: self._observe(agent) for agent in self.agents}, {
            agent: self._info(agent) for agent in self.agents
        }

    def _apply(self, actions: dict[str, np.ndarray]) -> None:
        self.scene.step(actions)

    def _camera(self, agent: str) -> str:
        return self.scene.robots[agent].camera

    def goal(self, agent: str) -> tuple[str, str]:
        """(object, target) named by the current episode's instructions."""
        return self._object, self._target

    def joint_positions(self, agent: str) -> np.ndarray:
        """Privileged: ``agent``'s 44 joint positions, float64 (the state, unrounded)."""
        return self.scene.joint_positions(agent)

    def palm_position(self, agent: str) -> np.ndarray:
        """Privileged: world position (3,) of ``agent``'s right palm site."""
        return self.scene.palm_position(agent)

    def object_pose(self, agent: str) -> np.ndarray:
        """Privileged: world pose (7,) (position, quaternion w x y z) of the named object."""
        return self.scene.object_pose(self._object)

    def target_position(self, agent: str) -> np.ndarray:
        """Privileged: world position (3,) of the centre of the named target's top surface."""
        return self.scene.target_position(self._target)

    def grasped(self, agent: str) -> bool:
        """Privileged: ``agent``'s right hand holds the named object."""
        return self.scene.held_object(agent) == self._object

    def privileged_state(self, agent: str) -> np.ndarray:
        """Named object's xyz and ``agent``'s goal point xyz in its pelvis frame, float32 (6,).

        The goal point is the named target's top centre unless the task says otherwise
        (``_goal_point``); it may be appended to the state when images alone cannot be learned.
        """
        points = (self.scene.object_position(self._object), self._goal_point(agent))
        return np.concatenate([self.scene.to_base(agent, p) for p in points]).astype(np.float32)

    def _goal_point(self, agent: str) -> np.ndarray:
        return self.target_position(agent)

    def _observe(self, agent: str) -> dict[str, Any]:
        return {"state": self.scene.joint_positions(agent).astype(np.float32), "instruction": self.instruction(agent)}

    def succeeded(self, scene: TableScene | None = None) -> bool:
        """The task's success test on ``scene`` (default: the env's own; an expert passes its scratch
        copy): the named object rests on the named target."""
        return (scene or self.scene).rests_on(self._object, self._target)

    def _info(self, agent: str) -> dict[str, Any]:
        rest = self.target_position(agent) + (0.0, 0.0, OBJECTS[self._object].half_height)
        distance = np.linalg.norm(self.scene.object_position(self._object) - rest)
        return {
            "distance": float(distance),
            "success": self.succeeded(),
            "grasped": self.grasped(agent),
        }
