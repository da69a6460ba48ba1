"""Chunked episodes in the real MuJoCo reach env, and their DAgger episodes."""

import numpy as np
import pytest

from fleetloop.actors.dagger import SOURCE_RELABEL, beta_for_round, to_episode
from fleetloop.actors.envs import make_env
from fleetloop.actors.envs.expert import ReachExpert
from fleetloop.actors.rollout import run_episode


@pytest.fixture(scope="module")
def env():
    env = make_env("reach", max_steps=24)
    yield env
    env.close()


def hold_still(image, state, instruction):
    """A policy that keeps the arm where it is (never reaches a ball)."""
    return np.tile(state[:2], (16, 1)).astype(np.float32)


def episode(env, plan, beta, seed=3, frame_every=8):
    return run_episode(env, ReachExpert(env), plan, beta=beta, horizon=16, execute_steps=8, frame_every=frame_every,
                       rng=np.random.default_rng(0), seed=seed)


def test_demonstration_is_driven_by_the_expert(env):
    traj = episode(env, None, beta=0.0, frame_every=4)
    assert len(traj.states) == 24
    assert all(traj.intervened)
    assert traj.success
    assert sorted(traj.frames) == [0, 4, 8, 12, 16, 20]
    assert traj.frames[0].shape == (64, 64, 3) and traj.frames[0].dtype == np.uint8
    assert "ball" in traj.instruction


def test_policy_drives_and_expert_labels_every_visited_state(env):
    traj = episode(env, hold_still, beta=0.0)
    assert not any(traj.intervened)
    assert not traj.success
    assert sorted(traj.frames) == [0, 8, 16], "one frame per planned chunk"
    executed = np.stack(traj.actions)
    labels = np.stack(traj.labels)
    assert np.allclose(executed, executed[0], atol=0.05), "the arm was held"
    assert np.abs(labels - executed).max() > 0.1, "the expert's labels move toward the goal"


def test_beta_one_lets_the_expert_drive_every_chunk(env):
    traj = episode(env, hold_still, beta=1.0)
    assert all(traj.intervened) and traj.success


def test_chunk_and_frame_cadence_must_fit(env):
    with pytest.raises(ValueError, match="multiple of frame_every"):
        run_episode(env, ReachExpert(env), hold_still, beta=0.0, horizon=16, execute_steps=8, frame_every=3,
                    rng=np.random.default_rng(0), seed=0)
    with pytest.raises(ValueError, match="must be <= horizon"):
        run_episode(env, ReachExpert(env), hold_still, beta=0.0, horizon=4, execute_steps=8, frame_every=8,
                    rng=np.random.default_rng(0), seed=0)


def test_relabelled_episode_carries_labels_and_version(env):
    traj = episode(env, hold_still, beta=0.0)
    rollout = to_episode(traj, relabel=False, source="policy_rollout", embodiment="sim_arm", policy_version=7,
                         actor_id="actor-3")
    correction = to_episode(traj, relabel=True, source=SOURCE_RELABEL, embodiment="sim_arm", policy_version=7,
                            actor_id="actor-3")
    for ep in (rollout, correction):
        ep.validate()
        assert ep.policy_version == 7 and ep.actor_id == "actor-3"
        assert np.array_equal(ep.states, np.stack(traj.states))
    assert np.array_equal(rollout.actions, np.stack(traj.actions))
    assert np.array_equal(correction.actions, np.stack(traj.labels))


@pytest.mark.parametrize(("round_index", "expected"), [(0, 0.5), (1, 0.25), (3, 0.0625)])
def test_beta_schedule(round_index, expected):
    assert beta_for_round(0.5, 0.5, round_index) == pytest.approx(expected)


def test_beta_schedule_rejects_negative_rounds():
    with pytest.raises(ValueError, match="round_index"):
        beta_for_round(0.5, 0.5, -1)
