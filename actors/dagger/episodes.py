"""Turning segments of a recorded trajectory into replay episodes, and counting the expert effort
they hold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fleetloop.actors.dagger.base import Segment, runs
from fleetloop.actors.rollout import Trajectory
from fleetloop.replay import Episode
from fleetloop.replay.episode import version_at


def to_episode(traj: Trajectory, segment: Segment, *, embodiment: str, policy_version: int, actor_id: str,
               version_changes: Sequence[tuple[int, int]] = ()) -> Episode:
    """The replay episode of ``segment``: its states, executed actions and flags; with labels (the
    expert's chunk at every step, each step with its frame) when the segment is labelled, else
    starting with the newest frame rendered at or before its first step (what the robot last saw).
    ``policy_version`` acted from the trajectory's start, and each ``(step, version)`` of
    ``version_changes`` from that trajectory step on: the episode keeps the version of every step.

    Raises:
        ValueError: a step is outside the trajectory, or a labelled step has no label or frame.
    """
    steps = list(segment.steps)
    if not steps or min(steps) < 0 or max(steps) >= len(traj.states):
        raise ValueError(f"segment steps {steps[:1]}..{steps[-1:]} are outside the trajectory's {len(traj.states)} steps")
    changes = tuple(version_changes)
    versions = [version_at(policy_version, changes, step) for step in steps]
    if segment.labelled:
        missing = [step for step in steps if step not in traj.labels or step not in traj.frames]
        if missing:
            raise ValueError(f"labelled segment: steps {missing[:5]} have no label or frame")
        frames = {i: traj.frames[step] for i, step in enumerate(steps)}
        labels = np.stack([traj.labels[step] for step in steps]).astype(np.float32)
    else:
        first = steps[0]
        frames = {0: traj.frames[max(step for step in traj.frames if step <= first)]}
        frames.update({step - first: frame for step, frame in traj.frames.items() if first < step <= steps[-1]})
        labels = None
    return Episode(
        states=np.stack([traj.states[s] for s in steps]).astype(np.float32),
        actions=np.stack([traj.actions[s] for s in steps]).astype(np.float32),
        frames=frames,
        instruction=traj.instruction,
        embodiment=embodiment,
        source=segment.cls,
        policy_version=versions[0],
        version_changes=tuple((i, v) for i, (before, v) in enumerate(zip(versions, versions[1:]), 1) if v != before),
        actor_id=actor_id,
        intervened=np.asarray([traj.intervened[s] for s in steps], dtype=bool),
        rewards=np.asarray([traj.rewards[s] for s in steps], dtype=np.float32),
        success=traj.success,
        labels=labels,
    )


def expert_effort(traj: Trajectory, segments: list[Segment]) -> int:
    """Distinct expert actions in the ``corrections`` of ``segments``: a labelled run of L consecutive
    steps holds L + H - 1 rows (consecutive chunks share all but one), a lone labelled planning state
    H rows; an unlabelled correction (a human's takeover) the steps it drove."""
    rows = 0
    for segment in segments:
        if segment.table != "corrections":
            continue
        if not segment.labelled:
            rows += len(segment.steps)
            continue
        for run in runs(segment.steps):
            rows += len(run) + len(traj.labels[run[0]]) - 1
    return rows
