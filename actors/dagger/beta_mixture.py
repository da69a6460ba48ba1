"""``dagger``: beta-mixture DAgger (Ross et al., 2011) with chunk labels.

Each chunk is driven by the expert with probability beta (beta_i = beta_0 * decay^i in round i),
else by the policy. At every planning state, whoever drives, the expert's H-step chunk from that
state is recorded; those planning states go to ``corrections`` as ``relabel``, each labelled with
its chunk. The executed trajectory goes to ``rollouts`` as ``robot``.

With ``actors.dagger.relabel: divergent`` an operator judges every plan the policy drives through
the gate (actors/gates), as in hg-dagger but never taking over, and only the planning states the
expert drove or whose policy plan was divergent are relabelled: the expert's labels go where the
policy is wrong, not to states it already handles.
"""

from __future__ import annotations

import numpy as np

from fleetloop.actors.dagger.base import RELABEL, DaggerMode, Segment, robot_class


class BetaMixtureDagger(DaggerMode):
    name = "dagger"
    gated = False

    def judges_plans(self, options) -> bool:
        return options.relabel == "divergent"

    def expert_drives(self, rng: np.random.Generator, beta: float) -> bool:
        return bool(rng.random() < beta)

    def beta(self, beta_start: float, beta_decay: float, round_index: int) -> float:
        if round_index < 0:
            raise ValueError(f"round_index must be >= 0, got {round_index}")
        return beta_start * beta_decay**round_index

    def segments(self, traj, options) -> list[Segment]:
        wanted = {plan.step for plan in traj.plans if options.relabel == "every" or plan.driver == "expert"
                  or (plan.verdict is not None and plan.verdict.divergent)}
        planned = tuple(sorted(step for step in traj.labels if step in traj.frames and step in wanted))
        parts = [Segment.whole("rollouts", robot_class(traj.success), len(traj.states))]
        if planned:
            parts.append(Segment("corrections", RELABEL, planned, labelled=True))
        return parts
