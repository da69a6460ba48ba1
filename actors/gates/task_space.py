"""TaskSpaceGate: judges where a chunk takes the hand and whether it grasps, not its joint angles.

A wrong arm path moves every joint a little (the GR-1 expert never moves an arm joint more than
about 0.12 rad per step), so joint-space thresholds miss it, while the hand ends centimetres from
where the expert's would. Gaps over the executed part of the chunks (the first
``execute_steps`` steps, simulated from the same state):

- ``effector``: the largest distance (m) between the two effector paths, step by step;
- ``grasp``: 1 when the two chunks end in a different grasp state (one holds the named object,
  the other does not), else 0. Comparing the end state tolerates a grasp a few steps early or
  late, which is timing, not a mistake;
- ``object``: when the expert's chunk ends with the named object free (placed, or not yet
  picked), the distance (m) between where the two chunks leave it: an object released while the
  hand still moves slides off its target, one the hand knocks rolls away. (While the expert
  carries it, the effector gap already says where it goes.)

Divergent when ``effector > effector_m``, ``object > object_m``, or (with ``grasp``) the grasp
differs. A single spike (the hand passing the object at grasp time) is absorbed by ``patience`` >= 2.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from fleetloop.actors.gates.base import Gate, GateOptions, Proposal


class TaskSpaceOptions(GateOptions):
    kind: Literal["task_space"] = "task_space"
    effector_m: float = Field(0.07, gt=0, description="Largest distance (m) between the policy's and the expert's "
                                                     "effector paths over the executed steps before a plan counts as divergent.")
    grasp: bool = Field(True, description="Count a plan as divergent when it ends in another grasp state than the expert's.")
    object_m: float = Field(0.04, gt=0, description="Largest distance (m) between where the two chunks leave the "
                                                   "named object, when the expert's leaves it free.")
    patience: int = Field(2, ge=1, description="Consecutive divergent plans (chunks) that make the operator take over.")


class TaskSpaceGate(Gate):
    kind = "task_space"
    Options = TaskSpaceOptions

    def gaps(self, proposal: Proposal) -> dict[str, float]:
        policy, expert = proposal.policy_trace(), proposal.expert_trace()
        steps = min(len(policy), len(expert))
        gaps = {"effector": float(np.linalg.norm(policy.effector[:steps] - expert.effector[:steps], axis=1).max())}
        if policy.grasp is not None and expert.grasp is not None:
            gaps["grasp"] = float(policy.grasp[steps - 1] != expert.grasp[steps - 1])
        if policy.object is not None and expert.object is not None:
            free = expert.grasp is None or not expert.grasp[steps - 1]
            gaps["object"] = float(np.linalg.norm(policy.object[steps - 1] - expert.object[steps - 1])) if free else 0.0
        return gaps

    def exceeds(self, gaps: dict[str, float]) -> bool:
        options = self.options
        return (gaps["effector"] > options.effector_m or gaps.get("object", 0.0) > options.object_m
                or (options.grasp and gaps.get("grasp", 0.0) > 0.5))
