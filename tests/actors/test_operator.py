"""The simulated operator on the real GR-1 pick-and-place scene: traces, gates, takeovers, labels."""

import numpy as np
import pytest

from fleetloop.actors.dagger import INTERVENTION, PRE_INTERVENTION_RELABEL, HGDagger
from fleetloop.actors.dagger.episodes import expert_effort
from fleetloop.actors.envs import make_env, make_expert
from fleetloop.actors.envs.gr1 import RIGHT_ARM
from fleetloop.actors.envs.trace import ExpertUnavailable
from fleetloop.actors.gates import JointOptions, TaskSpaceOptions, make_gate
from fleetloop.actors.operator import SimulatedOperator
from fleetloop.actors.rollout import run_episodes
from fleetloop.config import DaggerSection
from fleetloop.system.embodiment import embodiment_layout
from tests.actors.conftest import out_of_reach

AGENT = "gr1_0"
GROUPS = dict(embodiment_layout("gr1").action)


@pytest.fixture(scope="module")
def env():
    env = make_env("gr1_pick_place", max_steps=96, shuffle_layout=False)
    yield env
    env.close()


@pytest.fixture(scope="module")
def expert(env):
    return make_expert("gr1_pick_place", env)


def operator(expert, gate, **kwargs):
    return SimulatedOperator(expert, AGENT, make_gate(gate, GROUPS), horizon=16, execute_steps=8,
                             **{"max_takeover_steps": 64, **kwargs})


def beside(expert):
    """A policy that follows the expert's arm path with the shoulder turned 0.22 rad: every joint
    target within 0.22 rad of the expert's, the hand about 10 cm beside where it should be."""
    def plan(image, state, instruction):
        chunk = expert.action_chunk(AGENT, 16)
        chunk[:, RIGHT_ARM[:2]] += 0.22
        return chunk
    return plan


def episode(env, expert, plan, op, seed=11, **kwargs):
    return run_episodes(env, expert, {AGENT: plan}, horizon=16, execute_steps=8, frame_every=8,
                        rng=np.random.default_rng(0), seed=seed, operators={AGENT: op}, **kwargs)[AGENT]


def test_traces_subgoals_and_recovery_of_the_gr1_expert(env, expert):
    env.reset(seed=11)
    chunk = expert.action_chunk(AGENT, 16)
    trace = expert.expert_trace(AGENT, 16)
    assert trace.effector.shape == trace.object.shape == (16, 3) and trace.grasp.shape == (16,)
    assert not trace.grasp.any()
    np.testing.assert_allclose(trace.object, np.tile(env.scene.object_position(env.goal(AGENT)[0]), (16, 1)),
                               atol=1e-3), "the object waits on the table (settling by a fraction of a mm)"
    np.testing.assert_array_equal(expert.trace(AGENT, chunk).effector, trace.effector), "the same simulation"
    assert np.linalg.norm(trace.effector[-1] - env.palm_position(AGENT)) > 0.1, "the palm heads for the object"
    assert expert.subgoal(AGENT) == "grasp"
    assert expert.can_finish(AGENT, 96) and not expert.can_finish(AGENT, 10)
    long = expert.action_chunk(AGENT, 40)
    for k in range(30):  # the live state follows the simulation: each label is the rest of it
        np.testing.assert_array_equal(expert.action_chunk(AGENT, 8), long[k:k + 8])
        env.step({AGENT: long[k]})
    assert expert.subgoal(AGENT) == "place", "the object is held after 30 steps"


def test_a_wrong_arm_path_fires_the_task_space_gate_but_not_a_joint_gate(env, expert):
    task = episode(env, expert, beside(expert), operator(expert, TaskSpaceOptions(effector_m=0.07, patience=2)),
                   watch=True)
    joint = episode(env, expert, beside(expert), operator(expert, JointOptions(default_threshold=0.3, patience=2)),
                    watch=True)
    assert any(p.verdict.fire for p in task.plans) and max(p.verdict.gaps["effector"] for p in task.plans) > 0.07
    assert not any(p.verdict.divergent for p in joint.plans), "no joint target is 0.3 rad off"
    assert not task.success and not task.takeovers, "watching never takes over"


def test_settled_traces_run_the_executed_steps_then_hold_still(env, expert):
    """With settle_steps both chunks are simulated past their executed steps with the robot holding
    its last target: the executed rows are the expert's own simulation, the palm comes to rest."""
    env.reset(seed=11)
    op = operator(expert, TaskSpaceOptions(settle_steps=6))
    chunk = expert.action_chunk(AGENT, 16)
    proposal = op.proposal(chunk)
    policy, reference = proposal.policy_trace(), proposal.expert_trace()
    assert len(policy) == len(reference) == 8 + 6 and proposal.settle_steps == 6
    np.testing.assert_array_equal(reference.effector[:8], expert.expert_trace(AGENT, 8).effector)
    np.testing.assert_array_equal(policy.effector, reference.effector), "the expert's chunk as the policy's"
    moves = np.linalg.norm(np.diff(reference.effector[7:], axis=0), axis=1)
    assert moves[-1] < 1e-3 < np.linalg.norm(reference.effector[7] - reference.effector[0]), \
        "the palm travels over the executed steps and stops while it holds"
    assert op.gate.gaps(proposal) == {"effector": 0.0, "grasp": 0.0, "object": 0.0}
    assert len(operator(expert, TaskSpaceOptions()).proposal(chunk).policy_trace()) == 8, "no settling by default"


def test_a_takeover_labels_every_step_and_ends_when_its_subgoal_is_done(env, expert):
    op = operator(expert, TaskSpaceOptions(effector_m=0.07, patience=2), hand_back=("subgoal",))
    traj = episode(env, expert, beside(expert), op, mode=HGDagger())
    first = traj.takeovers[0]
    assert first.reason == "gate" and first.start == 8, "two divergent plans: the second never runs"
    assert first.subgoal == "grasp" and first.ended_by == "subgoal" and first.end % 8 == 0
    steps = range(first.start, first.end)
    for t in steps:
        np.testing.assert_array_equal(traj.actions[t], traj.labels[t][0])
        assert t in traj.frames
    for t in list(steps)[:-1]:
        np.testing.assert_array_equal(traj.labels[t][1:], traj.labels[t + 1][:-1])
    segments = HGDagger().segments(traj, DaggerSection(pre_intervention_chunks=1))
    relabelled = [s for s in segments if s.cls == PRE_INTERVENTION_RELABEL]
    assert relabelled[0].steps == (0,), "the first divergent plan, the decision that went wrong"
    assert [s.steps[0] for s in segments if s.cls == INTERVENTION][0] == 8
    assert expert_effort(traj, segments) > first.length + 15, "the takeover with its chunk tail, and the state before it"


def test_a_takeover_ends_at_its_cap(env, expert):
    op = operator(expert, TaskSpaceOptions(effector_m=0.07, patience=1), hand_back=(), max_takeover_steps=12)
    traj = episode(env, expert, beside(expert), op, mode=HGDagger())
    assert traj.takeovers[0].ended_by == "cap" and traj.takeovers[0].length == 12


def test_an_expert_that_cannot_plan_leaves_the_policy_driving():
    env = make_env("gr1_pick_place", max_steps=32, shuffle_layout=False)
    try:
        expert = make_expert("gr1_pick_place", env)
        out_of_reach(env)
        traj = episode(env, expert, lambda image, state, instruction: np.tile(state, (16, 1)),
                       operator(expert, TaskSpaceOptions(patience=1)), mode=HGDagger())
    finally:
        env.close()
    assert not traj.takeovers and not any(traj.intervened) and traj.labels == {}
    assert [p.verdict for p in traj.plans] == [None] * 4
    assert len(traj.expert_unavailable) == 4 and "beyond its 0.6" in traj.expert_unavailable[0][1]


def test_a_takeover_whose_expert_can_no_longer_plan_is_ended_and_skipped():
    env = make_env("gr1_pick_place", max_steps=40, shuffle_layout=False)
    try:
        expert = make_expert("gr1_pick_place", env)
        out_of_reach(env, after_step=12)
        plan = beside(expert)

        def beside_while_it_can(image, state, instruction):  # the test's policy leans on the expert too
            try:
                return plan(image, state, instruction)
            except ExpertUnavailable:
                return np.tile(state, (16, 1))

        traj = episode(env, expert, beside_while_it_can, operator(expert, TaskSpaceOptions(patience=1), hand_back=()),
                       mode=HGDagger())
    finally:
        env.close()
    first = traj.takeovers[0]
    assert (first.start, first.end, first.ended_by) == (0, 12, "expert_unavailable") and first.skipped
    assert not any(traj.intervened[12:]), "the policy drives on"
    segments = HGDagger().segments(traj, DaggerSection())
    assert not [s for s in segments if s.cls == INTERVENTION], "a takeover cut short by its expert is not trained on"
