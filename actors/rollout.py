"""One episode of chunked control in a PettingZoo ParallelEnv, recorded for the replay.

Every agent of the env acts in every step (one trajectory each; the GR-1 handover has two).
Each plans an action chunk every ``execute_steps`` steps. Without a gate (DAgger), with
probability ``beta`` the scripted expert's chunk, otherwise the policy's. With a gate
(HG-DAgger), the policy drives until the gate fires; then the expert (the operator) drives for
the takeover and the policy re-plans when it gets control back. At every visited state the
expert's own action is recorded as well, which is the DAgger label of that state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Callable

import numpy as np

from fleetloop.actors.gate import InterventionGate

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
class Trajectory:
    """What one agent saw and did during one episode."""

    instruction: str
    states: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    intervened: list[bool] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    success: bool = False


def run_episode(env, expert, plan: PlanFn | None, *, beta: float, horizon: int, execute_steps: int,
                frame_every: int, rng: np.random.Generator, seed: int,
                gate: InterventionGate | None = None) -> Trajectory:
    """``run_episodes`` for an env with a single agent: its one trajectory."""
    (agent,) = env.possible_agents
    return run_episodes(env, expert, None if plan is None else {agent: plan}, beta=beta, horizon=horizon,
                        execute_steps=execute_steps, frame_every=frame_every, rng=rng, seed=seed,
                        gates=None if gate is None else {agent: gate})[agent]


def run_episodes(env, expert, plans: Mapping[str, PlanFn] | None, *, beta: float, horizon: int,
                 execute_steps: int, frame_every: int, rng: np.random.Generator, seed: int,
                 gates: Mapping[str, InterventionGate] | None = None) -> dict[str, Trajectory]:
    """Run one episode of every agent of the env (all act in each step); one trajectory per agent.

    Args:
        env: a ParallelEnv with ``render_camera(agent)``.
        expert: scripted expert with ``action_chunk(agent, horizon)`` and ``action(agent)``.
        plans: the policy of each agent; None means the expert drives every chunk (a demonstration).
        beta: probability that the expert drives a chunk, drawn per agent and chunk (ignored
            when ``plans`` is None).
        horizon: length H of a planned chunk.
        execute_steps: steps of a chunk executed before planning again (<= horizon).
        frame_every: render a camera frame every N steps; must divide ``execute_steps``
            so that the policy always plans from a fresh frame.
        rng: source of the beta coin flips.
        seed: the episode's environment seed.
        gates: HG-DAgger: per agent, decides when the expert takes over from the policy
            (``beta`` is then ignored); needs ``plans``.

    Raises:
        PolicyOutputError: the policy returned a chunk of the wrong shape or with NaN/inf;
            the bad chunk is never executed.
    """
    if gates is not None and plans is None:
        raise ValueError("a gate needs a policy to take over from (plan is None)")
    if execute_steps > horizon or execute_steps % frame_every:
        raise ValueError(f"execute_steps ({execute_steps}) must be <= horizon ({horizon}) and a multiple of frame_every ({frame_every})")
    observations, _ = env.reset(seed=seed)
    drivers = {agent: _Driver(env, expert, None if plans is None else plans[agent], agent,
                              None if gates is None else gates[agent], observations[agent]["instruction"])
               for agent in env.agents}
    step = 0
    while env.agents:
        actions = {agent: drivers[agent].act(observations[agent]["state"], step, beta=beta, horizon=horizon,
                                             execute_steps=execute_steps, frame_every=frame_every, rng=rng)
                   for agent in env.agents}
        observations, rewards, _, _, infos = env.step(actions)
        for agent in actions:
            drivers[agent].traj.rewards.append(float(rewards[agent]))
            drivers[agent].traj.success = bool(infos[agent]["success"])
        step += 1
    return {agent: driver.traj for agent, driver in drivers.items()}


class _Driver:
    """Chooses one agent's action each step (policy, expert or takeover) and records it."""

    def __init__(self, env, expert, plan: PlanFn | None, agent: str, gate: InterventionGate | None,
                 instruction: str):
        self.env, self.expert, self.plan, self.agent, self.gate = env, expert, plan, agent, gate
        self.traj = Trajectory(instruction=instruction)
        self.chunk: np.ndarray | None = None
        self.chunk_start = 0
        self.expert_drives = True
        if gate is not None:
            gate.reset()

    def _policy_chunk(self, step: int, state: np.ndarray, execute_steps: int) -> np.ndarray:
        frame = self.traj.frames.get(step)
        if frame is None:
            frame = self.traj.frames[step] = self.env.render_camera(self.agent)
        return checked_chunk(self.plan(frame, state, self.traj.instruction), execute_steps, self.env.action_dim)

    def act(self, state: np.ndarray, step: int, *, beta: float, horizon: int, execute_steps: int,
            frame_every: int, rng: np.random.Generator) -> np.ndarray:
        label = np.asarray(self.expert.action(self.agent), dtype=np.float32)
        if step % frame_every == 0:
            self.traj.frames[step] = self.env.render_camera(self.agent)
        gate = self.gate
        if gate is not None:
            if not gate.operator_in_control and (self.chunk is None or step - self.chunk_start >= execute_steps):
                self.chunk, self.chunk_start = self._policy_chunk(step, state, execute_steps), step
            self.expert_drives = gate.operator_in_control or gate.check(self.chunk[step - self.chunk_start], label)
            if self.expert_drives:
                gate.operator_step()
                self.chunk = None  # the policy re-plans from a fresh frame once it has control back
                action = label
            else:
                action = np.asarray(self.chunk[step - self.chunk_start], dtype=np.float32)
        else:
            if step % execute_steps == 0:
                self.expert_drives = self.plan is None or rng.random() < beta
                self.chunk = (self.expert.action_chunk(self.agent, horizon) if self.expert_drives
                              else self._policy_chunk(step, state, execute_steps))
            action = np.asarray(self.chunk[step % execute_steps], dtype=np.float32)
        self.traj.states.append(state)
        self.traj.actions.append(action)
        self.traj.labels.append(label)
        self.traj.intervened.append(self.expert_drives)
        return action
