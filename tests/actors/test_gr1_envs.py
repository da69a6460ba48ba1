"""GR-1 envs (pick-and-place, handover) and their experts: layout, API, grasps, camera, experts."""

import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from fleetloop.actors.dagger import HGDagger
from fleetloop.actors.envs import make_env
from fleetloop.actors.envs.gr1 import (
    JOINT_GROUPS,
    JOINT_NAMES,
    OBJECTS,
    RIGHT_ARM,
    RIGHT_HAND,
    STATE_DIM,
    TARGET_PHRASES,
    TARGETS,
    joint_range,
)
from fleetloop.actors.envs.gr1_expert import GR1HandoverExpert, GR1PickPlaceExpert
from fleetloop.actors.envs.handover import GIVER, TAKER, GR1HandoverEnv
from fleetloop.actors.envs.pick_place import AGENT, GR1PickPlaceEnv
from fleetloop.actors.gates import TaskSpaceOptions, make_gate
from fleetloop.actors.operator import SimulatedOperator
from fleetloop.actors.rollout import run_episodes
from fleetloop.system.embodiment import embodiment_layout


@pytest.fixture
def env():
    env = GR1PickPlaceEnv(seed=0)
    yield env
    env.close()


@pytest.fixture
def handover():
    env = GR1HandoverEnv(seed=0)
    yield env
    env.close()


def hold(env):
    """Actions holding every live agent at its current joint positions."""
    return {agent: env.joint_positions(agent).astype(np.float32) for agent in env.agents}


def put_object(env, obj, xy, height):
    """Teleport ``obj`` (at rest, unturned) so its centre is at (xy, height)."""
    adr = env.model.joint(OBJECTS[obj].body).qposadr[0]
    env.data.qpos[adr : adr + 7] = (*xy, height, 1.0, 0.0, 0.0, 0.0)
    env.data.qvel[env.model.joint(OBJECTS[obj].body).dofadr[0] :][:6] = 0.0
    mujoco.mj_forward(env.model, env.data)


def run_expert(env, expert, seed, horizon=16, execute=8, options=None):
    """One episode driven by expert chunks; return (final infos, agents that ever grasped)."""
    env.reset(seed=seed, options=options)
    grasped = set()
    while env.agents:
        chunks = {agent: expert.action_chunk(agent, horizon) for agent in env.agents}
        for k in range(execute):
            _, _, _, _, infos = env.step({agent: chunk[k] for agent, chunk in chunks.items()})
            grasped |= {agent for agent, info in infos.items() if info["grasped"]}
            if not env.agents:
                break
    return infos, grasped


def test_joint_layout_matches_the_gr1_dataset(shared_dataset):
    modality = json.loads((shared_dataset / "meta" / "modality.json").read_text())
    assert len(JOINT_NAMES) == len(set(JOINT_NAMES)) == STATE_DIM == 44
    start = 0
    for group, width in JOINT_GROUPS.items():
        for kind in ("state", "action"):
            assert modality[kind][group] == {"start": start, "end": start + width}, (kind, group)
        side, _, part = group.partition("_")
        names = JOINT_NAMES[start : start + width]
        assert all(name.startswith(side if part in ("arm", "hand", "leg") else group) for name in names), names
        start += width
    for kind in ("state", "action"):
        assert list(modality[kind]) == list(JOINT_GROUPS)
    layout = embodiment_layout("gr1")
    assert dict(layout.state) == {g: (s["start"], s["end"]) for g, s in modality["state"].items()}


def test_state_is_the_joint_positions_in_layout_order(env):
    obs, _ = env.reset(seed=1)
    model, data = env.model, env.data
    joints = [model.joint(f"{AGENT}/{name}") for name in JOINT_NAMES]
    assert obs[AGENT]["state"] == pytest.approx(np.array([data.qpos[j.qposadr[0]] for j in joints]), abs=1e-6)
    ctrl_joints = [model.joint(model.actuator_trnid[model.actuator(f"{AGENT}/{n}").id, 0]).name for n in JOINT_NAMES]
    assert ctrl_joints == [f"{AGENT}/{name}" for name in JOINT_NAMES]
    space = env.action_space(AGENT)
    assert np.array_equal(space.low, np.float32([joint_range(n)[0] for n in JOINT_NAMES]))
    assert np.array_equal(space.high, np.float32([joint_range(n)[1] for n in JOINT_NAMES]))


@pytest.mark.parametrize("cls", [GR1PickPlaceEnv, GR1HandoverEnv])
def test_parallel_api(cls):
    env = cls(seed=0, max_steps=15)
    parallel_api_test(env, num_cycles=20)
    env.close()


def test_reset_shapes_spaces_and_truncation():
    env = GR1PickPlaceEnv(seed=0, max_steps=3)
    obs, infos = env.reset(seed=3)
    assert env.agents == [AGENT] == env.possible_agents
    assert env.state_dim == env.action_dim == 44 and env.embodiment == "gr1"
    assert env.control_dt == pytest.approx(0.05)
    assert obs[AGENT]["state"].dtype == np.float32 and obs[AGENT]["state"].shape == (44,)
    assert env.observation_space(AGENT).contains(obs[AGENT])
    assert set(infos[AGENT]) == {"distance", "success", "grasped"}
    for step in range(3):
        obs, rewards, terminations, truncations, infos = env.step(hold(env))
        assert rewards[AGENT] == pytest.approx(-infos[AGENT]["distance"])
        assert terminations[AGENT] is False and truncations[AGENT] is (step == 2)
    assert env.agents == []
    with pytest.raises(RuntimeError, match="reset"):
        env.step({AGENT: np.zeros(44)})


def test_step_before_reset_raises(handover):
    with pytest.raises(RuntimeError, match="reset"):
        handover.step({GIVER: np.zeros(44), TAKER: np.zeros(44)})


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        pytest.param(np.full(44, np.nan), "NaN or inf", id="nan"),
        pytest.param(np.r_[np.zeros(43), np.inf], "NaN or inf", id="inf"),
        pytest.param(np.zeros(26), "shape", id="too-short"),
        pytest.param(np.zeros((1, 44)), "shape", id="batched"),
        pytest.param("open", "not numeric", id="string"),
    ],
)
def test_bad_actions_raise_naming_the_agent(env, handover, bad, problem):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=problem) as error:
        env.step({AGENT: bad})
    assert AGENT in str(error.value)
    handover.reset(seed=0)
    with pytest.raises(ValueError, match=problem) as error:
        handover.step({**hold(handover), TAKER: bad})
    assert TAKER in str(error.value) and GIVER not in str(error.value)


def test_missing_and_unknown_agents_raise(handover):
    handover.reset(seed=0)
    with pytest.raises(ValueError, match=f"{TAKER}: missing"):
        handover.step({GIVER: handover.joint_positions(GIVER)})
    with pytest.raises(ValueError, match="gr1_7"):
        handover.step({**hold(handover), "gr1_7": np.zeros(44)})


def test_actions_are_clipped_to_joint_ranges(env):
    env.reset(seed=0)
    for _ in range(30):
        obs, *_ = env.step({AGENT: np.full(44, 100.0, np.float32)})
    state, space = obs[AGENT]["state"], env.action_space(AGENT)
    assert np.all(state <= space.high + 0.05)
    neck_yaw = JOINT_NAMES.index("neck_yaw")
    assert state[neck_yaw] == pytest.approx(space.high[neck_yaw], abs=0.02)


@pytest.mark.parametrize(("obj", "target"), [("red cube", "plate"), ("green cylinder", "bowl"), ("blue ball", "tray")])
def test_instruction_names_the_pinned_goal_the_success_check_uses(env, obj, target):
    obs, _ = env.reset(seed=7, options={"object": obj, "target": target})
    assert obs[AGENT]["instruction"] == f"pick up the {obj} and place it {TARGET_PHRASES[target]}"
    assert env.goal(AGENT) == (obj, target)
    other = next(t for t in TARGETS if t != target)
    for place, succeeds in ((other, False), (target, True)):
        top = env.scene.target_position(place)
        put_object(env, obj, top[:2], top[2] + OBJECTS[obj].half_height + 0.002)
        for _ in range(4):
            _, _, _, _, infos = env.step(hold(env))
        assert infos[AGENT]["success"] is succeeds, place
    assert infos[AGENT]["distance"] < 0.01


def test_handover_instructions_name_object_and_target(handover):
    obs, _ = handover.reset(seed=2, options={"object": "blue ball", "target": "bowl"})
    assert obs[GIVER]["instruction"] == "pick up the blue ball and hand it to the other robot"
    assert obs[TAKER]["instruction"] == "take the blue ball from the other robot and place it in the bowl"
    assert handover.goal(GIVER) == handover.goal(TAKER) == ("blue ball", "bowl")


def test_goals_and_layouts_are_random_but_seeded(env):
    drawn = {env.reset(seed=seed)[0][AGENT]["instruction"] for seed in range(40)}
    assert {phrase for phrase in TARGET_PHRASES.values() if any(phrase in text for text in drawn)} == set(
        TARGET_PHRASES.values()
    )
    assert {obj for obj in OBJECTS if any(obj in text for text in drawn)} == set(OBJECTS)
    layouts = []
    for seed in (5, 5, 6):
        env.reset(seed=seed, options={"object": "red cube", "target": "plate"})
        layouts.append(np.r_[env.object_pose(AGENT), env.target_position(AGENT), env.joint_positions(AGENT)])
    assert np.array_equal(layouts[0], layouts[1])
    assert np.linalg.norm(layouts[0][:3] - layouts[2][:3]) > 0.02


@pytest.mark.parametrize("cls", [GR1PickPlaceEnv, GR1HandoverEnv])
@pytest.mark.parametrize(("shuffle", "spread_at_least", "spread_at_most"), [(False, 0.0, 0.09), (True, 0.15, 10.0)])
def test_layout_shuffle_decides_whether_an_item_keeps_its_slot(cls, shuffle, spread_at_least, spread_at_most):
    env = cls(shuffle_layout=shuffle)
    positions = []
    for seed in range(12):
        env.reset(seed=seed, options={"object": "red cube", "target": "plate"})
        positions += [np.r_[env.object_pose(AGENT)[:2], env.target_position(AGENT)[:2]]]
    spread = max(np.abs(a - b).max() for a in positions for b in positions)
    assert spread_at_least <= spread <= spread_at_most


def test_unknown_options_raise(env):
    with pytest.raises(ValueError, match="purple cube"):
        env.reset(options={"object": "purple cube"})
    with pytest.raises(ValueError, match="cup"):
        env.reset(options={"target": "cup"})


def test_items_are_within_reach_and_apart(env):
    for seed in range(20):
        env.reset(seed=seed)
        points = [env.scene.object_position(o)[:2] for o in OBJECTS] + [env.scene.target_position(t)[:2] for t in TARGETS]
        gaps = [np.linalg.norm(a - b) for i, a in enumerate(points) for b in points[i + 1 :]]
        assert min(gaps) > 0.1
        shoulder = env.data.xpos[env.model.body(f"{AGENT}/right_upper_arm").id]
        assert max(np.linalg.norm(np.r_[p, 1.03] - shoulder) for p in points) < 0.58


def test_privileged_state_is_object_and_goal_in_the_pelvis_frame(env, handover):
    env.reset(seed=4)
    pelvis = env.data.xpos[env.model.body(f"{AGENT}/pelvis").id]
    state = env.privileged_state(AGENT)
    assert state.dtype == np.float32 and state.shape == (6,)
    assert state == pytest.approx(np.r_[env.object_pose(AGENT)[:3] - pelvis, env.target_position(AGENT) - pelvis], abs=1e-5)
    handover.reset(seed=4)
    taker = handover.privileged_state(TAKER)
    assert taker[3] > 0.15 and taker[:2] == pytest.approx(-(handover.object_pose(TAKER)[:2] - (0.9, 0.0)), abs=1e-5)
    assert handover.privileged_state(GIVER)[3:] == pytest.approx(handover.handover_point - (0, 0, 0.9), abs=1e-5)


def test_grasp_needs_a_closed_hand_near_the_object(env):
    env.reset(seed=0, options={"object": "red cube"})
    closed = env.joint_positions(AGENT)
    closed[RIGHT_HAND[:5]] = [1.5, 1.5, 1.5, 1.5, 0.7]
    for _ in range(6):
        _, _, _, _, infos = env.step({AGENT: closed})
    assert not infos[AGENT]["grasped"], "closing far from every object must not grasp"
    put_object(env, "red cube", env.palm_position(AGENT)[:2], env.palm_position(AGENT)[2])
    _, _, _, _, infos = env.step({AGENT: closed})
    assert infos[AGENT]["grasped"]
    lifted = closed.copy()
    lifted[JOINT_NAMES.index("right_elbow_pitch")] -= 0.3
    for _ in range(6):
        env.step({AGENT: lifted})
    assert np.linalg.norm(env.object_pose(AGENT)[:3] - env.palm_position(AGENT)) < 0.03
    opened = lifted.copy()
    opened[RIGHT_HAND[:5]] = 0.0
    for _ in range(10):
        _, _, _, _, infos = env.step({AGENT: opened})
    assert not infos[AGENT]["grasped"]
    assert env.object_pose(AGENT)[2] < env.palm_position(AGENT)[2] - 0.05, "a released object falls"


def test_ego_camera_renders_and_moves_with_the_head(env):
    env.reset(seed=1)
    first = env.render_camera(AGENT)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert first.std() > 10
    assert np.array_equal(env.render(), first)
    turned = env.joint_positions(AGENT)
    turned[JOINT_NAMES.index("neck_yaw")] = 0.6
    turned[JOINT_NAMES.index("neck_pitch")] = 0.3
    for _ in range(10):
        env.step({AGENT: turned})
    second = env.render_camera(AGENT)
    assert np.abs(first.astype(np.int32) - second).mean() > 10


def test_pick_place_expert_succeeds(env):
    expert = GR1PickPlaceExpert(env)
    successes = []
    for seed in range(10):
        infos, grasped = run_expert(env, expert, seed)
        successes.append(infos[AGENT]["success"] and grasped == {AGENT})
    assert np.mean(successes) >= 0.9


def test_expert_chunk_is_what_action_does_next(env):
    expert = GR1PickPlaceExpert(env, max_step=0.12, hand_step=0.4)
    env.reset(seed=11)
    for _ in range(3):
        chunk = expert.action_chunk(AGENT, 12)
        assert chunk.shape == (12, 44) and chunk.dtype == np.float32
        previous = env.joint_positions(AGENT)
        for row in chunk:
            assert np.array_equal(expert.action(AGENT), row)
            assert np.abs(row[RIGHT_ARM] - previous[RIGHT_ARM]).max() <= 0.12 + 1e-5
            assert np.abs(row[RIGHT_HAND] - previous[RIGHT_HAND]).max() <= 0.4 + 1e-5
            env.step({AGENT: row})
            previous = env.joint_positions(AGENT)
    others = np.setdiff1d(np.arange(44), np.r_[RIGHT_ARM, RIGHT_HAND])
    assert np.array_equal(chunk[:, others], np.broadcast_to(chunk[0, others], (12, len(others))))
    with pytest.raises(ValueError, match="horizon"):
        expert.action_chunk(AGENT, 0)


def test_handover_expert_succeeds(handover):
    expert = GR1HandoverExpert(handover)
    successes = []
    for seed in range(5):
        infos, grasped = run_expert(handover, expert, seed)
        successes.append(all(info["success"] for info in infos.values()) and grasped == {GIVER, TAKER})
    assert np.mean(successes) >= 0.8


def test_holding_still_fails(env):
    for seed in range(3):
        env.reset(seed=seed)
        while env.agents:
            _, _, _, _, infos = env.step({AGENT: env.joint_positions(AGENT)})
        assert not infos[AGENT]["success"]


def test_make_env_and_invalid_arguments():
    assert isinstance(make_env("gr1_pick_place", max_steps=5), GR1PickPlaceEnv)
    assert isinstance(make_env("gr1_handover", image_size=32), GR1HandoverEnv)
    with pytest.raises(ValueError, match="image_size"):
        GR1PickPlaceEnv(image_size=0)
    with pytest.raises(ValueError, match="max_steps"):
        GR1HandoverEnv(max_steps=0)


def test_object_pose_flag_appends_the_privileged_state_and_switches_embodiment():
    plain, posed = GR1PickPlaceEnv(seed=0), GR1PickPlaceEnv(seed=0, state_includes_object_pose=True)
    try:
        (base, _), (obs, _) = plain.reset(seed=3), posed.reset(seed=3)
        assert plain.embodiment == "gr1" and posed.embodiment == "gr1_pose"
        assert posed.state_dim == 50 and posed.action_dim == 44
        state = obs[AGENT]["state"]
        assert state.shape == (50,) and state.dtype == np.float32
        assert posed.observation_space(AGENT)["state"].contains(state)
        np.testing.assert_array_equal(state[:44], base[AGENT]["state"])
        np.testing.assert_array_equal(state[44:], posed.privileged_state(AGENT))
        obs, _, _, _, _ = posed.step({AGENT: posed.joint_positions(AGENT)})
        np.testing.assert_array_equal(obs[AGENT]["state"][44:], posed.privileged_state(AGENT))
        layout = embodiment_layout("gr1_pose")
        assert layout.raw_dim("state") == layout.model_dim("state") == 50
        assert layout.select("state", state)[44:].tolist() == state[44:].tolist()
        assert layout.model_keys("action") == embodiment_layout("gr1").model_keys("action")
        assert layout.raw_dim("action") == 44 and layout.model_dim("action") == 26
    finally:
        plain.close()
        posed.close()


def test_every_correction_label_is_the_experts_chunk_from_its_recorded_state():
    """A gated GR-1 episode whose policy reaches 8 cm beside the expert's path: every labelled step,
    re-simulated from the episode's seed and the recorded actions, has the recorded state, frame and
    label (an off-by-one between a step's state, frame and label would teach the wrong action)."""
    env, replay_env = GR1PickPlaceEnv(seed=0, max_steps=48), GR1PickPlaceEnv(seed=0, max_steps=48)
    expert = GR1PickPlaceExpert(env)
    offset = np.zeros(env.action_dim, np.float32)
    offset[RIGHT_ARM[0]] = 0.25  # the shoulder pitched off: the palm path misses the object

    def off_path(image, state, instruction):
        return expert.action_chunk(AGENT, 16) + offset

    operator = SimulatedOperator(expert, AGENT, make_gate(TaskSpaceOptions(patience=1)), horizon=16,
                                 execute_steps=8, max_takeover_steps=32)
    try:
        traj = run_episodes(env, expert, {AGENT: off_path}, horizon=16, execute_steps=8, frame_every=8,
                            rng=np.random.default_rng(0), seed=5, mode=HGDagger(), operators={AGENT: operator})[AGENT]
        assert traj.takeovers and len(traj.labels) > len(traj.plans), "the gate took over"
        observations, _ = replay_env.reset(seed=5)
        fresh = GR1PickPlaceExpert(replay_env)
        for t, action in enumerate(traj.actions):
            if t in traj.labels:
                np.testing.assert_array_equal(observations[AGENT]["state"], traj.states[t], err_msg=f"state {t}")
                np.testing.assert_array_equal(fresh.action_chunk(AGENT, 16), traj.labels[t], err_msg=f"label {t}")
                np.testing.assert_array_equal(replay_env.render_camera(AGENT), traj.frames[t], err_msg=f"frame {t}")
            observations, *_ = replay_env.step({AGENT: action})
    finally:
        env.close()
        replay_env.close()
