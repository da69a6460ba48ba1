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
- ``slip``: where the robot loses the object, as the horizontal distance (m) between where the two
  chunks leave it: when the policy's chunk lets go of the object the robot holds (dropped in
  transport or released off target; let go a few steps early above the spot, it falls there and
  the gap stays small), and for a robot whose part is done (with ``judge_done``, the only gap
  judged: a hand moving away can knock the placed object off its target).
  Dropping, misplacing and knocking the object were most of the failures of D's improved policy,
  and each happens within one chunk.

With ``settle_steps`` the object and slip gaps compare where the object rests once both robots
have held their last targets that many steps more: a release just beside the target's edge
leaves the object within ``object_m`` of the expert's spot when the chunk ends, and off the
target a few steps later.

``at_once`` names the gaps that fire on the first divergent plan: a slip is over within one
chunk, so waiting for ``patience`` means taking over once it is too late.

Divergent when ``effector > effector_m``, ``object > object_m``, ``slip > object_m``, or
(with ``grasp``) the grasp differs. A single spike (the hand passing the object at grasp time) is
absorbed by ``patience`` >= 2.
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
    judge_done: bool = Field(True, description="Judge a robot whose part of the task is done by where its plan "
                                                "leaves the object (the slip gap alone); false: not at all.")
    at_once: list[Literal["effector", "grasp", "object", "slip"]] = Field(
        default_factory=lambda: ["slip"], description="Gaps that make the operator take over on the first divergent "
                                                      "plan, without waiting for patience (a drop or a knocked "
                                                      "object is over within one chunk).")
    settle_steps: int = Field(0, ge=0, le=64, description="Steps simulated after each chunk's executed part with the "
                                                         "robot holding its last target; the object and slip gaps "
                                                         "compare where the object rests then (an object let go on "
                                                         "a target's edge slides off after the chunk). 0: at the "
                                                         "chunk's last executed step.")


class TaskSpaceGate(Gate):
    kind = "task_space"
    Options = TaskSpaceOptions

    @property
    def judges_done(self) -> bool:
        return self.options.judge_done

    @property
    def settle_steps(self) -> int:
        return self.options.settle_steps

    def gaps(self, proposal: Proposal) -> dict[str, float]:
        policy, expert = proposal.policy_trace(), proposal.expert_trace()
        rows = min(len(policy), len(expert))
        ran, end = min(proposal.execute_steps, rows), rows - 1  # executed rows; where objects are judged
        if proposal.done:  # only where the object ends up counts: the hand is free to move away
            if policy.object is None or expert.object is None:
                return {}
            return {"slip": _table_distance(policy.object[end], expert.object[end])}
        gaps = {"effector": float(np.linalg.norm(policy.effector[:ran] - expert.effector[:ran], axis=1).max())}
        if policy.grasp is not None and expert.grasp is not None:
            gaps["grasp"] = float(policy.grasp[ran - 1] != expert.grasp[ran - 1])
        if policy.object is not None and expert.object is not None:
            free = expert.grasp is None or not expert.grasp[ran - 1]
            gaps["object"] = float(np.linalg.norm(policy.object[end] - expert.object[end])) if free else 0.0
            if policy.grasp is not None and policy.grasp[0] and not policy.grasp[ran - 1]:  # the policy lets go
                gaps["slip"] = _table_distance(policy.object[end], expert.object[end])
        return gaps

    def exceeds(self, gaps: dict[str, float]) -> bool:
        return any(self._over(name, gaps) for name in gaps)

    def at_once(self, gaps: dict[str, float]) -> bool:
        return any(self._over(name, gaps) for name in self.options.at_once if name in gaps)

    def _over(self, name: str, gaps: dict[str, float]) -> bool:
        options = self.options
        limits = {"effector": options.effector_m, "object": options.object_m, "slip": options.object_m,
                  "grasp": 0.5 if options.grasp else float("inf")}
        return gaps[name] > limits[name]


def _table_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Horizontal distance (m) between two object positions: where on the table each would end up
    (an object let go a few steps early falls onto the spot the expert's hand was lowering it to)."""
    return float(np.linalg.norm(np.asarray(a)[:2] - np.asarray(b)[:2]))
