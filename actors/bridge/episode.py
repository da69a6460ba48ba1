"""One episode of one robot, driven only through a robot bridge and recorded as a ``Trajectory``.

The actor's side of the episode protocol (docs/robot_bridge.md):

1. ``Reset`` (with option ``operator=watch`` for an evaluation), asking for the first image;
2. plan a chunk from the observation's image, state and instruction, check it (``checked_chunk``)
   and ``Act`` its first ``execute_steps`` actions, asking for the image the next plan needs;
   record each executed action with the state before it (``intervened`` False);
3. when ``Act`` stops because an operator took over, or is refused because the operator has
   control, read this episode's intervention messages through ``ended`` and record the operator's
   actions with the states the messages carry (``intervened`` True); then observe and plan afresh;
4. until the observation is ``done``.

There is no expert in the actor, so corrections are the operator's executed actions (no chunk
labels); each takeover is recorded (``Trajectory.takeovers``) with how it ended, as the bridge's
last message of it says (a takeover ended by ``cap`` is not trained on). A bridge reports success,
not rewards: the reward is 1 on the last step of a successful episode, else 0. An evaluation
episode in which an operator took over does not count as a success. Intervention messages for
another robot or episode are ignored, logged and counted, never recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import prometheus_client as prom

from fleetloop.actors.bridge.backend import OPERATOR_OPTION, StopReason
from fleetloop.actors.bridge.client import BridgeError, InterventionStream, RobotClient
from fleetloop.actors.operator import Takeover
from fleetloop.actors.rollout import Plan, PlanFn, Trajectory, checked_chunk

log = logging.getLogger(__name__)

OPERATOR_CONTROL = "operator_control"
"""Reason of an Act refused because the operator has control (``NotReady("operator_control", ...)``)."""

IGNORED_INTERVENTIONS = prom.Counter(
    "fleetloop_actor_ignored_interventions_total",
    "Intervention messages for a robot or episode the actor was not driving; never applied.", ["actor", "reason"])


class EpisodeDiscarded(Exception):
    """The episode cannot be recorded whole: write nothing of it. ``reason`` labels
    ``fleetloop_actor_discarded_episodes_total``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def run_bridge_episode(client: RobotClient, interventions: InterventionStream, robot_id: str, plan: PlanFn, *,
                       execute_steps: int, seed: int | None, evaluation: bool = False,
                       actor_id: str = "", before_plan: Callable[[int], None] | None = None) -> Trajectory:
    """Run and record one episode of ``robot_id``.

    Args:
        client: the robot bridge.
        interventions: an open subscription to ``robot_id``'s interventions.
        robot_id: the robot to drive.
        plan: the policy: ``plan(image, state, instruction) -> (H, action_dim)`` chunk.
        execute_steps: actions of each chunk executed before planning again.
        seed: the episode's seed (None: the bridge chooses).
        evaluation: reset with ``operator=watch``: no takeover for divergence (a human may still
            intervene); an episode with a takeover then does not count as a success.
        actor_id: labels the ignored-intervention metric and logs.
        before_plan: called with the step before the policy plans a chunk (e.g. to swap in newer
            weights between chunks).

    Raises:
        PolicyOutputError: the policy returned an unusable chunk (never sent).
        BridgeError: the bridge refused a call; BridgeUnavailable when it went away (also when the
            intervention stream broke).
        EpisodeDiscarded: the bridge's steps and the record disagree (e.g. someone else reset the robot).
    """
    info = client.info()
    options = {OPERATOR_OPTION: "watch"} if evaluation else {}
    obs = client.reset(seed=seed, options=options, want_image=True)[robot_id]
    episode_id = obs.episode_id
    traj = Trajectory(instruction=obs.instruction, execute_steps=execute_steps)
    while not obs.done:
        if obs.episode_id != episode_id or obs.step != len(traj.states):
            raise EpisodeDiscarded("incomplete", f"robot {robot_id} is at step {obs.step} of episode "
                                                 f"{obs.episode_id!r}, but {len(traj.states)} steps of episode "
                                                 f"{episode_id!r} were recorded")
        traj.frames[obs.step] = obs.image
        if before_plan is not None:
            before_plan(obs.step)
        chunk = checked_chunk(plan(obs.image, obs.state, obs.instruction), execute_steps, info.action_dim)
        traj.plans.append(Plan(obs.step, "policy"))
        try:
            result = client.act(obs, chunk[: info.max_horizon], execute_steps, want_image=True)
        except BridgeError as exc:
            if exc.reason != OPERATOR_CONTROL:
                raise
            result = None  # an operator took over before this chunk: nothing of it ran
        if result is not None:
            states = np.concatenate([obs.state[None], result.step_states])[: result.executed_steps]
            _record(traj, states, chunk[: result.executed_steps], intervened=False)
            obs = result.observation
        if result is None or result.stop_reason is StopReason.OPERATOR_TOOK_OVER:
            _record_takeover(client, interventions, robot_id, episode_id, traj, actor_id)
            obs = client.observe(robot_id, want_image=True)
    traj.success = obs.success and not (evaluation and any(traj.intervened))
    if traj.rewards:
        traj.rewards[-1] = float(obs.success)
    return traj


def _record(traj: Trajectory, states: np.ndarray, actions: np.ndarray, *, intervened: bool) -> None:
    """Append steps: the state before each action, the action, who drove."""
    for state, action in zip(states, actions, strict=True):
        traj.states.append(np.asarray(state, np.float32))
        traj.actions.append(np.asarray(action, np.float32))
        traj.intervened.append(intervened)
        traj.rewards.append(0.0)


def _record_takeover(client: RobotClient, interventions: InterventionStream, robot_id: str, episode_id: str,
                     traj: Trajectory, actor_id: str) -> None:
    """Record the operator's steps of the takeover in progress from its messages, through ``ended``."""
    takeover = Takeover(start=len(traj.states), reason="", subgoal="")
    while True:
        item = interventions.get(timeout=client.deadline_s)
        if item is None:  # a quiet operator: make sure the bridge is still there (BridgeUnavailable if not)
            client.observe(robot_id)
            continue
        if item.robot_id != robot_id or item.episode_id != episode_id:
            reason = "other_robot" if item.robot_id != robot_id else "other_episode"
            log.warning("%s: ignored an intervention message for robot %s, episode %r, while driving robot %s, "
                        "episode %r", actor_id, item.robot_id, item.episode_id, robot_id, episode_id)
            IGNORED_INTERVENTIONS.labels(actor_id, reason).inc()
            continue
        if item.actions is not None:
            if item.step != len(traj.states):
                raise EpisodeDiscarded("incomplete", f"operator chunk of robot {robot_id} starts at step {item.step}, "
                                                     f"but {len(traj.states)} steps were recorded")
            _record(traj, item.states, item.actions, intervened=True)
        takeover.reason = item.reason
        if item.ended:
            takeover.end, takeover.ended_by = len(traj.states), item.ended_by or "released"
            traj.takeovers.append(takeover)
            return
