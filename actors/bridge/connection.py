"""BridgeConnection: an actor's link to the robot bridge it drives, kept up across bridge restarts.

On connecting it waits for the bridge (retrying with backoff up to ``reconnect_timeout_s``), checks
that the bridge drives the robot the actor's model expects (``check_bridge``) and subscribes to the
robot's interventions (confirmed by the bridge before any episode starts). An episode during which
the bridge goes away is discarded; the next episode first reconnects, re-checks and re-subscribes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import prometheus_client as prom

from fleetloop.actors.bridge.backend import RobotInfo
from fleetloop.actors.bridge.client import BridgeError, BridgeUnavailable, InterventionStream, RobotClient
from fleetloop.actors.bridge.episode import EpisodeDiscarded, run_bridge_episode
from fleetloop.actors.rollout import PlanFn, Trajectory
from fleetloop.system import embodiment_layout

log = logging.getLogger(__name__)

RECONNECTS = prom.Counter("fleetloop_actor_bridge_reconnects_total",
                          "Times the actor reconnected to its robot bridge after losing it.", ["actor"])
MAX_BACKOFF_S = 2.0


class BridgeMismatch(ValueError):
    """The bridge drives another robot than the actor's model expects."""


def check_bridge(info: RobotInfo, embodiment: str, execute_steps: int, target: str) -> str:
    """The robot id to drive, once ``info`` fits an actor of ``embodiment`` (its layout's dims) that
    executes ``execute_steps`` actions per chunk.

    Raises:
        BridgeMismatch: naming every mismatch.
    """
    problems = []
    if info.embodiment != embodiment:
        problems.append(f"embodiment is {info.embodiment!r}, the actor's model drives {embodiment!r}")
    layout = embodiment_layout(embodiment)
    if layout is not None:
        for kind, dim in (("state", info.state_dim), ("action", info.action_dim)):
            if dim != layout.raw_dim(kind):
                problems.append(f"{kind}_dim is {dim}, the {embodiment} layout has {layout.raw_dim(kind)}")
    if info.max_horizon < execute_steps:
        problems.append(f"max_horizon is {info.max_horizon}, below actors.execute_steps ({execute_steps})")
    if len(info.robot_ids) != 1:
        problems.append(f"it serves {len(info.robot_ids)} robots {list(info.robot_ids)}; an actor drives one robot "
                        "per bridge")
    if problems:
        raise BridgeMismatch(f"robot bridge at {target} does not fit this actor: {'; '.join(problems)}")
    return info.robot_ids[0]


class BridgeConnection:
    """Drives episodes of one bridge's robot for one actor.

    Args:
        client: the bridge (owned: closed by ``close``).
        actor_id: labels metrics and logs.
        embodiment: the embodiment tag the actor's model drives.
        execute_steps: actions of each chunk executed before planning again.
        reconnect_timeout_s: how long to wait for an unreachable bridge before giving up.

    Raises:
        BridgeMismatch: the bridge drives another robot.
        BridgeUnavailable: the bridge did not answer within ``reconnect_timeout_s``.
    """

    def __init__(self, client: RobotClient, actor_id: str, embodiment: str, execute_steps: int,
                 reconnect_timeout_s: float):
        self.client = client
        self.actor_id = actor_id
        self.embodiment = embodiment
        self.execute_steps = execute_steps
        self.reconnect_timeout_s = reconnect_timeout_s
        self.robot_id = ""
        self._interventions: InterventionStream | None = None
        self._connect()

    @property
    def connected(self) -> bool:
        """The intervention subscription is open (False once the bridge was lost)."""
        return self._interventions is not None and self._interventions.open

    def episode(self, plan: PlanFn, *, seed: int | None, evaluation: bool,
                before_plan: Callable[[int], None] | None = None) -> Trajectory:
        """Run one episode (``run_bridge_episode``), reconnecting first when the bridge was lost.

        Raises:
            EpisodeDiscarded: the bridge went away (``bridge_unavailable``) or refused a call
                (``bridge_refused``) mid-episode, or the record is incomplete.
            BridgeUnavailable: the bridge did not come back within ``reconnect_timeout_s``.
            BridgeMismatch: it came back driving another robot.
            PolicyOutputError: the policy returned an unusable chunk.
        """
        if not self.connected:
            self._connect()
            RECONNECTS.labels(self.actor_id).inc()
            log.info("%s reconnected to the robot bridge at %s", self.actor_id, self.client.target)
        try:
            return run_bridge_episode(self.client, self._interventions, self.robot_id, plan,
                                      execute_steps=self.execute_steps, seed=seed, evaluation=evaluation,
                                      actor_id=self.actor_id, before_plan=before_plan)
        except BridgeUnavailable as exc:
            self._interventions.close()
            raise EpisodeDiscarded("bridge_unavailable", f"robot bridge lost mid-episode: {exc}") from None
        except BridgeError as exc:
            raise EpisodeDiscarded("bridge_refused", f"robot bridge refused a call mid-episode: {exc}") from None

    def close(self) -> None:
        if self._interventions is not None:
            self._interventions.close()
        self.client.close()

    def _connect(self) -> None:
        """Wait for the bridge (backoff), check it, and subscribe to the robot's interventions."""
        if self._interventions is not None:
            self._interventions.close()
        self.client.close()  # dial afresh: a restarted bridge may drive another robot
        deadline = time.monotonic() + self.reconnect_timeout_s
        delay = 0.1
        while True:
            try:
                self.robot_id = check_bridge(self.client.info(), self.embodiment, self.execute_steps,
                                             self.client.target)
                self._interventions = self.client.subscribe_interventions([self.robot_id])
                return
            except BridgeUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    message = (f"{self.actor_id}: no robot bridge at {self.client.target} within "
                               f"{self.reconnect_timeout_s:.0f} s: {exc.details}")
                    raise BridgeUnavailable(exc.code, message) from None
            time.sleep(delay)
            delay = min(2 * delay, MAX_BACKOFF_S)
