"""One episode of chunked control in a PettingZoo ParallelEnv, recorded for the replay.

The actor plans an action chunk every ``execute_steps`` steps. Without a gate (DAgger), with
probability ``beta`` the scripted expert's chunk, otherwise the policy's. With a gate
(HG-DAgger), the policy drives until the gate fires; then the expert (the operator) drives for
the takeover and the policy re-plans when it gets control back. At every visited state the
expert's own action is recorded as well, which is the DAgger label of that state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    """Run one episode of the env's single agent.

    Args:
        env: a ParallelEnv with ``render_camera(agent)``.
        expert: scripted expert with ``action_chunk(agent, horizon)`` and ``action(agent)``.
        plan: the policy; None means the expert drives every chunk (a demonstration).
        beta: probability that the expert drives a chunk (ignored when ``plan`` is None).
        horizon: length H of a planned chunk.
        execute_steps: steps of a chunk executed before planning again (<= horizon).
        frame_every: render a camera frame every N steps; must divide ``execute_steps``
            so that the policy always plans from a fresh frame.
        rng: source of the beta coin flips.
        seed: the episode's environment seed.
        gate: HG-DAgger: decides when the expert takes over from the policy (``beta`` is
            then ignored); needs ``plan``.

    Raises:
        PolicyOutputError: the policy returned a chunk of the wrong shape or with NaN/inf;
            the bad chunk is never executed.
    """
    if gate is not None and plan is None:
        raise ValueError("a gate needs a policy to take over from (plan is None)")
    if execute_steps > horizon or execute_steps % frame_every:
        raise ValueError(f"execute_steps ({execute_steps}) must be <= horizon ({horizon}) and a multiple of frame_every ({frame_every})")
    observations, _ = env.reset(seed=seed)
    if gate is not None:
        gate.reset()
    (agent,) = env.agents
    traj = Trajectory(instruction=observations[agent]["instruction"])
    step = 0
    chunk, chunk_start, expert_drives = None, 0, True
    while env.agents:
        state = observations[agent]["state"]
        label = np.asarray(expert.action(agent), dtype=np.float32)
        if step % frame_every == 0:
            traj.frames[step] = env.render_camera(agent)
        if gate is not None:
            if not gate.operator_in_control and (chunk is None or step - chunk_start >= execute_steps):
                frame = traj.frames.get(step)
                if frame is None:
                    frame = traj.frames[step] = env.render_camera(agent)
                chunk = checked_chunk(plan(frame, state, traj.instruction), execute_steps, env.action_dim)
                chunk_start = step
            expert_drives = gate.operator_in_control or gate.check(chunk[step - chunk_start], label)
            if expert_drives:
                gate.operator_step()
                chunk = None  # the policy re-plans from a fresh frame once it has control back
                action = label
            else:
                action = np.asarray(chunk[step - chunk_start], dtype=np.float32)
        else:
            if step % execute_steps == 0:
                expert_drives = plan is None or rng.random() < beta
                chunk = expert.action_chunk(agent, horizon) if expert_drives else checked_chunk(
                    plan(traj.frames[step], state, traj.instruction), execute_steps, env.action_dim)
            action = np.asarray(chunk[step % execute_steps], dtype=np.float32)
        traj.states.append(state)
        traj.actions.append(action)
        traj.labels.append(label)
        traj.intervened.append(expert_drives)
        observations, rewards, _, _, infos = env.step({agent: action})
        traj.rewards.append(float(rewards[agent]))
        traj.success = bool(infos[agent]["success"])
        step += 1
    return traj
