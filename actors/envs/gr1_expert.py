"""Scripted experts for the GR-1 tasks (pick-and-place, handover), reading privileged state.

Each expert is a phase machine read off the scene at every step rather than remembered: what
the right hand holds, where the object is relative to the palm and to its goal. Phases: reach
above the object, descend, close the hand, lift, carry above the goal, lower, open, retreat to
the home palm position. Being stateless, the expert also labels states a learner visited
(DAgger) and recovers from drops.

One control step of an agent:
1. the phase gives a palm goal (world), a hand orientation and open/closed;
2. the palm heads for the goal by at most ``speed`` metres: the waypoint;
3. damped least squares IK (``mj_jacSite`` over the 7 right-arm joints; position plus weighted
   orientation, a small pull towards the home arm pose in the null space) from the current
   joint positions to the waypoint;
4. right-arm targets move from the current joint positions towards the IK solution by at most
   ``max_step`` rad, hand targets towards open/closed by at most ``hand_step`` rad; every other
   joint holds ``HOME_QPOS``.

``action_chunk(agent, H)`` simulates H control steps on a scratch copy of the scene (model,
state and grasp welds) with every agent following the expert, so its row k is what
``action(agent)`` returns k steps later when the chunk is executed (and, with two agents, the
other one follows the expert too). ``action(agent)`` is ``action_chunk(agent, 1)[0]``. One
simulation yields every agent's chunk and its ``TaskTrace`` (trace.py: palm positions and
grasps); asking for another agent's chunk or trace from the same state reuses it. ``trace``
simulates any chunk the same way, ``subgoal`` names the phase of the task, ``can_finish``
says whether the expert could still complete the task from the live state.
"""

from __future__ import annotations

import abc

import mujoco
import numpy as np

from fleetloop.actors.envs.gr1 import (
    FOREARM,
    HOME_QPOS,
    OBJECTS,
    PALM_SITE,
    RIGHT_ARM,
    RIGHT_HAND,
    TABLE_TOP,
    UPPER_ARM,
    GR1TableEnv,
    TableScene,
)
from fleetloop.actors.envs.handover import GIVER, HANDOVER_POINT, TAKER
from fleetloop.actors.envs.trace import DONE, ExpertUnavailable, TaskTrace

APPROACH = 0.1
"""Height (m) above the object's centre from which the palm descends onto it."""
CARRY_HEIGHT = 0.15
"""Height (m) of the carried object's centre above the table top."""
RELEASE_GAP = 0.005
"""Gap (m) between the object's bottom and the target's top when the hand opens."""
XY_TOLERANCE = 0.015
"""Palm-object distance in xy (m) below which the palm descends onto the object."""
GRASP_TOLERANCE = 0.008
"""Distance (m) to the grasp (or release) height at which the hand closes (or opens)."""
PLACE_TOLERANCE = 0.008
"""Object-goal distance in xy (m) at carry height below which the object is lowered."""
HANDOVER_TOLERANCE = 0.02
"""Object-handover point distance (m) below which the taker moves in to grasp."""
HANDOVER_STANDOFF = 0.08
"""Distance (m) to the taker's right of the handover point where it waits for the object."""

_HAND_OPEN = HOME_QPOS[RIGHT_HAND]
_HAND_CLOSED = np.array([1.5, 1.5, 1.5, 1.5, 0.7, _HAND_OPEN[5]])
_TOP_GRASP = ((0.0, 0.0, -1.0), (np.cos(0.4), np.sin(0.4), -0.5))
"""(palm normal, finger direction) in the robot frame: palm down, fingers forward-left-down."""
_SIDE_GRASP = ((0.0, 1.0, 0.0), (1.0, 0.0, -0.5))
"""Palm facing the robot's left, fingers forward and down (a handshake tilted down)."""
ARM_REACH = UPPER_ARM + FOREARM + float(np.hypot(*PALM_SITE)) + 0.05
"""Farthest palm goal (m) from the right shoulder the expert plans for: the arm's reach plus 5 cm (a
goal just beyond it is still worth reaching towards; one farther away is not reachable at all)."""
_IK_ITERATIONS = 10
_IK_DAMPING = 0.03
_IK_ORIENTATION_WEIGHT = 0.2
"""Metres of position error worth one radian of orientation error."""
_IK_POSTURE_GAIN = 0.05
_STATE = mujoco.mjtState.mjSTATE_INTEGRATION


def hand_rotation(palm_normal: np.ndarray, fingers: np.ndarray) -> np.ndarray:
    """Rotation (3, 3) of a right hand frame whose palm faces ``palm_normal``, fingers ``fingers``.

    The hand frame has y along the palm normal and -z along the fingers (see gr1.py).
    """
    normal = np.asarray(palm_normal, float) / np.linalg.norm(palm_normal)
    along = np.asarray(fingers, float) - normal * np.dot(fingers, normal)
    z = -along / np.linalg.norm(along)
    return np.column_stack([np.cross(normal, z), normal, z])


def _clip_norm(vector: np.ndarray, limit: float) -> np.ndarray:
    norm = np.linalg.norm(vector)
    return vector if norm <= limit else vector * (limit / norm)


def _rotation_error(current: np.ndarray, desired: np.ndarray) -> np.ndarray:
    """Rotation vector (3,) taking ``current`` towards ``desired``: half the sum of column crosses."""
    a, b = current, desired
    return 0.5 * np.array(
        [(a[1] * b[2] - a[2] * b[1]).sum(), (a[2] * b[0] - a[0] * b[2]).sum(), (a[0] * b[1] - a[1] * b[0]).sum()]
    )


def _pick(scene: TableScene, agent: str, obj: str) -> tuple[np.ndarray, bool]:
    """Reach above ``obj``, descend until the palm site is on its centre, then close."""
    centre, palm = scene.object_position(obj), scene.palm_position(agent)
    if np.linalg.norm(palm[:2] - centre[:2]) > XY_TOLERANCE:
        return centre + (0.0, 0.0, APPROACH), False
    return centre, palm[2] - centre[2] <= GRASP_TOLERANCE


def _carry(scene: TableScene, agent: str, obj: str, place: np.ndarray, release: bool) -> tuple[np.ndarray, bool]:
    """Lift the held ``obj``, carry it above ``place`` (its centre's goal), lower; open if ``release``."""
    centre, palm = scene.object_position(obj), scene.palm_position(agent)
    carry = max(place[2], TABLE_TOP + CARRY_HEIGHT)
    horizontal = np.linalg.norm(centre[:2] - place[:2])
    low = centre[2] < carry - 0.03
    if horizontal > 0.03 or (horizontal > PLACE_TOLERANCE and not low):
        xy = centre[:2] if low and horizontal > 0.05 else place[:2]
        goal = np.array([*xy, carry])
    else:
        goal = place
    at_place = horizontal <= 0.03 and centre[2] - place[2] <= GRASP_TOLERANCE
    return goal - (centre - palm), not (release and at_place)


class _TraceRecorder:
    """Collects, step by step, each robot's palm position, whether it holds the named object, and
    where that object is."""

    def __init__(self, env: GR1TableEnv, agents: list[str]):
        self.env = env
        self.rows: dict[str, list[tuple[np.ndarray, bool, np.ndarray]]] = {agent: [] for agent in agents}

    def record(self, scene: TableScene) -> None:
        for agent, rows in self.rows.items():
            obj = self.env.goal(agent)[0]
            rows.append((scene.palm_position(agent), scene.held_object(agent) == obj, scene.object_position(obj)))

    def traces(self) -> dict[str, TaskTrace]:
        traces = {}
        for agent, rows in self.rows.items():
            palms, grasps, objects = zip(*rows) if rows else ((), (), ())
            traces[agent] = TaskTrace(np.array(palms).reshape(-1, 3), np.array(grasps, bool),
                                      np.array(objects).reshape(-1, 3))
        return traces


class _GR1Expert(abc.ABC):
    """Shared machinery: waypoint, IK, bounded ramps, chunks simulated on a scratch scene."""

    def __init__(self, env: GR1TableEnv, max_step: float = 0.12, hand_step: float = 0.4, speed: float = 0.03) -> None:
        """Attach to ``env``.

        Args:
            env: the environment whose scene and goal the expert reads.
            max_step: largest change per control step of each arm joint target, in radians.
            hand_step: largest change per control step of each hand joint target, in radians.
            speed: largest palm displacement towards its goal per control step, in metres.

        Raises:
            ValueError: a step or speed is not positive.
        """
        for name, value in (("max_step", max_step), ("hand_step", hand_step), ("speed", speed)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.env = env
        self.max_step = max_step
        self.hand_step = hand_step
        self.speed = speed
        self._scratch = env.scene.copy()
        self._ik = mujoco.MjData(env.model)
        self._home_palm = {agent: self._home_palm_position(agent) for agent in env.possible_agents}
        self._shoulders = {agent: env.model.body(f"{agent}/right_upper_arm").id for agent in env.possible_agents}
        self._future: tuple[dict[bytes, int], dict[str, np.ndarray], dict[str, TaskTrace]] = ({}, {}, {})
        """The last simulation: (state key -> step index of each state it passed through, agent ->
        simulated chunk, agent -> its trace). A live state met on the way reuses the rest of it."""

    @abc.abstractmethod
    def _plan(self, scene: TableScene, agent: str) -> tuple[np.ndarray, np.ndarray, bool]:
        """(palm goal (3,), hand rotation (3, 3), hand closed) of ``agent`` in ``scene``."""

    @abc.abstractmethod
    def _subgoal(self, scene: TableScene, agent: str) -> str:
        """The phase of the task ``agent`` is in, in ``scene``."""

    def action_chunk(self, agent: str, horizon: int) -> np.ndarray:
        """Joint targets float32 (horizon, 44): the expert's next ``horizon`` actions, simulated.

        Raises:
            ValueError: ``horizon`` is less than 1.
        """
        chunks, _, offset = self._simulate(horizon)
        return chunks[agent][offset : offset + horizon].copy()

    def expert_trace(self, agent: str, horizon: int) -> TaskTrace:
        """The ``TaskTrace`` of ``action_chunk(agent, horizon)``."""
        _, traces, offset = self._simulate(horizon)
        return traces[agent].steps(offset, offset + horizon)

    def trace(self, agent: str, actions: np.ndarray) -> TaskTrace:
        """Simulate ``agent`` executing ``actions`` (K, 44) from the live state, every other robot
        following the expert, on the scratch scene; their ``TaskTrace``."""
        self._scratch.load(self.env.scene)
        recorder = _TraceRecorder(self.env, [agent])
        for row in np.asarray(actions, np.float32):
            moves = {other: self._act(self._scratch, other) for other in self._scratch.robots if other != agent}
            self._scratch.step({agent: row, **moves})
            recorder.record(self._scratch)
        return recorder.traces()[agent]

    def subgoal(self, agent: str) -> str:
        """``agent``'s current subgoal in the live scene (see trace.py)."""
        return self._subgoal(self.env.scene, agent)

    def can_finish(self, agent: str, steps: int) -> bool:
        """Whether every robot following the expert from the live state completes the task within
        ``steps`` steps (simulated on the scratch scene)."""
        self._scratch.load(self.env.scene)
        for _ in range(steps):
            if self.env.succeeded(self._scratch):
                return True
            self._scratch.step({other: self._act(self._scratch, other) for other in self._scratch.robots})
        return self.env.succeeded(self._scratch)

    def _simulate(self, horizon: int) -> tuple[dict[str, np.ndarray], dict[str, TaskTrace], int]:
        """(agent -> chunk, agent -> trace, offset): rows ``offset`` on of the last simulation
        start at the live state and hold at least ``horizon`` steps; simulated afresh unless the
        live state is one the last simulation passed through with enough steps left."""
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        states, chunks, traces = self._future
        offset = states.get(self._state_key(self.env.scene))
        if offset is not None and len(next(iter(chunks.values()))) - offset >= horizon:
            return chunks, traces, offset
        self._scratch.load(self.env.scene)
        agents = list(self._scratch.robots)
        rows: dict[str, list[np.ndarray]] = {agent: [] for agent in agents}
        recorder = _TraceRecorder(self.env, agents)
        states = {}
        for step in range(horizon):
            states.setdefault(self._state_key(self._scratch), step)
            actions = {agent: self._act(self._scratch, agent) for agent in agents}
            for agent, action in actions.items():
                rows[agent].append(action)
            self._scratch.step(actions)
            recorder.record(self._scratch)
        self._future = (states, {agent: np.stack(r) for agent, r in rows.items()}, recorder.traces())
        return self._future[1], self._future[2], 0

    def action(self, agent: str) -> np.ndarray:
        """Next joint target float32 (44,): ``action_chunk(agent, 1)[0]``."""
        return self._act(self.env.scene, agent)

    def _act(self, scene: TableScene, agent: str) -> np.ndarray:
        goal, rotation, closed = self._plan(scene, agent)
        shoulder = scene.data.xpos[self._shoulders[agent]]
        if np.linalg.norm(goal - shoulder) > ARM_REACH:
            raise ExpertUnavailable(f"{agent}: the palm goal {np.round(goal, 3).tolist()} is "
                                    f"{np.linalg.norm(goal - shoulder):.2f} m from the right shoulder, beyond its "
                                    f"{ARM_REACH:.2f} m reach")
        q = scene.joint_positions(agent)
        palm = scene.palm_position(agent)
        arm = self._solve_ik(scene, agent, palm + _clip_norm(goal - palm, self.speed), rotation)
        hand = _HAND_CLOSED if closed else _HAND_OPEN
        target = HOME_QPOS.copy()
        target[RIGHT_ARM] = q[RIGHT_ARM] + np.clip(arm - q[RIGHT_ARM], -self.max_step, self.max_step)
        target[RIGHT_HAND] = q[RIGHT_HAND] + np.clip(hand - q[RIGHT_HAND], -self.hand_step, self.hand_step)
        return target.astype(np.float32)

    def _solve_ik(self, scene: TableScene, agent: str, position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
        """Right-arm joint positions (7,) putting the palm site at ``position``, hand at ``rotation``."""
        model, data, robot = scene.model, self._ik, scene.robots[agent]
        qpos, dofs = robot.qpos_adr[RIGHT_ARM], robot.dof_adr[RIGHT_ARM]
        low, high = robot.ctrl_low[RIGHT_ARM], robot.ctrl_high[RIGHT_ARM]
        weight = _IK_ORIENTATION_WEIGHT
        data.qpos[:] = scene.data.qpos
        jacp, jacr = np.zeros((3, model.nv)), np.zeros((3, model.nv))
        for _ in range(_IK_ITERATIONS):
            mujoco.mj_kinematics(model, data)
            mujoco.mj_comPos(model, data)
            current = data.site_xmat[robot.palm_site].reshape(3, 3)
            error = np.concatenate([position - data.site_xpos[robot.palm_site], weight * _rotation_error(current, rotation)])
            if np.linalg.norm(error) < 1e-4:
                break
            mujoco.mj_jacSite(model, data, jacp, jacr, robot.palm_site)
            jacobian = np.vstack([jacp[:, dofs], weight * jacr[:, dofs]])
            solved = np.linalg.solve(
                jacobian @ jacobian.T + _IK_DAMPING**2 * np.eye(6), np.column_stack([jacobian, error])
            )
            posture = _IK_POSTURE_GAIN * (HOME_QPOS[RIGHT_ARM] - data.qpos[qpos])
            step = jacobian.T @ solved[:, -1] + posture - jacobian.T @ (solved[:, :-1] @ posture)
            data.qpos[qpos] = np.clip(data.qpos[qpos] + step, low, high)
        return data.qpos[qpos].copy()

    def _state_key(self, scene: TableScene) -> bytes:
        """Bytes of everything that decides the expert's future in ``scene``: state, weld poses and goals."""
        state = np.empty(mujoco.mj_stateSize(scene.model, _STATE))
        mujoco.mj_getState(scene.model, scene.data, state, _STATE)
        goals = repr([self.env.goal(agent) for agent in self.env.possible_agents]).encode()
        return state.tobytes() + scene.model.eq_data.tobytes() + goals

    def _home_palm_position(self, agent: str) -> np.ndarray:
        scene, robot = self.env.scene, self.env.scene.robots[agent]
        self._ik.qpos[robot.qpos_adr] = HOME_QPOS
        mujoco.mj_kinematics(scene.model, self._ik)
        return self._ik.site_xpos[robot.palm_site].copy()

    def _world_rotation(self, scene: TableScene, agent: str, grasp: tuple) -> np.ndarray:
        """Hand rotation of ``grasp`` ((palm normal, fingers) in the robot frame) in the world."""
        _, base = scene.base_pose(agent)
        return base @ hand_rotation(*grasp)


class GR1PickPlaceExpert(_GR1Expert):
    """Joint-target chunks that make ``GR1PickPlaceEnv``'s robot put the named object on the target."""

    def _plan(self, scene: TableScene, agent: str) -> tuple[np.ndarray, np.ndarray, bool]:
        obj, target = self.env.goal(agent)
        rotation = self._world_rotation(scene, agent, _TOP_GRASP)
        if scene.held_object(agent) == obj:
            place = scene.target_position(target) + (0.0, 0.0, OBJECTS[obj].half_height + RELEASE_GAP)
            goal, closed = _carry(scene, agent, obj, place, release=True)
        elif scene.over_target(obj, target):
            goal, closed = self._home_palm[agent], False
        else:
            goal, closed = _pick(scene, agent, obj)
        return goal, rotation, closed

    def _subgoal(self, scene: TableScene, agent: str) -> str:
        obj, target = self.env.goal(agent)
        if scene.held_object(agent) == obj:
            return "place"
        if scene.rests_on(obj, target):
            return DONE
        return "settle" if scene.over_target(obj, target) else "grasp"


class GR1HandoverExpert(_GR1Expert):
    """Joint-target chunks for both robots of ``GR1HandoverEnv``, coordinated by phases.

    The giver (``gr1_0``) picks the object with a top grasp and holds it at the handover point;
    the taker (``gr1_1``) waits beside that point, closes a side grasp on the object once it is
    there; the giver opens as soon as both hold it and retreats; the taker places the object.
    """

    def _plan(self, scene: TableScene, agent: str) -> tuple[np.ndarray, np.ndarray, bool]:
        obj, target = self.env.goal(agent)
        holders = scene.held_by(obj)
        if agent == GIVER:
            rotation = self._world_rotation(scene, agent, _TOP_GRASP)
            goal, closed = self._give(scene, obj, target, holders)
        else:
            rotation = self._world_rotation(scene, agent, _SIDE_GRASP)
            goal, closed = self._take(scene, obj, target, holders)
        return goal, rotation, closed

    def _subgoal(self, scene: TableScene, agent: str) -> str:
        """Giver: grasp, hand over, then done once the taker holds it; taker: wait, take, place, done."""
        obj, target = self.env.goal(agent)
        holders = scene.held_by(obj)
        if scene.rests_on(obj, target):
            return DONE
        if agent == GIVER:
            if TAKER in holders:
                return DONE
            return "hand_over" if GIVER in holders else "grasp"
        if TAKER in holders:
            return "take" if GIVER in holders else "place"
        return "wait"

    def _give(self, scene: TableScene, obj: str, target: str, holders: list[str]) -> tuple[np.ndarray, bool]:
        if TAKER in holders:
            return (scene.palm_position(GIVER), False) if GIVER in holders else (self._home_palm[GIVER], False)
        if scene.over_target(obj, target):
            return self._home_palm[GIVER], False
        if GIVER in holders:
            return _carry(scene, GIVER, obj, HANDOVER_POINT, release=False)
        return _pick(scene, GIVER, obj)

    def _take(self, scene: TableScene, obj: str, target: str, holders: list[str]) -> tuple[np.ndarray, bool]:
        if TAKER in holders:
            if GIVER in holders:
                return scene.palm_position(TAKER), True
            place = scene.target_position(target) + (0.0, 0.0, OBJECTS[obj].half_height + RELEASE_GAP)
            return _carry(scene, TAKER, obj, place, release=True)
        if scene.over_target(obj, target) or GIVER not in holders:
            return self._home_palm[TAKER], False
        centre = scene.object_position(obj)
        if np.linalg.norm(centre - HANDOVER_POINT) > HANDOVER_TOLERANCE:
            _, base = scene.base_pose(TAKER)
            return HANDOVER_POINT - HANDOVER_STANDOFF * base[:, 1], False
        return centre, np.linalg.norm(scene.palm_position(TAKER) - centre) <= GRASP_TOLERANCE
