"""``dagger``: beta-mixture DAgger (Ross et al., 2011) with chunk labels.

Each chunk is driven by the expert with probability beta (beta_i = beta_0 * decay^i in round i),
else by the policy. At every planning state, whoever drives, the expert's H-step chunk from that
state is recorded; those planning states go to ``corrections`` as ``relabel``, each labelled with
its chunk. The executed trajectory goes to ``rollouts`` as ``robot``.
"""

from __future__ import annotations

import numpy as np

from fleetloop.actors.dagger.base import RELABEL, DaggerMode, Segment, robot_class


class BetaMixtureDagger(DaggerMode):
    name = "dagger"
    gated = False

    def expert_drives(self, rng: np.random.Generator, beta: float) -> bool:
        return bool(rng.random() < beta)

    def beta(self, beta_start: float, beta_decay: float, round_index: int) -> float:
        if round_index < 0:
            raise ValueError(f"round_index must be >= 0, got {round_index}")
        return beta_start * beta_decay**round_index

    def segments(self, traj, options) -> list[Segment]:
        planned = tuple(sorted(step for step in traj.labels if step in traj.frames))
        parts = [Segment.whole("rollouts", robot_class(traj.success), len(traj.states))]
        if planned:
            parts.append(Segment("corrections", RELABEL, planned, labelled=True))
        return parts
