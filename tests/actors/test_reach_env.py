"""ReachEnv and ReachExpert: PettingZoo API, shapes, expert success, rendering, determinism."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from fleetloop.actors.envs import COLOURS, ReachEnv, ReachExpert, make_env

AGENT = "arm_0"


@pytest.fixture
def env():
    env = ReachEnv(seed=0)
    yield env
    env.close()


def run_episode(env, policy, seed, goal=None):
    """Run one episode with ``policy(obs) -> action``; return the final info."""
    obs, info = env.reset(seed=seed, options={"goal": goal} if goal else None)
    while env.agents:
        obs, _, _, _, info = env.step({AGENT: policy(obs[AGENT])})
    return info[AGENT]


def colour_mask(image, colour):
    """Pixels where ``colour``'s channel clearly dominates the other two."""
    channels = image.astype(np.int32)
    main = channels[..., COLOURS.index(colour)]
    others = np.delete(channels, COLOURS.index(colour), axis=-1)
    return (main > 100) & (main > 2 * others.max(axis=-1))


def test_parallel_api(env):
    parallel_api_test(env, num_cycles=100)


def test_reset_shapes_and_spaces(env):
    obs, infos = env.reset(seed=3)
    assert env.agents == [AGENT] == env.possible_agents
    assert set(obs) == set(infos) == {AGENT}
    state = obs[AGENT]["state"]
    assert state.shape == (env.state_dim,) == (4,)
    assert state.dtype == np.float32
    assert env.action_dim == 2 and env.embodiment == "sim_arm"
    assert env.observation_space(AGENT).contains(obs[AGENT])
    assert set(infos[AGENT]) == {"distance", "success"}
    space = env.action_space(AGENT)
    assert space.shape == (2,) and space.dtype == np.float32
    assert np.all(space.low < 0) and np.all(space.high > 0)


def test_step_shapes_and_truncation():
    env = ReachEnv(seed=0, max_steps=5)
    env.reset()
    for step in range(5):
        obs, rewards, terminations, truncations, infos = env.step({AGENT: np.zeros(2, np.float32)})
        assert obs[AGENT]["state"].dtype == np.float32 and obs[AGENT]["state"].shape == (4,)
        assert isinstance(rewards[AGENT], float)
        assert rewards[AGENT] == pytest.approx(-infos[AGENT]["distance"])
        assert terminations[AGENT] is False
        assert truncations[AGENT] is (step == 4)
    assert env.agents == []
    with pytest.raises(RuntimeError, match="reset"):
        env.step({})


@pytest.mark.parametrize("colour", COLOURS)
def test_instruction_names_pinned_goal(env, colour):
    obs, _ = env.reset(seed=7, options={"goal": colour})
    assert obs[AGENT]["instruction"] == f"reach the {colour} ball"
    assert env.goal(AGENT) == colour


def test_goals_are_drawn_from_all_colours(env):
    drawn = {env.reset(seed=seed)[0][AGENT]["instruction"] for seed in range(30)}
    assert drawn == {f"reach the {colour} ball" for colour in COLOURS}


def test_unknown_goal_option_raises(env):
    with pytest.raises(ValueError, match="purple"):
        env.reset(options={"goal": "purple"})


@pytest.mark.parametrize(
    ("actions", "problem"),
    [
        pytest.param({AGENT: np.array([np.nan, 0.0])}, "NaN or inf", id="nan"),
        pytest.param({AGENT: np.array([0.0, np.inf])}, "NaN or inf", id="inf"),
        pytest.param({AGENT: np.zeros(3)}, "shape", id="too-long"),
        pytest.param({AGENT: np.zeros((1, 2))}, "shape", id="batched"),
        pytest.param({AGENT: "left"}, "not numeric", id="string"),
        pytest.param({}, "missing", id="missing-agent"),
    ],
)
def test_bad_actions_raise(env, actions, problem):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=problem) as error:
        env.step(actions)
    assert AGENT in str(error.value)


def test_unknown_agent_action_raises(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="arm_9"):
        env.step({AGENT: np.zeros(2), "arm_9": np.zeros(2)})


def test_actions_are_clipped_to_joint_limits(env):
    env.reset(seed=0)
    for _ in range(20):
        obs, *_ = env.step({AGENT: np.array([100.0, -100.0], np.float32)})
    space = env.action_space(AGENT)
    assert obs[AGENT]["state"][:2] == pytest.approx([space.high[0], space.low[1]], abs=0.05)


def test_expert_succeeds(env):
    expert = ReachExpert(env)
    successes = []
    for seed in range(42):
        env.reset(seed=seed, options={"goal": COLOURS[seed % 3]})
        while env.agents:
            for action in expert.action_chunk(AGENT, 8):
                _, _, _, _, infos = env.step({AGENT: action})
                if not env.agents:
                    break
        successes.append(infos[AGENT]["success"])
    assert np.mean(successes) >= 0.95


def test_expert_chunk_is_bounded_ramp_that_holds(env):
    expert = ReachExpert(env, max_step=0.2)
    env.reset(seed=5)
    chunk = expert.action_chunk(AGENT, 40)
    assert chunk.shape == (40, 2) and chunk.dtype == np.float32
    steps = np.diff(np.vstack([env.joint_positions(AGENT), chunk]), axis=0)
    assert np.abs(steps).max() <= 0.2 + 1e-5
    assert chunk[-1] == pytest.approx(expert.goal_configuration(AGENT), abs=1e-5)
    assert expert.action(AGENT) == pytest.approx(chunk[0])


def test_expert_step_by_step_succeeds(env):
    expert = ReachExpert(env)
    for seed, colour in enumerate(COLOURS):
        env.reset(seed=100 + seed, options={"goal": colour})
        while env.agents:
            _, _, _, _, infos = env.step({AGENT: expert.action(AGENT)})
        assert infos[AGENT]["success"]


def test_trivial_policies_mostly_fail(env):
    hold = [run_episode(env, lambda obs: obs["state"][:2], seed)["success"] for seed in range(40)]
    assert np.mean(hold) < 0.2
    space = env.action_space(AGENT)
    space.seed(0)
    random = [run_episode(env, lambda obs: space.sample(), seed)["success"] for seed in range(40)]
    assert np.mean(random) < 0.2


def test_deterministic_given_seed():
    actions = np.random.default_rng(0).uniform(-1.5, 1.5, (30, 2)).astype(np.float32)
    runs = []
    for _ in range(2):
        env = ReachEnv(seed=123)
        obs, _ = env.reset()
        states = [obs[AGENT]["state"]]
        states += [env.step({AGENT: action})[0][AGENT]["state"] for action in actions]
        runs.append((np.stack(states), obs[AGENT]["instruction"], env.goal_position(AGENT)))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert np.array_equal(runs[0][2], runs[1][2])
    other = ReachEnv(seed=124)
    other.reset()
    assert not np.array_equal(other.goal_position(AGENT), runs[0][2])


def test_render_camera_shows_targets_and_follows_layout(env):
    env.reset(seed=1, options={"goal": "red"})
    first = env.render_camera(AGENT)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert first.std() > 10
    for colour in COLOURS:
        assert colour_mask(first, colour).sum() >= 3, colour
    env.reset(seed=1, options={"goal": "red"})
    assert np.array_equal(env.render_camera(AGENT), first)

    env.reset(seed=2, options={"goal": "blue"})
    second = env.render_camera(AGENT)
    assert np.abs(first.astype(np.int32) - second).mean() > 0.5
    centroids = [np.argwhere(colour_mask(image, "red")).mean(axis=0) for image in (first, second)]
    assert np.linalg.norm(centroids[0] - centroids[1]) > 1.0


def test_make_env():
    env = make_env("reach", image_size=32, max_steps=8)
    assert isinstance(env, ReachEnv) and env.max_steps == 8
    with pytest.raises(ValueError, match="reach"):
        make_env("stack")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        pytest.param({"image_size": 0}, "image_size", id="image-size"),
        pytest.param({"max_steps": 0}, "max_steps", id="max-steps"),
        pytest.param({"success_threshold": 0.0}, "success_threshold", id="threshold"),
    ],
)
def test_invalid_constructor_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ReachEnv(**kwargs)


@pytest.mark.parametrize(("shuffle", "spread_at_least", "spread_at_most"), [(False, 0.0, 0.08), (True, 0.1, 10.0)])
def test_layout_shuffle_decides_whether_a_colour_keeps_its_spot(shuffle, spread_at_least, spread_at_most):
    env = ReachEnv(shuffle_layout=shuffle)
    positions = []
    for seed in range(12):
        env.reset(seed=seed, options={"goal": "red"})
        positions.append(env.goal_position("arm_0"))
    env.close()
    spread = max(np.linalg.norm(a - b) for a in positions for b in positions)
    assert spread_at_least <= spread <= spread_at_most
