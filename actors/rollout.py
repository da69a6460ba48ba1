"""One episode of chunked control in a PettingZoo ParallelEnv, recorded for the replay.

Every agent of the env acts in every step (one trajectory each; the GR-1 handover has two).
Each plans an action chunk every ``execute_steps`` steps, from a frame rendered at that step:

- a demonstration (no policy): the expert drives every chunk;
- an ungated DAgger mode (``dagger``): the expert drives a chunk with probability ``beta``, else the
  policy; the expert's chunk from every planning state is recorded as that state's label, and an
  operator, when given, judges each plan of the policy without taking over (``Plan.verdict``);
- a gated mode (``hg-dagger``): the policy drives; at each planning step its chunk is judged by
  the robot's operator (actors/operator.py), which records its own chunk as the label, and takes
  over when the gate fires. While the operator drives, every step gets a frame and the expert's
  chunk as its label; control returns when the takeover's job is done;
- an evaluation: the policy drives alone; with ``watch``, an operator judges every plan without
  ever taking over (``Plan.verdict``), and with ``probe_recovery`` also records, at the first plan
  the gate fires on, whether the expert could still finish from there (``Plan.recoverable``): a
  failure flagged at a recoverable state was flagged in time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fleetloop.actors.dagger import DaggerMode
from fleetloop.actors.envs.trace import ExpertUnavailable
from fleetloop.actors.gates import Verdict
from fleetloop.actors.operator import SimulatedOperator, Takeover

PlanFn = Callable[[np.ndarray, np.ndarray, str], np.ndarray]
"""``plan(image, state, instruction) -> (H, action_dim)`` action chunk of a policy."""


class PolicyOutputError(ValueError):
    """The policy returned an unusable action chunk; the episode cannot go on."""


def checked_chunk(chunk, execute_steps: int, action_dim: int) -> np.ndarray:
    """The policy's chunk as float32 (H, action_dim), H >= execute_steps, all finite.

    Raises:
        PolicyOutputError: naming the shape or the first non-finite entry.
    """
    array = np.asarray(chunk, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] < execute_steps or array.shape[1] != action_dim:
        raise PolicyOutputError(f"policy chunk: expected shape (>= {execute_steps}, {action_dim}), got {array.shape}")
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        step, dim = bad[0]
        raise PolicyOutputError(f"policy chunk: non-finite action {array[step, dim]} at step {step}, dim {dim}")
    return array


@dataclass
class Plan:
    """One planning step: who drove the chunk planned there, and the operator's view of it."""

    step: int
    driver: str
    """``policy`` or ``expert``."""
    verdict: Verdict | None = None
    recoverable: bool | None = None
    """``probe_recovery``, at the first plan the gate fired on: the expert could still finish from here."""


@dataclass
class Trajectory:
    """What one agent saw and did during one episode."""

    instruction: str
    execute_steps: int = 1
    states: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    intervened: list[bool] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    labels: dict[int, np.ndarray] = field(default_factory=dict)
    """step -> the expert's H-step chunk from that step's state."""
    plans: list[Plan] = field(default_factory=list)
    takeovers: list[Takeover] = field(default_factory=list)
    expert_unavailable: list[tuple[int, str]] = field(default_factory=list)
    """(step, why) of every time the expert could not plan: no label there, nobody judged or drove."""
    success: bool = False


def run_episodes(env, expert, plans: Mapping[str, PlanFn] | None, *, horizon: int, execute_steps: int,
                 frame_every: int, rng: np.random.Generator, seed: int, mode: DaggerMode | None = None,
                 beta: float = 0.0, operators: Mapping[str, SimulatedOperator] | None = None, watch: bool = False,
                 probe_recovery: bool = False, before_plan: Callable[[int], None] | None = None
                 ) -> dict[str, Trajectory]:
    """Run one episode of every agent of the env (all act in each step); one trajectory per agent.

    Args:
        env: a ParallelEnv with ``render_camera(agent)``.
        expert: the env's scripted expert (actors/envs/trace.py).
        plans: the policy of each agent; None: the expert drives every chunk (a demonstration).
        horizon: length H of a planned chunk and of every label.
        execute_steps: steps of a chunk executed before planning again (<= horizon).
        frame_every: render a frame every N steps besides every planning step; must divide
            ``execute_steps``.
        rng: source of the beta coin flips.
        seed: the episode's environment seed.
        mode: the DAgger mode; None: no corrections (a demonstration or an evaluation).
        beta: ungated modes: probability that the expert drives a chunk.
        operators: gated modes, ``watch`` and modes that judge plans: the operator of each agent.
        watch: the operators judge every plan but never take over (an evaluation).
        probe_recovery: with ``watch``, record at the first plan the gate fires on whether the
            expert could still finish from there.
        before_plan: called with the step before the policy plans a chunk (e.g. to swap in newer
            weights between chunks).

    Raises:
        ValueError: inconsistent arguments.
        PolicyOutputError: the policy returned a chunk of the wrong shape or with NaN/inf; the bad
            chunk is never executed.
    """
    gated = mode is not None and mode.gated
    if (gated or watch) and (plans is None or operators is None):
        raise ValueError("a gate needs a policy to take over from and an operator per agent")
    if execute_steps > horizon or execute_steps % frame_every:
        raise ValueError(f"execute_steps ({execute_steps}) must be <= horizon ({horizon}) and a multiple of frame_every ({frame_every})")
    observations, _ = env.reset(seed=seed)
    drivers = {agent: _Driver(env, expert, agent, observations[agent]["instruction"],
                              plan=None if plans is None else plans[agent], mode=mode,
                              operator=None if operators is None else operators[agent], horizon=horizon,
                              execute_steps=execute_steps, frame_every=frame_every, rng=rng, beta=beta, watch=watch,
                              probe_recovery=probe_recovery, before_plan=before_plan)
               for agent in env.agents}
    step = 0
    while env.agents:
        actions = {agent: drivers[agent].act(observations[agent]["state"], step) for agent in env.agents}
        observations, rewards, _, _, infos = env.step(actions)
        for agent in actions:
            drivers[agent].traj.rewards.append(float(rewards[agent]))
            drivers[agent].traj.success = bool(infos[agent]["success"])
        step += 1
    for driver in drivers.values():
        driver.finish(step)
    return {agent: driver.traj for agent, driver in drivers.items()}


class _Driver:
    """Chooses one agent's action each step (policy, expert or operator) and records it."""

    def __init__(self, env, expert, agent: str, instruction: str, *, plan: PlanFn | None, mode: DaggerMode | None,
                 operator: SimulatedOperator | None, horizon: int, execute_steps: int, frame_every: int,
                 rng: np.random.Generator, beta: float, watch: bool, probe_recovery: bool,
                 before_plan: Callable[[int], None] | None):
        self.env, self.expert, self.agent, self.plan, self.mode, self.operator = env, expert, agent, plan, mode, operator
        self.before_plan = before_plan
        self.horizon, self.execute_steps, self.frame_every = horizon, execute_steps, frame_every
        self.rng, self.beta, self.watch, self.probe_recovery = rng, beta, watch, probe_recovery
        self.gated = mode is not None and mode.gated and not watch
        self.traj = Trajectory(instruction=instruction, execute_steps=execute_steps)
        self.chunk: np.ndarray | None = None
        self.chunk_start = 0
        self.expert_drives = True
        self._probed = False  # probe_recovery: the first firing was probed
        if operator is not None:
            operator.reset()

    def act(self, state: np.ndarray, step: int) -> np.ndarray:
        action = None
        if self._operator_drives():
            self._maybe_hand_back(state, step)
            if self._operator_drives():
                action = self._operator_action(step)
        if action is None and (self.chunk is None or step - self.chunk_start >= self.execute_steps):
            self._plan(state, step)
            if self._operator_drives():
                action = self._operator_action(step)
        if action is None:
            action = np.asarray(self.chunk[step - self.chunk_start], dtype=np.float32)
            if step % self.frame_every == 0:
                self._frame(step)
        self.traj.states.append(state)
        self.traj.actions.append(action)
        self.traj.intervened.append(self.expert_drives)
        return action

    def finish(self, steps: int) -> None:
        """The episode ended: close a takeover still running."""
        if self._operator_drives():
            self._end_takeover(steps, "episode_end")

    # -- planning ----------------------------------------------------------------------------
    def _frame(self, step: int) -> np.ndarray:
        if step not in self.traj.frames:
            self.traj.frames[step] = self.env.render_camera(self.agent)
        return self.traj.frames[step]

    def _policy_chunk(self, state: np.ndarray, step: int) -> np.ndarray:
        if self.before_plan is not None:
            self.before_plan(step)
        chunk = self.plan(self._frame(step), state, self.traj.instruction)
        return checked_chunk(chunk, self.execute_steps, self.env.action_dim)

    def _start_chunk(self, chunk: np.ndarray, step: int, driver: str, verdict: Verdict | None = None) -> None:
        self.chunk, self.chunk_start, self.expert_drives = chunk, step, driver == "expert"
        self.traj.plans.append(Plan(step, driver, verdict))

    def _plan(self, state: np.ndarray, step: int) -> None:
        if self.plan is None:  # a demonstration
            self._start_chunk(self.expert.action_chunk(self.agent, self.horizon), step, "expert")
        elif self.mode is not None and not self.mode.gated:  # beta-mixture: label every planning state
            self._frame(step)
            label = self._expert_chunk(step)
            if label is not None and self.mode.expert_drives(self.rng, self.beta):
                self._start_chunk(label, step, "expert")
            else:  # an operator, when given, judges the plan without taking over
                chunk = self._policy_chunk(state, step)
                verdict = self._judge(chunk, step) if self.operator is not None and label is not None else None
                self._start_chunk(chunk, step, "policy", verdict)
        else:
            chunk = self._policy_chunk(state, step)
            verdict = self._judge(chunk, step) if self.operator is not None else None
            self._start_chunk(chunk, step, "policy", verdict)
            if verdict is None or not verdict.fire:
                return
            if self.watch and self.probe_recovery and not self._probed:
                self._probed = True
                self.traj.plans[-1].recoverable = self._can_finish(step)
            elif self.gated:
                self._take_over(step)

    def _expert_chunk(self, step: int) -> np.ndarray | None:
        """The expert's chunk from here, recorded as this step's label (None: it cannot plan)."""
        try:
            self.traj.labels[step] = self.expert.action_chunk(self.agent, self.horizon)
            return self.traj.labels[step]
        except ExpertUnavailable as exc:
            self._unavailable(step, exc)
            return None

    def _judge(self, chunk: np.ndarray, step: int) -> Verdict | None:
        """The operator's verdict on the policy's plan, its own chunk recorded as the label (None: the
        expert cannot plan here, so nobody judges and the policy drives)."""
        try:
            verdict = self.operator.judge(chunk)
            self.traj.labels[step] = self.operator.reference()
            return verdict
        except ExpertUnavailable as exc:
            self._unavailable(step, exc)
            return None

    def _can_finish(self, step: int) -> bool:
        try:
            return self.expert.can_finish(self.agent, self.env.max_steps - step)
        except ExpertUnavailable:
            return False

    def _unavailable(self, step: int, exc: ExpertUnavailable) -> None:
        self.traj.expert_unavailable.append((step, str(exc)))

    # -- takeovers ----------------------------------------------------------------------------
    def _operator_drives(self) -> bool:
        return self.operator is not None and self.operator.in_control

    def _take_over(self, step: int) -> None:
        try:
            self.traj.takeovers.append(self.operator.take_over(step, "gate"))
        except ExpertUnavailable as exc:  # the operator cannot drive from here: the policy goes on
            self._unavailable(step, exc)

    def _operator_action(self, step: int) -> np.ndarray | None:
        """The operator's action at this step, its chunk recorded as the label; None when the expert
        can no longer plan (the takeover ends, marked, and the policy plans again)."""
        try:
            label = self.operator.reference()
        except ExpertUnavailable as exc:
            self._unavailable(step, exc)
            self._end_takeover(step, "expert_unavailable")
            return None
        self._frame(step)
        self.traj.labels[step] = label
        self.expert_drives = True
        self.chunk = None
        return np.asarray(label[0], dtype=np.float32)

    def _end_takeover(self, step: int, reason: str) -> None:
        self.traj.takeovers[-1] = self.operator.end_takeover(step, reason)
        self.chunk = None

    def _maybe_hand_back(self, state: np.ndarray, step: int) -> None:
        fresh: dict[str, np.ndarray] = {}

        def fresh_plan() -> np.ndarray:
            fresh["chunk"] = self._policy_chunk(state, step)
            return fresh["chunk"]

        try:
            reason = self.operator.hand_back_reason(step, fresh_plan)
        except ExpertUnavailable as exc:
            self._unavailable(step, exc)
            reason = "expert_unavailable"
        if reason is None:
            return
        self._end_takeover(step, reason)
        if reason == "agreement":
            self.traj.labels[step] = self.operator.reference()
            self._start_chunk(fresh["chunk"], step, "policy")
