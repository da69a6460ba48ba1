"""JointGate: judges a chunk by its joint targets, with a threshold per joint group.

Gap of a group: the largest absolute difference (rad) between the policy's and the expert's
joint targets of that group over the executed part of the chunks (``execute_steps`` rows).
Divergent when any group's gap exceeds its threshold (``thresholds[group]``, else
``default_threshold``). Groups are the embodiment layout's action slices (GR-1: ``right_arm``,
``right_hand``, ...); without a layout, one group ``action``. Cheap (no simulation), but blind to
arm paths that go wrong a little at a time: prefer ``task_space`` where the expert can simulate.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from fleetloop.actors.gates.base import Gate, GateOptions, Proposal


class JointOptions(GateOptions):
    kind: Literal["joint"] = "joint"
    thresholds: dict[str, float] = Field(default_factory=dict, description="Joint group -> largest target difference "
                                                                          "(rad) before a plan counts as divergent.")
    default_threshold: float = Field(0.3, gt=0, description="Threshold (rad) of groups not in thresholds.")
    patience: int = Field(1, ge=1, description="Consecutive divergent plans (chunks) that make the operator take over.")

    @field_validator("thresholds")
    @classmethod
    def _positive(cls, thresholds: dict[str, float]) -> dict[str, float]:
        bad = {group: value for group, value in thresholds.items() if not value > 0}
        if bad:
            raise ValueError(f"thresholds must be > 0, got {bad}")
        return thresholds


class JointGate(Gate):
    kind = "joint"
    Options = JointOptions

    def __init__(self, options: JointOptions, action_groups: dict[str, tuple[int, int]] | None = None):
        super().__init__(options, action_groups)
        unknown = sorted(set(options.thresholds) - set(action_groups or {"action": None}))
        if unknown:
            raise ValueError(f"gate thresholds name unknown joint groups {unknown}; "
                             f"groups: {sorted(action_groups or ['action'])}")

    def _groups(self, action_dim: int) -> dict[str, tuple[int, int]]:
        return self.action_groups if self.action_groups is not None else {"action": (0, action_dim)}

    def gaps(self, proposal: Proposal) -> dict[str, float]:
        steps = proposal.execute_steps
        diff = np.abs(np.asarray(proposal.policy[:steps], np.float64) - np.asarray(proposal.expert[:steps], np.float64))
        return {group: float(diff[:, start:end].max()) for group, (start, end) in self._groups(diff.shape[1]).items()}

    def exceeds(self, gaps: dict[str, float]) -> bool:
        return any(gap > self.options.thresholds.get(group, self.options.default_threshold) for group, gap in gaps.items())
