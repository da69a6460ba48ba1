"""The robot backend contract: what the robot bridge drives, a simulated twin or real hardware.

A hardware integrator implements ``RobotBackend``; the gRPC server (``server.py``) turns its
methods into RobotService calls and its ``RobotError``s into gRPC statuses. Conventions every
backend keeps:

- arrays are float32; states and actions are in the embodiment's layout
  (``fleetloop.system.embodiment``); an action is *absolute joint position targets*, clipped by the
  backend to ``RobotInfo.action_low/high``;
- an episode (``reset``) is named by a string ``episode_id`` unique across restarts of the
  backend; its ``step`` counts control steps executed since reset;
- a refused call raises a ``RobotError`` and has moved nothing.

The server checks every ``robot_id`` with ``check_robot`` before calling the backend, and a chunk
with ``check_chunk`` (shape, finiteness, horizon, execute_steps) before ``act``; ``act`` checks the
rest (episode, step, operator control) atomically with executing.
"""

from __future__ import annotations

import abc
import enum
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from fleetloop.actors.bridge.metrics import ACTIVE_INTERVENTIONS, INTERVENTIONS


OPERATOR_OPTION = "operator"
"""Reset option naming the operator's role in the episode: ``gate`` (default: a simulated operator
takes over when the policy diverges) or ``watch`` (an evaluation: no takeover by divergence). A
hardware backend may ignore it: a human may always intervene for safety."""
OPERATOR_MODES = ("gate", "watch")


class RobotError(Exception):
    """A request the robot refuses; nothing was executed.

    ``status`` names the gRPC status code the server answers with; ``reason`` labels the
    ``fleetloop_bridge_rejected_total`` metric (short snake_case)."""

    status = "FAILED_PRECONDITION"

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class UnknownRobot(RobotError):
    """No robot has the requested id (NOT_FOUND)."""

    status = "NOT_FOUND"


class InvalidRequest(RobotError):
    """The request is malformed: dims, lengths, limits, non-finite values, bad options (INVALID_ARGUMENT)."""

    status = "INVALID_ARGUMENT"


class NotReady(RobotError):
    """The robot is not in a state to do this: no episode, stale episode or step, episode over,
    operator has control (FAILED_PRECONDITION)."""

    status = "FAILED_PRECONDITION"


@dataclass(frozen=True)
class RobotInfo:
    """What a backend drives; fixed for its lifetime."""

    robot_ids: tuple[str, ...]
    embodiment: str
    state_dim: int
    action_dim: int
    max_horizon: int
    control_rate_hz: float
    image_size: tuple[int, int]
    """Camera image (height, width); images are (height, width, 3) uint8 RGB."""
    action_low: np.ndarray
    action_high: np.ndarray
    backend: str


@dataclass(frozen=True)
class Observation:
    """One robot's observation at ``step`` of episode ``episode_id``."""

    robot_id: str
    episode_id: str
    step: int
    state: np.ndarray
    """float32 (state_dim,)."""
    instruction: str
    done: bool
    success: bool
    info: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = None
    """uint8 (height, width, 3) when asked for, else None."""
    stamp_unix_ms: int = 0


class StopReason(enum.Enum):
    """Why ``act`` stopped executing a chunk."""

    COMPLETED = 1
    EPISODE_ENDED = 2
    OPERATOR_TOOK_OVER = 3


@dataclass(frozen=True)
class ActResult:
    """Outcome of ``act``: a prefix of the chunk was executed."""

    executed_steps: int
    stop_reason: StopReason
    observation: Observation
    step_states: np.ndarray
    """float32 (executed_steps, state_dim): the state after each executed action."""


@dataclass(frozen=True)
class Intervention:
    """One message of an operator takeover: ``started`` first, then each corrective chunk after it
    was executed, the last one ``ended`` (or a chunkless ``ended`` when cut short by a reset)."""

    robot_id: str
    episode_id: str
    step: int
    """Episode step at which ``actions`` started (for a chunkless message: the current step)."""
    reason: str
    operator_id: str
    started: bool = False
    ended: bool = False
    actions: np.ndarray | None = None
    """float32 (H, action_dim) the operator executed; None for a message without a chunk."""
    states: np.ndarray | None = None
    """float32 (H, state_dim): the state before each of ``actions``; None without a chunk."""
    ended_by: str = ""
    """On the ``ended`` message: why control returned (``subgoal``, ``cap``, ``released``, ``episode_end``,
    ``reset``); a takeover ended by ``cap`` is not trained on."""


def check_robot(info: RobotInfo, robot_id: str) -> None:
    """Raises UnknownRobot unless ``robot_id`` is one of ``info.robot_ids``."""
    if robot_id not in info.robot_ids:
        raise UnknownRobot("unknown_robot", f"unknown robot_id {robot_id!r}; robots: {list(info.robot_ids)}")


def check_chunk(info: RobotInfo, actions: np.ndarray, execute_steps: int) -> None:
    """Check a decoded chunk against ``info``.

    Raises:
        InvalidRequest: the chunk is not (H, action_dim) with 1 <= H <= max_horizon, holds a NaN or
            inf, or ``execute_steps`` is not in 1..H. The message names the offending value.
    """
    if actions.ndim != 2 or actions.shape[1] != info.action_dim:
        raise InvalidRequest("bad_shape", f"action_dim must be {info.action_dim}, got chunk shape {actions.shape}")
    horizon = actions.shape[0]
    if not 1 <= horizon <= info.max_horizon:
        raise InvalidRequest("bad_horizon", f"horizon must be in 1..{info.max_horizon}, got {horizon}")
    if not 1 <= execute_steps <= horizon:
        raise InvalidRequest("bad_execute_steps",
                             f"execute_steps must be in 1..horizon ({horizon}), got {execute_steps}")
    bad = np.argwhere(~np.isfinite(actions))
    if len(bad):
        step, dim = bad[0]
        raise InvalidRequest("non_finite", f"action chunk has {len(bad)} NaN/inf value(s), first at step {step}, "
                                           f"dim {dim}: {actions[step, dim]}")


class InterventionSubscription:
    """Interventions of some robots, queued for one reader."""

    _CLOSED = object()

    def __init__(self, feed: InterventionFeed, robot_ids: frozenset[str]):
        self._feed = feed
        self.robot_ids = robot_ids
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False

    def get(self, timeout: float | None = None) -> Intervention | None:
        """The next intervention; None once closed or after ``timeout`` seconds without one."""
        if self._closed:
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        return None if item is self._CLOSED else item

    def close(self) -> None:
        """Stop receiving; a blocked ``get`` returns None."""
        self._closed = True
        self._feed._remove(self)
        self._queue.put(self._CLOSED)

    def _offer(self, intervention: Intervention) -> None:
        if intervention.robot_id in self.robot_ids:
            self._queue.put(intervention)


class InterventionFeed:
    """Fans a backend's interventions out to every subscription and counts them in the metrics
    (``started`` messages by reason, active takeovers). Backends publish; the server subscribes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subscriptions: list[InterventionSubscription] = []

    def subscribe(self, robot_ids: Iterable[str]) -> InterventionSubscription:
        """A subscription to the interventions of ``robot_ids`` published from now on."""
        subscription = InterventionSubscription(self, frozenset(robot_ids))
        with self._lock:
            self._subscriptions.append(subscription)
        return subscription

    def publish(self, intervention: Intervention) -> None:
        """Deliver ``intervention`` to the subscriptions of its robot."""
        if intervention.started:
            INTERVENTIONS.labels(reason=intervention.reason).inc()
            ACTIVE_INTERVENTIONS.inc()
        if intervention.ended:
            ACTIVE_INTERVENTIONS.dec()
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription._offer(intervention)

    @property
    def subscriptions(self) -> int:
        """Open subscriptions (a stream listens once it is counted here)."""
        with self._lock:
            return len(self._subscriptions)

    def close(self) -> None:
        """Close every subscription."""
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.close()

    def _remove(self, subscription: InterventionSubscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)


class RobotBackend(abc.ABC):
    """What the bridge drives. Methods may be called from several server threads at once; a
    backend serializes what must be serialized. Subclasses publish interventions on ``self.feed``."""

    def __init__(self):
        self.feed = InterventionFeed()

    @abc.abstractmethod
    def info(self) -> RobotInfo:
        """The robots, embodiment, dims, chunk limit, control rate, camera size and action limits."""

    @abc.abstractmethod
    def reset(self, seed: int | None, options: dict[str, str], want_image: bool) -> tuple[str, dict[str, Observation]]:
        """End any episode and operator takeover (publishing its ``ended`` message) and start a new
        episode of every robot.

        Returns:
            The new episode id and each robot's first observation (step 0), in ``robot_ids`` order.

        Raises:
            InvalidRequest: ``seed`` or ``options`` are not accepted.
        """

    @abc.abstractmethod
    def observe(self, robot_id: str, want_image: bool) -> Observation:
        """``robot_id``'s current observation, with a camera image only when ``want_image``.

        Raises:
            NotReady: no episode has been started.
        """

    @abc.abstractmethod
    def act(self, robot_id: str, episode_id: str, step: int, actions: np.ndarray, execute_steps: int,
            want_image: bool) -> ActResult:
        """Execute ``actions[:execute_steps]`` (already checked by ``check_chunk``) one control step
        each, stopping early when the episode ends or an operator takes over.

        Raises:
            NotReady: no episode, ``episode_id`` or ``step`` is not the robot's current one, the
                episode is over, or an operator has control. Nothing is executed then.
        """

    def close(self) -> None:
        """Release the robot; ends every intervention subscription."""
        self.feed.close()
