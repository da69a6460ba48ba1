"""Chunked episodes in the real MuJoCo reach env, and their DAgger episodes."""

import numpy as np
import pytest

from fleetloop.actors.dagger import RELABEL, beta_for_round, segments, to_episode
from fleetloop.actors.envs import make_env
from fleetloop.actors.envs.expert import ReachExpert
from fleetloop.actors.gate import InterventionGate
from fleetloop.actors.rollout import PolicyOutputError, run_episode


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
    rollout = to_episode(traj, relabel=False, source="robot", embodiment="sim_arm", policy_version=7,
                         actor_id="actor-3")
    correction = to_episode(traj, relabel=True, source=RELABEL, embodiment="sim_arm", policy_version=7,
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


def test_gate_fires_after_patience_and_hands_back_after_the_takeover():
    gate = InterventionGate(threshold=0.3, patience=2, takeover_steps=3)
    far, near = np.array([1.0, 0.0]), np.array([0.1, 0.0])
    assert not gate.check(far, np.zeros(2)) and not gate.operator_in_control
    assert not gate.check(near, np.zeros(2)), "a close step resets the count"
    assert not gate.check(far, np.zeros(2))
    assert gate.check(far, np.zeros(2)) and gate.operator_in_control
    for _ in range(3):
        assert gate.operator_in_control
        gate.operator_step()
    assert not gate.operator_in_control
    with pytest.raises(ValueError, match="threshold must be > 0"):
        InterventionGate(threshold=0.0, patience=1, takeover_steps=1)


def test_hg_dagger_expert_takes_over_a_failing_policy_and_succeeds(env):
    gate = InterventionGate(threshold=0.1, patience=2, takeover_steps=24)
    traj = run_episode(env, ReachExpert(env), hold_still, beta=0.0, horizon=16, execute_steps=8, frame_every=8,
                       rng=np.random.default_rng(0), seed=3, gate=gate)
    first = traj.intervened.index(True)
    assert not any(traj.intervened[:first]) and first == 1, "the gate fires after 2 divergent policy steps"
    assert all(traj.intervened[first:]), "the operator keeps control for takeover_steps"
    assert traj.success, "the takeover finishes the task"
    assert np.allclose(np.stack(traj.actions[first:]), np.stack(traj.labels[first:])), "the operator's actions run"


def test_a_good_policy_is_never_taken_over(env):
    expert = ReachExpert(env)
    gate = InterventionGate(threshold=0.3, patience=2, takeover_steps=8)
    traj = run_episode(env, expert, lambda image, state, instruction: expert.action_chunk("arm_0", 16), beta=0.0,
                       horizon=16, execute_steps=8, frame_every=8, rng=np.random.default_rng(0), seed=4, gate=gate)
    assert not any(traj.intervened) and traj.success


def test_gate_needs_a_policy(env):
    with pytest.raises(ValueError, match="a gate needs a policy"):
        run_episode(env, ReachExpert(env), None, beta=0.0, horizon=16, execute_steps=8, frame_every=8,
                    rng=np.random.default_rng(0), seed=0, gate=InterventionGate(0.3, 1, 1))


@pytest.mark.parametrize(("intervened", "pre_steps", "expected"), [
    ([False] * 4, 2, [("robot", 0, 4)]),
    ([False, False, False, True, True, False], 2,
     [("robot", 0, 1), ("pre_intervention", 1, 3), ("intervention", 3, 5), ("robot", 5, 6)]),
    ([True, False, True], 5, [("intervention", 0, 1), ("pre_intervention", 1, 2), ("intervention", 2, 3)]),
    ([False, True], 0, [("robot", 0, 1), ("intervention", 1, 2)]),
])
def test_segments_split_by_correction_class(intervened, pre_steps, expected):
    assert [(s.cls, s.start, s.end) for s in segments(intervened, pre_steps)] == expected


def test_segment_episode_starts_with_the_last_frame_the_robot_saw(env):
    traj = episode(env, hold_still, beta=0.0)  # frames at steps 0, 8, 16
    part = to_episode(traj, relabel=False, source="intervention", embodiment="sim_arm", policy_version=2,
                      actor_id="a", start=5, end=13)
    part.validate()
    assert len(part.states) == 8 and np.array_equal(part.states, np.stack(traj.states[5:13]))
    assert sorted(part.frames) == [0, 3]
    assert np.array_equal(part.frames[0], traj.frames[0]) and np.array_equal(part.frames[3], traj.frames[8])
    with pytest.raises(ValueError, match="outside the trajectory"):
        to_episode(traj, relabel=False, source="robot", embodiment="sim_arm", policy_version=2, actor_id="a",
                   start=20, end=30)


@pytest.mark.parametrize(("chunk", "message"), [
    (np.full((16, 2), np.nan, dtype=np.float32), "non-finite action nan at step 0, dim 0"),
    (np.zeros((4, 2), dtype=np.float32), r"expected shape \(>= 8, 2\), got \(4, 2\)"),
    (np.zeros((16, 3), dtype=np.float32), r"expected shape \(>= 8, 2\), got \(16, 3\)"),
])
def test_a_bad_policy_chunk_stops_the_episode_before_it_runs(env, chunk, message):
    with pytest.raises(PolicyOutputError, match=message):
        run_episode(env, ReachExpert(env), lambda image, state, instruction: chunk, beta=0.0, horizon=16,
                    execute_steps=8, frame_every=8, rng=np.random.default_rng(0), seed=0)
    assert np.isfinite(env.data.ctrl).all() and env.data.time == 0.0, "no step was taken with it"
