"""Gates on synthetic proposals, and the gate options as the config validates them."""

import numpy as np
import pytest

from fleetloop.actors.envs.trace import TaskTrace
from fleetloop.actors.gates import GATES, JointGate, JointOptions, Proposal, TaskSpaceGate, TaskSpaceOptions, make_gate
from fleetloop.config import ConfigError, load_config

GROUPS = {"right_arm": (0, 7), "right_hand": (7, 13)}


def path(offset_m: float, steps: int = 8, grasp_at: int | None = None) -> TaskTrace:
    """A straight effector path along x, shifted ``offset_m`` in y; grasped from step ``grasp_at`` on."""
    effector = np.stack([np.linspace(0, 0.2, steps), np.full(steps, offset_m), np.zeros(steps)], axis=1)
    grasp = np.zeros(steps, bool) if grasp_at is None else np.arange(steps) >= grasp_at
    return TaskTrace(effector, grasp)


def proposal(policy: TaskTrace, expert: TaskTrace, steps: int = 8) -> Proposal:
    chunk = np.zeros((16, 13), np.float32)
    return Proposal(chunk, chunk, steps, policy_trace_fn=lambda: policy, expert_trace_fn=lambda: expert)


def test_task_space_gaps_are_the_largest_effector_distance_and_the_final_grasp():
    gate = TaskSpaceGate(TaskSpaceOptions(effector_m=0.07, patience=2))
    gaps = gate.gaps(proposal(path(0.1), path(0.0)))
    assert gaps == {"effector": pytest.approx(0.1), "grasp": 0.0}, "no object in these traces, no object gap"
    assert gate.gaps(proposal(path(0.0, grasp_at=3), path(0.0)))["grasp"] == 1.0
    assert gate.gaps(proposal(path(0.0, grasp_at=3), path(0.0, grasp_at=6)))["grasp"] == 0.0, \
        "a grasp a few steps early is timing, not a mistake"


def test_task_space_gate_fires_after_patience_divergent_plans_in_a_row():
    gate = TaskSpaceGate(TaskSpaceOptions(effector_m=0.07, patience=2))
    far, near = proposal(path(0.12), path(0.0)), proposal(path(0.03), path(0.0))
    first = gate.judge(far)
    assert first.divergent and not first.fire
    assert not gate.judge(near).divergent, "a close plan resets the count"
    assert not gate.judge(far).fire
    assert gate.judge(far).fire
    assert not gate.judge(far).fire, "the count starts afresh after firing"
    assert gate.agrees(near) and not gate.agrees(far)


def test_where_a_released_object_ends_up_counts_only_once_the_expert_lets_go():
    gate = TaskSpaceGate(TaskSpaceOptions(patience=1))
    still = np.tile([0.4, -0.1, 1.02], (8, 1))
    sliding = still + np.linspace(0, 0.06, 8)[:, None] * [1, 0, 0]

    def traces(policy_object, expert_holds):
        grasp = np.full(8, expert_holds)
        return proposal(TaskTrace(path(0.0).effector, np.zeros(8, bool), policy_object),
                        TaskTrace(path(0.0).effector, grasp, still))

    verdict = gate.judge(traces(sliding, expert_holds=False))
    assert verdict.gaps["object"] == pytest.approx(0.06) and verdict.fire, "released while moving: it slides"
    assert gate.gaps(traces(sliding, expert_holds=True))["object"] == 0.0, "while the expert carries it, the hand says"
    assert not gate.judge(traces(still, expert_holds=False)).divergent


def held(steps: int = 8, until: int = 8, object_at: float = 0.0) -> TaskTrace:
    """Holding the object from the first step until step ``until``, then the object at ``object_at`` in y."""
    trace = path(0.0, steps)
    return TaskTrace(trace.effector, np.arange(steps) < until, np.tile([0.2, object_at, 0.0], (steps, 1)))


def test_a_plan_that_lets_go_of_the_object_slips_when_it_drops_or_misplaces_it():
    gate = TaskSpaceGate(TaskSpaceOptions(object_m=0.04))
    dropped = gate.gaps(proposal(held(until=3, object_at=0.1), held()))
    assert dropped["slip"] == pytest.approx(0.1) and gate.exceeds(dropped), "dropped beside the expert's hand"
    early = gate.gaps(proposal(held(until=3), held()))
    assert early["slip"] == 0.0 and early["grasp"] == 1.0, "let go early above the spot: no slip, a grasp gap"
    misplaced = gate.gaps(proposal(held(until=5, object_at=0.06), held(until=5)))
    assert misplaced["slip"] == pytest.approx(0.06) and gate.exceeds(misplaced)
    placed = gate.gaps(proposal(held(until=5, object_at=0.01), held(until=6)))
    assert placed["slip"] == pytest.approx(0.01) and not gate.exceeds(placed)
    assert "slip" not in gate.gaps(proposal(held(), held())), "still holding: the effector gap speaks"
    assert "slip" not in gate.gaps(proposal(path(0.0, grasp_at=3), path(0.0))), "not holding as the plan starts"


def test_settled_rows_say_where_the_object_rests_and_the_executed_rows_the_rest():
    """With settle_steps the traces run on past the executed steps (the robots holding still): an
    object let go 3 cm from the expert's spot that then slides off the target's edge slips; the
    effector and grasp gaps still look at the executed steps only."""
    def released(slides_m: float, hand_m: float = 0.0) -> TaskTrace:
        trace = held(steps=12, until=6, object_at=0.03 if slides_m else 0.0)
        obj = trace.object.copy()
        obj[8:, 1] += slides_m  # after the chunk: the object slides on while the hands hold still
        effector = trace.effector.copy()
        effector[8:, 1] += hand_m
        return TaskTrace(effector, trace.grasp, obj)

    def settled(policy: TaskTrace, expert: TaskTrace, settle: int) -> Proposal:
        chunk = np.zeros((16, 13), np.float32)
        return Proposal(chunk, chunk, 8, policy_trace_fn=lambda: policy, expert_trace_fn=lambda: expert,
                        settle_steps=settle)

    gate = TaskSpaceGate(TaskSpaceOptions(settle_steps=4))
    assert gate.settle_steps == 4 and TaskSpaceGate(TaskSpaceOptions()).settle_steps == 0
    off_edge = gate.gaps(settled(released(slides_m=0.05), released(0.0), settle=4))
    assert off_edge["slip"] == pytest.approx(0.08) and gate.judge(settled(released(0.05), released(0.0), 4)).fire
    at_chunk_end = gate.gaps(proposal(released(slides_m=0.05), released(0.0)))
    assert at_chunk_end["slip"] == pytest.approx(0.03) and not gate.exceeds(at_chunk_end), \
        "judged as the chunk ends, the release beside the edge looks placed"
    still = gate.gaps(settled(released(0.0, hand_m=0.5), released(0.0), settle=4))
    assert still["effector"] == 0.0 and still["grasp"] == 0.0, "settled rows never count for the hand"


def test_gaps_named_at_once_fire_without_waiting_for_patience():
    dropped = proposal(held(until=3, object_at=0.1), held())
    patient = TaskSpaceGate(TaskSpaceOptions(patience=2, at_once=[]))
    assert patient.judge(dropped).divergent and not patient.judge(proposal(path(0.0), path(0.0))).fire
    hasty = TaskSpaceGate(TaskSpaceOptions(patience=2))
    assert hasty.judge(dropped).fire
    assert not hasty.judge(proposal(path(0.12), path(0.0))).fire, "an effector gap still waits for patience"


def test_a_done_robot_is_judged_by_where_the_object_ends_only_when_asked():
    def moved(offset_m: float) -> TaskTrace:
        trace = path(0.3)
        return TaskTrace(trace.effector, np.zeros(8, bool), np.tile([0.0, offset_m, 0.0], (8, 1)))
    chunk = np.zeros((16, 13), np.float32)
    knocked = Proposal(chunk, chunk, 8, policy_trace_fn=lambda: moved(0.1), expert_trace_fn=lambda: moved(0.0),
                       done=True)
    retreat = Proposal(chunk, chunk, 8, policy_trace_fn=lambda: moved(0.0), expert_trace_fn=lambda: moved(0.0),
                       done=True)
    gate = TaskSpaceGate(TaskSpaceOptions(judge_done=True))
    assert gate.judges_done and gate.gaps(knocked) == {"slip": pytest.approx(0.1)}
    assert gate.exceeds(gate.gaps(knocked)) and not gate.exceeds(gate.gaps(retreat)), "the hand's path is free"
    assert not TaskSpaceGate(TaskSpaceOptions(judge_done=False)).judges_done
    assert TaskSpaceOptions() == TaskSpaceOptions(judge_done=True, at_once=["slip"]), "the default since 2026-12-07"


def test_a_grasp_mismatch_is_divergent_unless_grasps_are_ignored():
    closes_early = proposal(path(0.0, grasp_at=2), path(0.0))
    assert TaskSpaceGate(TaskSpaceOptions(patience=1)).judge(closes_early).fire
    assert not TaskSpaceGate(TaskSpaceOptions(patience=1, grasp=False)).judge(closes_early).divergent


def test_only_the_executed_steps_are_compared():
    diverges_late = TaskTrace(np.concatenate([path(0.0).effector, path(0.5).effector]))
    gate = TaskSpaceGate(TaskSpaceOptions(grasp=False))
    assert gate.gaps(proposal(diverges_late, TaskTrace(np.concatenate([path(0.0).effector] * 2))))["effector"] == 0.0


def test_joint_gate_has_a_threshold_per_joint_group():
    gate = JointGate(JointOptions(thresholds={"right_arm": 0.1}, default_threshold=0.5), GROUPS)
    policy, expert = np.zeros((16, 13), np.float32), np.zeros((16, 13), np.float32)
    policy[3, 2] = 0.15  # an arm joint: over its 0.1
    verdict = gate.judge(Proposal(policy, expert, 8))
    assert verdict.gaps == {"right_arm": pytest.approx(0.15), "right_hand": 0.0} and verdict.fire
    policy[3, 2], policy[2, 9] = 0.0, 0.4  # a finger: under its 0.5
    assert not gate.judge(Proposal(policy, expert, 8)).divergent
    policy[12, 9] = 2.0  # past the executed steps
    assert not gate.judge(Proposal(policy, expert, 8)).divergent


def test_joint_thresholds_must_name_groups_of_the_layout():
    with pytest.raises(ValueError, match=r"unknown joint groups \['left_leg'\]"):
        JointGate(JointOptions(thresholds={"left_leg": 0.1}), GROUPS)
    with pytest.raises(ValueError, match="thresholds must be > 0"):
        JointOptions(thresholds={"right_arm": 0.0})
    assert make_gate(JointOptions()).gaps(Proposal(np.ones((4, 3)), np.zeros((4, 3)), 2)) == {"action": 1.0}


def test_a_task_space_gate_needs_traces():
    with pytest.raises(ValueError, match="needs the policy's task-space trace"):
        TaskSpaceGate(TaskSpaceOptions()).judge(Proposal(np.zeros((16, 2)), np.zeros((16, 2)), 8))


def test_the_config_validates_gates_against_the_registry():
    cfg = load_config("default", ["actors.dagger.mode=hg-dagger", "actors.dagger.gate.effector_m=0.05"])
    assert cfg.actors.dagger.gate == TaskSpaceOptions(effector_m=0.05)
    joint = load_config("default", ["actors.dagger.gate={kind: joint, thresholds: {right_arm: 0.2}}"])
    assert joint.actors.dagger.gate == JointOptions(thresholds={"right_arm": 0.2})
    assert sorted(GATES) == ["joint", "task_space"]
    with pytest.raises(ConfigError, match="actors.dagger.gate.*'task_space', 'joint'"):
        load_config("default", ["actors.dagger.gate.kind=sometimes"])
    with pytest.raises(ConfigError, match="actors.dagger.gate.task_space.thresholds: unknown field"):
        load_config("default", ["actors.dagger.gate.thresholds={right_arm: 0.2}"])
    with pytest.raises(ConfigError, match="actors.dagger.gate.task_space.effector_m"):
        load_config("default", ["actors.dagger.gate.effector_m=-1"])
    with pytest.raises(ConfigError, match="actors.dagger.gate.task_space.settle_steps"):
        load_config("default", ["actors.dagger.gate.settle_steps=-2"])
    assert load_config("default", ["actors.dagger.gate.settle_steps=8"]).actors.dagger.gate.settle_steps == 8
