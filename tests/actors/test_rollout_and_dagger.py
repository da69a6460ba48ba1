"""Chunked episodes in the real MuJoCo reach env, DAgger modes and their episodes."""

import numpy as np
import pytest

from fleetloop.actors.dagger import (
    INTERVENTION,
    PRE_INTERVENTION,
    PRE_INTERVENTION_RELABEL,
    RELABEL,
    ROBOT,
    ROBOT_FAILURE,
    BetaMixtureDagger,
    HGDagger,
    Segment,
    make_mode,
    runs,
)
from fleetloop.actors.dagger.episodes import expert_effort, to_episode
from fleetloop.actors.envs import make_env
from fleetloop.actors.envs.expert import ReachExpert
from fleetloop.actors.gates import JointOptions, TaskSpaceOptions, make_gate
from fleetloop.actors.operator import SimulatedOperator, Takeover
from fleetloop.actors.rollout import Plan, PolicyOutputError, Trajectory, run_episodes
from fleetloop.config import DaggerSection

AGENT = "arm_0"


@pytest.fixture(scope="module")
def env():
    env = make_env("reach", max_steps=24)
    yield env
    env.close()


def hold_still(image, state, instruction):
    """A policy that keeps the arm where it is (never reaches a ball)."""
    return np.tile(state[:2], (16, 1)).astype(np.float32)


def operator(env, gate=None, cap=64, hand_back=("subgoal", "agreement")):
    return SimulatedOperator(ReachExpert(env), AGENT, make_gate(gate or JointOptions(default_threshold=0.1)),
                             horizon=16, execute_steps=8, max_takeover_steps=cap, hand_back=hand_back)


def episode(env, plan, *, mode=None, beta=0.0, seed=3, frame_every=8, op=None, **kwargs):
    return run_episodes(env, ReachExpert(env), None if plan is None else {AGENT: plan}, horizon=16, execute_steps=8,
                        frame_every=frame_every, rng=np.random.default_rng(0), seed=seed, mode=mode, beta=beta,
                        operators=None if op is None else {AGENT: op}, **kwargs)[AGENT]


def test_demonstration_is_driven_by_the_expert(env):
    traj = episode(env, None, frame_every=4)
    assert len(traj.states) == 24 and all(traj.intervened) and traj.success
    assert sorted(traj.frames) == [0, 4, 8, 12, 16, 20]
    assert traj.frames[0].shape == (64, 64, 3) and traj.frames[0].dtype == np.uint8
    assert traj.labels == {} and traj.takeovers == [] and "ball" in traj.instruction


def test_an_evaluation_is_driven_by_the_policy_alone(env):
    traj = episode(env, hold_still)
    assert not any(traj.intervened) and not traj.success
    assert sorted(traj.frames) == [0, 8, 16], "one frame per planned chunk"
    assert [p.step for p in traj.plans] == [0, 8, 16] and all(p.verdict is None for p in traj.plans)
    assert traj.labels == {}, "nobody labels an evaluation"


def test_beta_mixture_labels_every_planning_state_with_the_experts_chunk(env):
    expert = ReachExpert(env)
    traj = episode(env, hold_still, mode=BetaMixtureDagger())
    assert sorted(traj.labels) == [0, 8, 16] and not any(traj.intervened)
    env.reset(seed=3)
    np.testing.assert_array_equal(traj.labels[0], expert.action_chunk(AGENT, 16))
    assert traj.labels[8].shape == (16, 2)
    assert np.abs(traj.labels[8][0] - traj.states[8][:2]).max() > 0.1, "the label moves towards the goal"
    segments = BetaMixtureDagger().segments(traj, DaggerSection())
    assert [(s.table, s.cls, s.steps, s.labelled) for s in segments] == [
        ("rollouts", ROBOT_FAILURE, tuple(range(24)), False), ("corrections", RELABEL, (0, 8, 16), True)], \
        "the policy's own steps of a failed episode are kept apart"


def test_divergent_relabel_spends_the_experts_labels_where_the_policy_goes_wrong(env):
    expert, calls = ReachExpert(env), []

    def late_starter(image, state, instruction):  # stands still for a chunk, then plans as the expert
        calls.append(1)
        return hold_still(image, state, instruction) if len(calls) == 1 else expert.action_chunk(AGENT, 16)

    traj = episode(env, late_starter, mode=BetaMixtureDagger(), op=operator(env))
    assert [p.verdict.divergent for p in traj.plans] == [True, False, False], "judged, every plan"
    assert not traj.takeovers and not any(traj.intervened), "judging never takes over"
    mode = BetaMixtureDagger()
    assert mode.judges_plans(DaggerSection(relabel="divergent")) and not mode.judges_plans(DaggerSection())
    divergent = mode.segments(traj, DaggerSection(relabel="divergent"))
    assert [(s.cls, s.steps) for s in divergent if s.table == "corrections"] == [(RELABEL, (0,))]
    every = mode.segments(traj, DaggerSection(relabel="every"))
    assert [(s.cls, s.steps) for s in every if s.table == "corrections"] == [(RELABEL, (0, 8, 16))]
    driven = episode(env, hold_still, mode=mode, beta=1.0, op=operator(env))
    assert [s.steps for s in mode.segments(driven, DaggerSection(relabel="divergent"))
            if s.table == "corrections"] == [(0, 8, 16)], "chunks the expert drove stay labelled"


def test_beta_one_lets_the_expert_drive_every_chunk(env):
    traj = episode(env, hold_still, mode=BetaMixtureDagger(), beta=1.0)
    assert all(traj.intervened) and traj.success
    assert all(np.array_equal(traj.actions[t], traj.labels[t][0]) for t in traj.labels), "the label chunk ran"


def test_chunk_and_frame_cadence_must_fit(env):
    with pytest.raises(ValueError, match="multiple of frame_every"):
        episode(env, hold_still, frame_every=3)
    with pytest.raises(ValueError, match="must be <= horizon"):
        run_episodes(env, ReachExpert(env), {AGENT: hold_still}, horizon=4, execute_steps=8, frame_every=8,
                     rng=np.random.default_rng(0), seed=0)


def test_a_gate_needs_a_policy_and_an_operator(env):
    with pytest.raises(ValueError, match="a gate needs a policy"):
        episode(env, None, mode=HGDagger(), op=operator(env))
    with pytest.raises(ValueError, match="a gate needs a policy"):
        episode(env, hold_still, mode=HGDagger())


def test_hg_dagger_takes_over_before_a_bad_chunk_runs_and_hands_back_when_the_subgoal_is_done():
    env = make_env("reach", max_steps=48)
    try:
        traj = episode(env, hold_still, mode=HGDagger(), op=operator(env, hand_back=("subgoal",)))
    finally:
        env.close()
    takeover = traj.takeovers[0]
    assert takeover.start == 0 and takeover.reason == "gate", "patience 1: the first divergent plan is never run"
    assert takeover.ended_by == "subgoal" and takeover.subgoal == "reach"
    assert takeover.end % 8 == 0 and 0 < takeover.end < 48, "control returns at a planning boundary"
    steps = range(takeover.start, takeover.end)
    assert all(traj.intervened[t] for t in steps) and not any(traj.intervened[takeover.end:])
    for t in steps:  # every operator step: its frame, the expert's whole chunk, whose first row ran
        assert t in traj.frames and traj.labels[t].shape == (16, 2)
        np.testing.assert_array_equal(traj.actions[t], traj.labels[t][0])


def test_a_takeover_hands_back_when_the_policys_fresh_plan_agrees(env):
    expert = ReachExpert(env)
    calls = []

    def late_learner(image, state, instruction):  # wrong at first, right from its second plan on
        calls.append(state)
        return hold_still(image, state, instruction) if len(calls) == 1 else expert.action_chunk(AGENT, 16)

    traj = episode(env, late_learner, mode=HGDagger(), op=operator(env, hand_back=("agreement",)))
    (takeover,) = traj.takeovers
    assert (takeover.start, takeover.end, takeover.ended_by) == (0, 8, "agreement")
    assert [p.driver for p in traj.plans] == ["policy", "policy", "policy"]
    assert traj.success and not any(traj.intervened[8:])


def test_a_takeover_that_reaches_its_cap_is_not_trained_on(env):
    traj = episode(env, hold_still, mode=HGDagger(), op=operator(env, cap=4, hand_back=()))
    assert traj.takeovers and all(t.ended_by == "cap" and t.length == 4 for t in traj.takeovers[:-1])
    assert all(t.skipped for t in traj.takeovers if t.ended_by == "cap")
    segments = HGDagger().segments(traj, DaggerSection())
    capped = {t for takeover in traj.takeovers if takeover.skipped for t in range(takeover.start, takeover.end)}
    assert not any(set(s.steps) & capped for s in segments), "no segment holds a capped takeover's steps"


def test_a_good_policy_is_never_taken_over(env):
    expert = ReachExpert(env)
    traj = episode(env, lambda image, state, instruction: expert.action_chunk(AGENT, 16), mode=HGDagger(),
                   op=operator(env, gate=JointOptions(default_threshold=0.3, patience=2)), seed=4)
    assert not traj.takeovers and not any(traj.intervened) and traj.success
    assert all(p.verdict is not None and not p.verdict.divergent for p in traj.plans)


def test_a_watched_evaluation_is_judged_but_never_taken_over(env):
    traj = episode(env, hold_still, op=operator(env), watch=True, probe_recovery=True)
    assert not traj.takeovers and not any(traj.intervened) and not traj.success
    assert all(p.verdict is not None and p.verdict.divergent for p in traj.plans)
    assert [p.verdict.fire for p in traj.plans] == [True, True, True], "patience 1 fires on every plan"
    assert [p.recoverable for p in traj.plans] == [True, None, None], "probed once, where the gate first fired"


def test_a_failure_flagged_too_late_is_found_unrecoverable():
    short = make_env("reach", max_steps=16)
    try:
        late = operator(short, JointOptions(default_threshold=0.1, patience=2))
        traj = episode(short, hold_still, op=late, watch=True, probe_recovery=True, seed=5)
    finally:
        short.close()
    assert [p.verdict.fire for p in traj.plans] == [False, True]
    assert traj.plans[1].recoverable is False, "8 steps are too few for the expert to reach the ball"


def synthetic(length=40, takeovers=(), plans=(), labelled=(), success=True):
    traj = Trajectory(instruction="reach the red ball", execute_steps=8, success=success)
    for t in range(length):
        traj.states.append(np.full(4, t, np.float32))
        traj.actions.append(np.full(2, t, np.float32))
        traj.intervened.append(any(a <= t < b for a, b, _ in takeovers))
        traj.rewards.append(0.0)
    for t in labelled:
        traj.labels[t] = np.full((16, 2), 100 + t, np.float32)
        traj.frames[t] = np.full((8, 8, 3), t, np.uint8)
    traj.frames.setdefault(0, np.zeros((8, 8, 3), np.uint8))
    traj.plans = [Plan(step, driver) for step, driver in plans]
    traj.takeovers = [Takeover(a, "gate", "reach", b, ended) for a, b, ended in takeovers]
    return traj


def test_hg_dagger_segments_label_where_the_decision_was_made():
    takeover = (16, 28, "subgoal")
    traj = synthetic(takeovers=[takeover], plans=[(0, "policy"), (8, "policy"), (16, "policy"), (28, "policy")],
                     labelled=[0, 8, 16, *range(16, 28), 28])
    relabel = DaggerSection(pre_intervention_chunks=1)
    segments = HGDagger().segments(traj, relabel)
    parts = [(s.table, s.cls, s.steps[0], s.steps[-1] + 1, s.labelled) for s in segments]
    assert parts == [
        ("corrections", INTERVENTION, 16, 28, True),
        ("corrections", PRE_INTERVENTION_RELABEL, 8, 9, True),
        ("rollouts", PRE_INTERVENTION, 8, 16, False),
        ("rollouts", ROBOT, 0, 8, False),
        ("rollouts", ROBOT, 28, 40, False),
    ]
    two = HGDagger().segments(traj, DaggerSection(pre_intervention_chunks=2))
    assert [s.steps for s in two if s.cls == PRE_INTERVENTION_RELABEL] == [(0, 8)], "non-consecutive planning states"
    traj.success = False
    failed = HGDagger().segments(traj, relabel)
    assert [s.cls for s in failed if s.table == "rollouts"] == [PRE_INTERVENTION, ROBOT_FAILURE, ROBOT_FAILURE]
    default = HGDagger().segments(traj, DaggerSection())
    assert not [s for s in default if s.cls == PRE_INTERVENTION_RELABEL], "no planning state relabelled by default"
    assert [(s.cls, s.steps[0], s.steps[-1] + 1) for s in default if s.table == "rollouts"][0] == \
        (PRE_INTERVENTION, 8, 16), "the chunk that went wrong is still kept apart from the robot's own steps"


def test_an_operator_without_labels_gives_its_executed_steps():
    traj = synthetic(takeovers=[(16, 24, "released")], plans=[(0, "policy"), (8, "policy"), (24, "policy")])
    segments = HGDagger().segments(traj, DaggerSection())
    assert [(s.table, s.cls, s.steps[0], s.steps[-1] + 1, s.labelled) for s in segments] == [
        ("corrections", INTERVENTION, 16, 24, False),
        ("rollouts", PRE_INTERVENTION, 8, 16, False),
        ("rollouts", ROBOT, 0, 8, False),
        ("rollouts", ROBOT, 24, 40, False),
    ]


def test_labelled_and_unlabelled_episodes_of_segments():
    traj = synthetic(takeovers=[(16, 20, "subgoal")], labelled=[8, 16, 17, 18, 19])
    traj.frames[12] = np.full((8, 8, 3), 12, np.uint8)
    planning = to_episode(traj, Segment("corrections", PRE_INTERVENTION_RELABEL, (8, 16), labelled=True),
                          embodiment="sim_arm", policy_version=3, actor_id="actor-1")
    planning.validate()
    assert planning.labels.shape == (2, 16, 2) and planning.labels[1, 0, 0] == 116
    np.testing.assert_array_equal(planning.states[:, 0], [8, 16])
    assert sorted(planning.frames) == [0, 1] and planning.frames[1][0, 0, 0] == 16
    part = to_episode(traj, Segment("rollouts", ROBOT, tuple(range(10, 16))), embodiment="sim_arm",
                      policy_version=3, actor_id="actor-1")
    part.validate()
    assert part.labels is None and sorted(part.frames) == [0, 2]
    assert part.frames[0][0, 0, 0] == 8, "starts with the newest frame the robot had seen"
    with pytest.raises(ValueError, match="no label or frame"):
        to_episode(traj, Segment("corrections", RELABEL, (0, 8), labelled=True), embodiment="sim_arm",
                   policy_version=3, actor_id="a")
    with pytest.raises(ValueError, match="outside the trajectory"):
        to_episode(traj, Segment("rollouts", ROBOT, (39, 40)), embodiment="sim_arm", policy_version=3, actor_id="a")


def test_expert_effort_counts_distinct_label_rows():
    traj = synthetic(takeovers=[(16, 20, "subgoal")], plans=[(0, "policy"), (8, "policy")], labelled=[8, 16, 17, 18, 19])
    segments = HGDagger().segments(traj, DaggerSection(pre_intervention_chunks=1))
    assert expert_effort(traj, segments) == (4 + 15) + 16, "a takeover: its steps and its last chunk's tail; a state: H"
    assert expert_effort(traj, [s for s in segments if s.table == "rollouts"]) == 0
    human = synthetic(takeovers=[(16, 20, "released")])
    assert expert_effort(human, HGDagger().segments(human, DaggerSection())) == 4, "the steps a human drove"


def test_driven_takeover_labels_charge_what_the_operator_drove():
    traj = synthetic(takeovers=[(16, 20, "subgoal")], plans=[(0, "policy"), (8, "policy")], labelled=[8, 16, 17, 18, 19])
    options = DaggerSection(takeover={"labels": "driven"}, pre_intervention_chunks=1)
    segments = HGDagger().segments(traj, options)
    assert [(s.cls, s.steps, s.labelled) for s in segments if s.table == "corrections"] == [
        (INTERVENTION, (16, 17, 18, 19), False), (PRE_INTERVENTION_RELABEL, (8,), True)]
    assert expert_effort(traj, segments) == 4 + 16, "the takeover: the steps driven; the planning state: H"
    episode = to_episode(traj, segments[0], embodiment="sim_arm", policy_version=1, actor_id="a")
    assert episode.labels is None and sorted(episode.frames) == [0, 1, 2, 3], "a frame at every driven step"
    with pytest.raises(ValueError, match="driven"):
        DaggerSection(takeover={"labels": "tails"})


def test_runs_of_steps_and_the_mode_registry():
    assert runs([0, 1, 2, 5, 6, 9]) == [(0, 1, 2), (5, 6), (9,)]
    assert isinstance(make_mode("hg-dagger"), HGDagger) and make_mode("hg-dagger").gated
    assert not make_mode("dagger").gated
    assert make_mode("dagger").beta(0.5, 0.5, 2) == pytest.approx(0.125)
    with pytest.raises(ValueError, match="round_index"):
        make_mode("dagger").beta(0.5, 0.5, -1)
    with pytest.raises(ValueError, match="modes: \\['dagger', 'hg-dagger'\\]"):
        make_mode("sirius")


@pytest.mark.parametrize(("chunk", "message"), [
    (np.full((16, 2), np.nan, dtype=np.float32), "non-finite action nan at step 0, dim 0"),
    (np.zeros((4, 2), dtype=np.float32), r"expected shape \(>= 8, 2\), got \(4, 2\)"),
    (np.zeros((16, 3), dtype=np.float32), r"expected shape \(>= 8, 2\), got \(16, 3\)"),
])
def test_a_bad_policy_chunk_stops_the_episode_before_it_runs(env, chunk, message):
    with pytest.raises(PolicyOutputError, match=message):
        episode(env, lambda image, state, instruction: chunk, mode=HGDagger(), op=operator(env, TaskSpaceOptions()))
    assert np.isfinite(env.data.ctrl).all() and env.data.time == 0.0, "no step was taken with it"
