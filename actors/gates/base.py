"""The gate interface: how a simulated operator judges the policy's plan at a planning step.

Words used here:
- *proposal*: at a planning step, the policy's chunk and the expert's chunk planned from the same
  state, with the task-space traces of both (computed on demand, since they cost a simulation);
- *gap*: how far apart the two chunks take the robot, per quantity (``effector`` metres,
  ``grasp`` 0/1, ``<joint group>`` radians);
- *divergent*: some gap exceeds its threshold;
- *fire*: ``patience`` consecutive divergent plans (or one, for a gap the gate fires on at
  once): the operator takes over now, before the policy's chunk runs;
- *agrees*: a fresh plan during a takeover is not divergent, so control may return.
- *settle*: steps simulated after a chunk's executed part with the robot holding its last target,
  so that an object let go on a target's edge has slid off (or come to rest) when it is judged.

A gate is one object per robot and episode (``reset`` between episodes). The actor's simulated
operator (actors/operator.py) and the robot bridge's MuJoCo twin both build theirs with
``make_gate`` (actors/gates/__init__.py) from ``actors.dagger.gate``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from fleetloop.actors.envs.trace import TaskTrace


class GateOptions(BaseModel):
    """Options every gate kind declares (its config section: ``actors.dagger.gate``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Proposal:
    """The policy's and the expert's chunk from one state; ``execute_steps`` of them would run."""

    policy: np.ndarray
    """float32 (H, A) the policy's chunk, in the env's action layout."""
    expert: np.ndarray
    """float32 (H, A) the expert's chunk from the same state."""
    execute_steps: int
    policy_trace_fn: Callable[[], TaskTrace] | None = None
    """Simulates the executed part of the policy's chunk (needed by task-space gates)."""
    expert_trace_fn: Callable[[], TaskTrace] | None = None
    done: bool = False
    """The robot's part of the task is done (only gates that ``judge_done`` see such proposals)."""
    settle_steps: int = 0
    """Rows after the executed ones in each trace: the robot holding its last target (see *settle*)."""
    _traces: dict[str, TaskTrace] = field(default_factory=dict)

    def policy_trace(self) -> TaskTrace:
        return self._trace("policy", self.policy_trace_fn)

    def expert_trace(self) -> TaskTrace:
        return self._trace("expert", self.expert_trace_fn)

    def _trace(self, who: str, make: Callable[[], TaskTrace] | None) -> TaskTrace:
        if who not in self._traces:
            if make is None:
                raise ValueError(f"this gate needs the {who}'s task-space trace, but the proposal has none")
            self._traces[who] = make().head(self.execute_steps + self.settle_steps)
        return self._traces[who]


@dataclass(frozen=True)
class Verdict:
    """A gate's judgement of one proposal."""

    gaps: dict[str, float]
    """quantity -> gap (see the module docstring)."""
    divergent: bool
    fire: bool
    """The operator takes over now (``patience`` consecutive divergent plans)."""


class Gate(abc.ABC):
    """Judges proposals of one robot; counts divergent plans towards ``patience``."""

    kind: ClassVar[str]
    Options: ClassVar[type[GateOptions]]

    def __init__(self, options: GateOptions, action_groups: dict[str, tuple[int, int]] | None = None):
        """Args:
            options: this kind's options.
            action_groups: joint group -> (start, end) of the action vector (the embodiment
                layout's slices); None: one group ``action`` over every dim.
        """
        self.options = options
        self.action_groups = action_groups
        self.reset()

    @property
    def patience(self) -> int:
        return self.options.patience

    @property
    def settle_steps(self) -> int:
        """Steps the traces this gate judges run on after the executed part (see *settle*)."""
        return 0

    @property
    def judges_done(self) -> bool:
        """Whether this gate judges robots whose part of the task is done (``Proposal.done``);
        otherwise the operator does not judge them."""
        return False

    def reset(self) -> None:
        """Forget divergence (a new episode, or control just came back)."""
        self._divergent = 0

    def judge(self, proposal: Proposal) -> Verdict:
        """Judge the plan about to run; ``fire`` when the operator must take over now."""
        gaps = self.gaps(proposal)
        divergent = self.exceeds(gaps)
        self._divergent = self._divergent + 1 if divergent else 0
        fire = self._divergent >= self.patience or (divergent and self.at_once(gaps))
        if fire:
            self._divergent = 0
        return Verdict(gaps, divergent, fire)

    def agrees(self, proposal: Proposal) -> bool:
        """Whether a fresh plan during a takeover matches the operator's (does not count)."""
        return not self.exceeds(self.gaps(proposal))

    @abc.abstractmethod
    def gaps(self, proposal: Proposal) -> dict[str, float]:
        """Gap per quantity between the executed parts of the two chunks."""

    @abc.abstractmethod
    def exceeds(self, gaps: dict[str, float]) -> bool:
        """Whether any gap is over its threshold."""

    def at_once(self, gaps: dict[str, float]) -> bool:
        """Whether a divergent plan fires without waiting for ``patience`` (a gap that is no spike)."""
        return False
