"""run_bridge_episode records one episode driven only through the bridge: the policy's steps from
Act, the operator's steps from its intervention messages, each with the state before its action."""

import numpy as np
import pytest

from fleetloop.actors.bridge.episode import run_bridge_episode
from fleetloop.actors.gates import JointOptions
from tests.bridge.conftest import metric

pytestmark = pytest.mark.timeout(60)

STEPS = 40
GATED = {"gate": JointOptions(default_threshold=0.3, patience=1), "max_takeover_steps": 16, "operator_horizon": 8,
         "hand_back": (), "max_steps": STEPS}
EXECUTE = 8


def hold(image, state, instruction):
    """A bad policy: keep the joints where they are, whatever the instruction says."""
    assert image.shape == (64, 64, 3) and instruction
    return np.tile(state[:2], (16, 1))


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True."""
    edges = np.flatnonzero(np.diff(np.r_[0, flags.astype(int), 0]))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]


def drain(stream) -> list:
    """Every message the stream holds (it holds all of an episode once the episode is over)."""
    items = []
    while (item := stream.get(timeout=1.0)) is not None:
        items.append(item)
    return items


def test_policy_and_operator_steps_are_recorded_with_the_state_before_each_action(serve):
    server, client = serve(twin=GATED)
    stream = client.subscribe_interventions(["arm_0"])
    witness = client.subscribe_interventions(["arm_0"])
    traj = run_bridge_episode(client, stream, "arm_0", hold, execute_steps=EXECUTE, seed=3)

    intervened = np.array(traj.intervened)
    actions, states = np.stack(traj.actions), np.stack(traj.states)
    assert len(states) == len(traj.rewards) == STEPS and traj.labels == {}, "no expert in the actor: no chunk labels"
    assert intervened.any() and not intervened.all(), "the bad policy drove, then the operator took over"
    assert all(t.ended_by == "cap" and t.length == 16 for t in traj.takeovers[:-1])
    assert [(t.start, t.end) for t in traj.takeovers] == [(a, a + m) for a, m in _runs(intervened)]
    chunks = [m for m in drain(witness) if m.actions is not None]
    np.testing.assert_array_equal(actions[intervened], np.concatenate([m.actions for m in chunks]))
    np.testing.assert_array_equal(states[intervened], np.concatenate([m.states for m in chunks]))
    assert all(intervened[m.step:m.step + len(m.actions)].all() for m in chunks)

    # The policy planned from a frame at each of its chunk starts and its actions ran unchanged.
    plans = [plan.step for plan in traj.plans]
    assert plans[0] == 0 and sorted(traj.frames) == plans
    for step in np.flatnonzero(~intervened):
        planned_at = max(start for start in plans if start <= step)
        np.testing.assert_array_equal(actions[step], states[planned_at][:2])
    assert traj.rewards[:-1] == [0.0] * (STEPS - 1) and traj.rewards[-1] == float(traj.success)

    # Replaying the recorded actions from the same seed visits the recorded states.
    _, replay = serve(twin={**GATED, "gate": None})
    obs = replay.reset(seed=3)["arm_0"]
    for state, action in zip(states, actions):
        np.testing.assert_allclose(obs.state, state, atol=1e-6)
        obs = replay.act(obs, action[None]).observation
    assert obs.done


def test_evaluation_episodes_are_watched_not_gated(serve):
    _, client = serve(twin=GATED)
    stream = client.subscribe_interventions(["arm_0"])
    traj = run_bridge_episode(client, stream, "arm_0", hold, execute_steps=EXECUTE, seed=3, evaluation=True)
    assert len(traj.states) == STEPS and not any(traj.intervened), "the operator only watched the bad policy"


def test_a_takeover_before_a_chunk_is_followed_and_stale_messages_are_ignored(serve):
    # Paced at 20 Hz: the requested takeover (16 steps, 0.8 s) is still running when the chunk arrives.
    server, client = serve(twin={**GATED, "realtime": True})
    stream = client.subscribe_interventions(["arm_0"])
    client.reset(seed=1)
    server.backend.request_takeover("arm_0")  # in an earlier episode: stale for the next one
    ignored = metric("fleetloop_actor_ignored_interventions_total", actor="actor-t", reason="other_episode")
    plans = []

    def expert_policy(image, state, instruction):
        plans.append(len(plans))
        if len(plans) == 2:
            server.backend.request_takeover("arm_0")  # the operator takes over before this chunk runs
        return server.backend.expert.action_chunk("arm_0", 16)

    traj = run_bridge_episode(client, stream, "arm_0", expert_policy, execute_steps=EXECUTE, seed=2,
                              evaluation=True, actor_id="actor-t")
    intervened = np.array(traj.intervened)
    assert len(intervened) == STEPS and intervened[EXECUTE:EXECUTE + 16].all() and intervened.sum() == 16
    assert metric("fleetloop_actor_ignored_interventions_total", actor="actor-t", reason="other_episode") > ignored
    assert traj.rewards[-1] == 1.0, "the robot reached its goal"
    assert not traj.success, "an evaluation episode with a takeover is no success of the policy"
