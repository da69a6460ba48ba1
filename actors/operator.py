"""SimulatedOperator: the scripted expert watching one robot through a gate, as a human operator would.

At each planning step of the policy the operator judges the policy's chunk against the chunk it
would execute from the same state (actors/gates), unless the robot's part of the task is done. When the gate fires it takes over at once (the
policy's chunk never runs) and keeps control until the takeover's job is done; the first of:

- ``subgoal``: the expert's subgoal at the start of the takeover is done (the object is grasped,
  placed, ...; actors/envs/trace.py);
- ``agreement``: at a planning boundary of the takeover (every ``execute_steps`` steps), the
  policy's fresh plan from the current state agrees with the operator's;
- ``cap``: ``takeover.max_steps`` steps ran; the segment is marked (``Takeover.skipped``) and is
  not trained on: an operator that needs that long is not showing a clean correction;
- ``episode_end``;
- ``expert_unavailable``: the expert can no longer plan from the state (``ExpertUnavailable``,
  e.g. the object was pushed out of reach); marked and skipped like a capped one.

While it drives, every step's label is the expert's whole H-step chunk from that state (the
expert's own future, so its first row is the executed action). The actor's rollouts and the
robot bridge's MuJoCo twin build theirs with ``make_operator`` from ``actors.dagger``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetloop.actors.envs.trace import DONE
from fleetloop.actors.gates import Gate, Proposal, Verdict, make_gate

if TYPE_CHECKING:
    from fleetloop.config import DaggerSection

HAND_BACK_REASONS = ("subgoal", "agreement")
"""Reasons a takeover may end early, besides ``cap`` and ``episode_end`` (``actors.dagger.takeover.hand_back``)."""
SKIPPED_ENDINGS = ("cap", "expert_unavailable")
"""Endings of a takeover that is marked and not trained on."""


@dataclass
class Takeover:
    """One takeover of one robot: steps ``[start, end)`` driven by the operator."""

    start: int
    reason: str
    """Why it started: ``gate`` (the gate fired) or what an operator's request said."""
    subgoal: str
    """The expert's subgoal when it started."""
    end: int | None = None
    ended_by: str | None = None
    """``subgoal``, ``agreement``, ``cap`` or ``episode_end``."""

    @property
    def length(self) -> int:
        return (self.end if self.end is not None else self.start) - self.start

    @property
    def skipped(self) -> bool:
        """Not trained on: it reached its cap, or the expert could no longer plan (``SKIPPED_ENDINGS``)."""
        return self.ended_by in SKIPPED_ENDINGS


class SimulatedOperator:
    """The expert of an env judging and correcting one of its robots (``agent``).

    Args:
        expert: the env's scripted expert (``action_chunk``, ``trace``, ``expert_trace``, ``subgoal``).
        agent: the robot watched.
        gate: a fresh gate for this robot.
        horizon: H, the length of the chunks compared and of every label.
        execute_steps: steps of a chunk executed before planning again.
        max_takeover_steps: the cap of a takeover.
        hand_back: the early endings allowed (``HAND_BACK_REASONS``).
    """

    def __init__(self, expert: Any, agent: str, gate: Gate, *, horizon: int, execute_steps: int,
                 max_takeover_steps: int, hand_back: tuple[str, ...] = HAND_BACK_REASONS):
        unknown = sorted(set(hand_back) - set(HAND_BACK_REASONS))
        if unknown:
            raise ValueError(f"hand_back reasons {unknown} are unknown; reasons: {list(HAND_BACK_REASONS)}")
        if max_takeover_steps < 1 or not 1 <= execute_steps <= horizon:
            raise ValueError(f"need max_takeover_steps >= 1 and 1 <= execute_steps <= horizon, got "
                             f"{max_takeover_steps}, {execute_steps}, {horizon}")
        self.expert, self.agent, self.gate = expert, agent, gate
        self.horizon, self.execute_steps = horizon, execute_steps
        self.max_takeover_steps = max_takeover_steps
        self.hand_back = tuple(hand_back)
        self.takeover: Takeover | None = None

    def reset(self) -> None:
        """A new episode: no takeover, no divergence counted."""
        self.gate.reset()
        self.takeover = None

    @property
    def in_control(self) -> bool:
        return self.takeover is not None

    def reference(self) -> np.ndarray:
        """The expert's H-step chunk from the live state (also the label of this state)."""
        return self.expert.action_chunk(self.agent, self.horizon)

    def proposal(self, policy_chunk: np.ndarray, execute_steps: int | None = None, done: bool = False) -> Proposal:
        """The policy's chunk against the expert's from the live state, over the ``execute_steps``
        (default: the operator's) that would run; traces simulated on demand."""
        steps = min(execute_steps or self.execute_steps, len(policy_chunk))
        policy, expert, settle = np.asarray(policy_chunk, np.float32), self.reference(), self.gate.settle_steps
        if settle:  # both robots hold their last executed target while the object comes to rest
            expert_trace_fn = partial(self.expert.trace, self.agent, _held(expert[:steps], settle))
        else:
            expert_trace_fn = partial(self.expert.expert_trace, self.agent, steps)
        return Proposal(policy, expert, steps, done=done, settle_steps=settle, expert_trace_fn=expert_trace_fn,
                        policy_trace_fn=partial(self.expert.trace, self.agent, _held(policy[:steps], settle)))

    def judge(self, policy_chunk: np.ndarray, execute_steps: int | None = None) -> Verdict:
        """The gate's verdict on the policy's plan about to run (counts towards patience). A robot
        whose part of the task is done is judged only by a gate that ``judges_done`` (what is left
        to go wrong is knocking the object while moving away)."""
        if self.expert.subgoal(self.agent) == DONE:
            if not self.gate.judges_done:
                self.gate.reset()
                return Verdict({}, divergent=False, fire=False)
            return self.gate.judge(self.proposal(policy_chunk, execute_steps, done=True))
        return self.gate.judge(self.proposal(policy_chunk, execute_steps))

    def take_over(self, step: int, reason: str) -> Takeover:
        """Take control now. The expert simulates its whole takeover once (cap + H steps), so each
        step's label comes from that simulation while the robot follows it."""
        self.expert.action_chunk(self.agent, self.max_takeover_steps + self.horizon)
        self.takeover = Takeover(step, reason, self.expert.subgoal(self.agent))
        return self.takeover

    def hand_back_reason(self, step: int, fresh_plan: Callable[[], np.ndarray] | None) -> str | None:
        """Why control returns to the policy before ``step`` runs, or None to keep driving.

        ``fresh_plan`` asks the policy for a chunk from the live state (only called when the
        ``agreement`` ending is allowed and this is a planning boundary of the takeover).
        """
        takeover = self.takeover
        ran = step - takeover.start
        if ran >= self.max_takeover_steps:
            return "cap"
        if ran == 0 or ran % self.execute_steps:
            return None
        subgoal = self.expert.subgoal(self.agent)
        if "subgoal" in self.hand_back and subgoal != takeover.subgoal:
            return "subgoal"
        if "agreement" in self.hand_back and fresh_plan is not None and \
                self.gate.agrees(self.proposal(fresh_plan(), done=subgoal == DONE)):
            return "agreement"
        return None

    def end_takeover(self, step: int, ended_by: str) -> Takeover:
        """Hand control back (or record that the episode ended); divergence counts afresh."""
        takeover, self.takeover = self.takeover, None
        takeover.end, takeover.ended_by = step, ended_by
        self.gate.reset()
        return takeover


def make_operator(dcfg: "DaggerSection", expert: Any, agent: str, *, horizon: int, execute_steps: int,
                  action_groups: dict[str, tuple[int, int]] | None = None) -> SimulatedOperator:
    """The simulated operator ``actors.dagger`` describes (gate kind and options, takeover cap and
    endings) for one robot; the actor and the robot bridge's twin build theirs here."""
    return SimulatedOperator(expert, agent, make_gate(dcfg.gate, action_groups), horizon=horizon,
                             execute_steps=execute_steps, max_takeover_steps=dcfg.takeover.max_steps,
                             hand_back=tuple(dcfg.takeover.hand_back))


def _held(actions: np.ndarray, steps: int) -> np.ndarray:
    """``actions`` followed by its last row ``steps`` more times (the robot holding its target)."""
    return np.concatenate([actions, np.repeat(actions[-1:], steps, axis=0)]) if steps else actions
