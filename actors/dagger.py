"""DAgger: the beta-mixture schedule and the turning of a trajectory into replay episodes.

A trajectory becomes up to two episodes that share states and frames:
- the *rollout* (table ``rollouts``): the actions that were executed;
- the *correction* (table ``corrections``): the expert's label of every visited state.
Both carry the policy version that produced the trajectory.
"""

from __future__ import annotations

import numpy as np

from fleetloop.actors.rollout import Trajectory
from fleetloop.replay import Episode

SOURCE_DEMO = "expert_demo"
SOURCE_ROLLOUT = "policy_rollout"
SOURCE_RELABEL = "dagger_relabel"


def beta_for_round(beta_start: float, beta_decay: float, round_index: int) -> float:
    """Probability that the expert drives a chunk in ``round_index`` (beta_i = beta_0 * decay^i)."""
    if round_index < 0:
        raise ValueError(f"round_index must be >= 0, got {round_index}")
    return beta_start * beta_decay**round_index


def to_episode(traj: Trajectory, *, relabel: bool, source: str, embodiment: str, policy_version: int,
               actor_id: str) -> Episode:
    """The replay episode of a trajectory: executed actions, or expert labels when ``relabel``."""
    return Episode(
        states=np.stack(traj.states).astype(np.float32),
        actions=np.stack(traj.labels if relabel else traj.actions).astype(np.float32),
        frames=dict(traj.frames),
        instruction=traj.instruction,
        embodiment=embodiment,
        source=source,
        policy_version=policy_version,
        actor_id=actor_id,
        intervened=np.asarray(traj.intervened, dtype=bool),
        rewards=np.asarray(traj.rewards, dtype=np.float32),
        success=traj.success,
    )
