"""MujocoTwinBackend: the robot bridge's simulated twin over our PettingZoo envs and scripted experts.

The env (``make_env(name, **env_kwargs)``) must offer what ReachEnv does: ``possible_agents``
(robot ids), ``state_dim``, ``action_dim``, ``embodiment``, ``image_size``, ``action_space(agent)``,
``render_camera(agent)``, observations ``{"state", "instruction"}`` and infos with ``"success"``; its
actions are absolute joint position targets and its state starts with the joint positions they
target. Its expert (``make_expert``) offers what actors/envs/trace.py lists; the control rate is
``1 / env.control_dt``.

All robots share one world: acting one robot steps the env with the others holding their last
targets, and the episode's step is the world's. The simulated operator of each robot is the one
the actors use (actors/operator.py, built from the same ``actors.dagger`` section): before a chunk
runs, its gate judges the chunk against the expert's from the same state, and when the gate fires
the operator takes over at once (nothing of the chunk runs). A human's request
(``request_takeover``) takes over the same way. The operator then drives in chunks of
``operator_horizon`` on a background thread until its subgoal is done or the takeover reaches its
cap (a bridge never sees the policy's fresh plans, so there is no hand-back by agreement), and Act
is refused with "operator has control" until it hands back; every executed chunk is streamed, the
last message says why control returned (``ended_by``). An episode reset with option
``operator=watch`` (an evaluation) has no gate; ``request_takeover`` still works.
"""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetloop.actors.bridge.backend import (
    OPERATOR_MODES,
    OPERATOR_OPTION,
    ActResult,
    Intervention,
    InvalidRequest,
    NotReady,
    Observation,
    RobotBackend,
    RobotInfo,
    StopReason,
    check_robot,
)
from fleetloop.actors.envs import env_options, make_env, make_expert
from fleetloop.actors.gates import GateOptions, TaskSpaceOptions, make_gate
from fleetloop.actors.operator import SimulatedOperator
from fleetloop.system.embodiment import embodiment_layout

if TYPE_CHECKING:
    from fleetloop.config import ActorsSection, BridgeSection, ModelSection

BACKEND_NAME = "mujoco-twin"
OPERATOR_ID = "sim-expert"


class _Pacer:
    """Spaces calls of ``wait`` ``period`` seconds apart (no waiting when the period is 0)."""

    def __init__(self, period: float):
        self.period = period
        self._next = time.monotonic() + period

    def wait(self) -> None:
        if self.period:
            time.sleep(max(0.0, self._next - time.monotonic()))
            self._next += self.period


class _Takeover:
    """An operator takeover in progress; identity tells a cancelled one from its successor."""

    def __init__(self, reason: str):
        self.reason = reason


class MujocoTwinBackend(RobotBackend):
    """A simulated robot bridge backend over ``make_env(env_name, **env_kwargs)``.

    Args:
        env_name: Registered env name (``actors/envs``).
        max_horizon: Largest action chunk accepted.
        realtime: Pace every executed step (policy's and operator's) at the control rate; else
            steps run as fast as the simulation goes.
        gate: the simulated operator's gate (actors/gates); None: no gate (only requests take over).
        horizon: H of the chunks the gate compares.
        operator_horizon: Length of each corrective chunk (and the steps of a policy chunk the
            gate judges when an Act executes fewer).
        max_takeover_steps: the cap of a takeover.
        hand_back: the early endings of a takeover (``subgoal``; ``agreement`` needs the policy's fresh
            plans, which a bridge never sees, so it is ignored); empty: every takeover runs to its cap.
        **env_kwargs: Passed to the env, e.g. ``max_steps``, ``image_size``.

    Raises:
        ValueError: an unknown env or an argument out of range.
    """

    def __init__(self, env_name: str = "reach", *, max_horizon: int = 32, realtime: bool = False,
                 gate: GateOptions | None = TaskSpaceOptions(), horizon: int = 16, operator_horizon: int = 8,
                 max_takeover_steps: int = 64, hand_back: tuple[str, ...] = ("subgoal",), **env_kwargs: Any):
        if max_horizon < 1 or operator_horizon < 1 or max_takeover_steps < 1:
            raise ValueError("max_horizon, operator_horizon and max_takeover_steps must be >= 1")
        super().__init__()
        self.env = make_env(env_name, **env_kwargs)
        self.expert = make_expert(env_name, self.env)
        control_rate_hz = 1.0 / self.env.control_dt
        self.operator_horizon = operator_horizon
        self._period = self.env.control_dt if realtime else 0.0
        agents = tuple(self.env.possible_agents)
        space = self.env.action_space(agents[0])
        self._info = RobotInfo(
            robot_ids=agents, embodiment=self.env.embodiment, state_dim=int(self.env.state_dim),
            action_dim=int(self.env.action_dim), max_horizon=max_horizon, control_rate_hz=control_rate_hz,
            image_size=(int(self.env.image_size), int(self.env.image_size)),
            action_low=np.asarray(space.low, np.float32), action_high=np.asarray(space.high, np.float32),
            backend=BACKEND_NAME,
        )
        self._lock = threading.Lock()
        self._session = secrets.token_hex(4)
        self._episodes = 0
        self._episode_id: str | None = None
        self._step = 0
        self._obs: dict[str, dict] = {}
        self._infos: dict[str, dict] = {}
        self._done: dict[str, bool] = {}
        self._targets: dict[str, np.ndarray] = {}
        # The simulated operator of each robot (actors/operator.py); its gate judges only when one is set.
        self._gated = gate is not None
        layout = embodiment_layout(self.env.embodiment)
        groups = dict(layout.action) if layout is not None else None
        self._operators = {agent: SimulatedOperator(
            self.expert, agent, make_gate(gate or TaskSpaceOptions(), groups), horizon=max(horizon, operator_horizon),
            execute_steps=operator_horizon, max_takeover_steps=max_takeover_steps,
            hand_back=tuple(reason for reason in hand_back if reason != "agreement"))
            for agent in agents}
        self._watching = False  # this episode's operator only watches (reset option operator=watch)
        self._takeovers: dict[str, _Takeover] = {}
        self._operators_running: list[threading.Thread] = []
        # An EGL context is current on one thread only: every render and the close run on this one.
        self._gl_thread = ThreadPoolExecutor(1, thread_name_prefix="twin-render")

    @classmethod
    def from_sections(cls, bridge: BridgeSection, actors: ActorsSection, model: ModelSection,
                      env_name: str | None = None) -> MujocoTwinBackend:
        """The twin of a run's robot: ``env_name`` (default ``bridge.env``) built as the actors build
        their own env (``actors.max_steps``, ``shuffle_layout``, ``state_includes_object_pose``, the
        camera size of ``model.preset``), its operator as the actors' (``actors.dagger.gate`` and
        ``takeover.max_steps``, chunks of ``actors.execute_steps``), paced when ``bridge.realtime``."""
        from fleetloop.system import model_preset  # torch: import on use

        dcfg = actors.dagger
        return cls(env_name or bridge.env, realtime=bridge.realtime, gate=dcfg.gate,
                   horizon=model_preset(model.preset).action_head.action_horizon,
                   operator_horizon=actors.execute_steps, max_takeover_steps=dcfg.takeover.max_steps,
                   hand_back=tuple(dcfg.takeover.hand_back), **env_options(actors, model))

    # ---- RobotBackend ------------------------------------------------------------------------

    def info(self) -> RobotInfo:
        return self._info

    def reset(self, seed: int | None, options: dict[str, str], want_image: bool) -> tuple[str, dict[str, Observation]]:
        """Reset the env (``options`` go to ``env.reset``, but for ``operator``: ``watch`` turns the
        gate off for this episode). A refused reset leaves no episode running."""
        options = dict(options)
        operator = options.pop(OPERATOR_OPTION, OPERATOR_MODES[0])
        with self._lock:
            self._end_takeovers()
            self._episode_id = None
            if operator not in OPERATOR_MODES:
                raise InvalidRequest("bad_reset", f"reset refused: options[{OPERATOR_OPTION!r}] must be one of "
                                                  f"{OPERATOR_MODES}, got {operator!r}")
            try:
                observations, infos = self.env.reset(seed=seed, options=options or None)
            except (TypeError, ValueError) as exc:
                raise InvalidRequest("bad_reset", f"reset refused: {exc}") from None
            self._watching = operator == "watch"
            self._episodes += 1
            self._episode_id = f"{self._session}-{self._episodes}"
            self._step = 0
            for agent in self._info.robot_ids:
                self._obs[agent], self._infos[agent], self._done[agent] = observations[agent], infos[agent], False
                self._targets[agent] = np.asarray(observations[agent]["state"][: self._info.action_dim], np.float64)
                self._operators[agent].reset()
            return self._episode_id, {agent: self._observation(agent, want_image) for agent in self._info.robot_ids}

    def observe(self, robot_id: str, want_image: bool) -> Observation:
        with self._lock:
            self._check_episode()
            return self._observation(robot_id, want_image)

    def act(self, robot_id: str, episode_id: str, step: int, actions: np.ndarray, execute_steps: int,
            want_image: bool) -> ActResult:
        with self._lock:
            self._check_turn(robot_id, episode_id, step)
            pacer = _Pacer(self._period)
            states, stop = [], StopReason.COMPLETED
            if self._gated and not self._watching and self._judge(robot_id, actions, execute_steps).fire:
                self._start_takeover(robot_id, "divergence")
                execute_steps, stop = 0, StopReason.OPERATOR_TOOK_OVER
            for index in range(execute_steps):
                self._advance(robot_id, actions[index])
                states.append(self._obs[robot_id]["state"])
                if self._done[robot_id]:
                    stop = StopReason.EPISODE_ENDED
                    break
                pacer.wait()
            step_states = np.asarray(states, np.float32).reshape(len(states), self._info.state_dim)
            return ActResult(len(states), stop, self._observation(robot_id, want_image), step_states)

    def _judge(self, robot_id: str, actions: np.ndarray, execute_steps: int):
        """The operator's gate verdict on a chunk about to run (its whole horizon compared; the
        executed part traced). Caller holds the lock."""
        operator = self._operators[robot_id]
        return operator.judge(actions, min(execute_steps, operator.execute_steps))

    def close(self) -> None:
        """End takeovers, wait for the operator threads, release the renderer and subscriptions."""
        with self._lock:
            self._end_takeovers()
            self._episode_id = None
            operators, self._operators_running = self._operators_running, []
        for thread in operators:
            thread.join(timeout=5.0)
        super().close()
        self._gl_thread.submit(self.env.close).result()
        self._gl_thread.shutdown()

    # ---- operator ----------------------------------------------------------------------------

    def request_takeover(self, robot_id: str, reason: str = "requested") -> None:
        """Make the simulated operator take over ``robot_id`` now (as a human pressing a button would).

        Raises:
            UnknownRobot: no such robot.
            NotReady: no episode, the episode is over, or an operator already has control.
        """
        check_robot(self._info, robot_id)
        with self._lock:
            self._check_episode()
            if robot_id in self._takeovers:
                raise NotReady("operator_control", f"operator already has control of {robot_id}")
            if self._done[robot_id]:
                raise NotReady("episode_over", f"episode {self._episode_id} is over for {robot_id}; call Reset")
            self._start_takeover(robot_id, reason)

    def _start_takeover(self, robot_id: str, reason: str) -> None:
        """Hand ``robot_id`` to the operator thread (caller holds the lock)."""
        takeover = _Takeover(reason)
        self._takeovers[robot_id] = takeover
        self._operators[robot_id].take_over(self._step, reason)  # divergence counts afresh after it
        self.feed.publish(Intervention(robot_id, self._episode_id, self._step, reason, OPERATOR_ID, started=True))
        thread = threading.Thread(target=self._operate, args=(robot_id, takeover), daemon=True,
                                  name=f"twin-operator-{robot_id}")
        self._operators_running = [t for t in self._operators_running if t.is_alive()] + [thread]
        thread.start()

    def _operate(self, robot_id: str, takeover: _Takeover) -> None:
        """Drive ``robot_id`` with expert chunks, publishing each after executing it, until the
        operator hands back (subgoal done, cap), the episode ended, or the takeover was cancelled."""
        pacer = _Pacer(self._period)
        operator = self._operators[robot_id]
        while True:
            with self._lock:
                if self._takeovers.get(robot_id) is not takeover:
                    return
                ended_by = "episode_end" if self._done[robot_id] else operator.hand_back_reason(self._step, None)
                if ended_by is not None:
                    del self._takeovers[robot_id]
                    operator.end_takeover(self._step, ended_by)
                    self.feed.publish(Intervention(robot_id, self._episode_id, self._step, takeover.reason,
                                                   OPERATOR_ID, ended=True, ended_by=ended_by))
                    return
                start_step = self._step
                chunk = self.expert.action_chunk(robot_id, self.operator_horizon)
            ran, states = 0, []
            for action in chunk:
                with self._lock:
                    if self._takeovers.get(robot_id) is not takeover:
                        return
                    states.append(self._obs[robot_id]["state"].copy())
                    self._advance(robot_id, action)
                    done = self._done[robot_id]
                ran += 1
                if done:
                    break
                pacer.wait()
            with self._lock:
                if self._takeovers.get(robot_id) is not takeover:
                    return
                self.feed.publish(Intervention(robot_id, self._episode_id, start_step, takeover.reason, OPERATOR_ID,
                                               actions=np.asarray(chunk[:ran], np.float32),
                                               states=np.asarray(states, np.float32)))

    def _end_takeovers(self) -> None:
        """Cancel every takeover, publishing its ``ended`` message (caller holds the lock)."""
        for robot_id, takeover in self._takeovers.items():
            self._operators[robot_id].end_takeover(self._step, "reset")
            self.feed.publish(Intervention(robot_id, self._episode_id, self._step, takeover.reason, OPERATOR_ID,
                                           ended=True, ended_by="reset"))
        self._takeovers.clear()

    # ---- helpers (caller holds the lock unless noted) ------------------------------------------

    def _check_episode(self) -> None:
        if self._episode_id is None:
            raise NotReady("no_episode", "no episode is running; call Reset first")

    def _check_turn(self, robot_id: str, episode_id: str, step: int) -> None:
        """Raise NotReady unless ``robot_id`` may execute a chunk planned at (``episode_id``, ``step``)."""
        self._check_episode()
        if episode_id != self._episode_id:
            raise NotReady("stale_episode", f"stale chunk: planned in episode {episode_id!r}, "
                                            f"the current episode is {self._episode_id!r}")
        if robot_id in self._takeovers:
            raise NotReady("operator_control", f"operator has control of {robot_id}; Act is refused until the "
                                               "intervention ends")
        if self._done[robot_id]:
            raise NotReady("episode_over", f"episode {self._episode_id} is over for {robot_id}; call Reset")
        if step != self._step:
            raise NotReady("stale_step", f"stale chunk: planned at step {step}, {robot_id} is at step {self._step}")

    def _advance(self, robot_id: str, action: np.ndarray) -> None:
        """One control step of the world: ``robot_id`` gets ``action``, live robots hold their targets."""
        self._targets[robot_id] = np.asarray(action, np.float64)
        observations, _, terminations, truncations, infos = self.env.step(
            {agent: self._targets[agent] for agent in self.env.agents})
        self._step += 1
        for agent in observations:
            self._obs[agent], self._infos[agent] = observations[agent], infos[agent]
            self._done[agent] = bool(terminations[agent] or truncations[agent])

    def _observation(self, robot_id: str, want_image: bool) -> Observation:
        obs, info = self._obs[robot_id], self._infos[robot_id]
        numeric = {key: float(value) for key, value in info.items()
                   if isinstance(value, (bool, int, float, np.bool_, np.number))}
        return Observation(
            robot_id=robot_id, episode_id=self._episode_id, step=self._step,
            state=np.asarray(obs["state"], np.float32).copy(), instruction=obs["instruction"],
            done=self._done[robot_id], success=bool(info.get("success", False)), info=numeric,
            image=self._gl_thread.submit(self.env.render_camera, robot_id).result() if want_image else None,
            stamp_unix_ms=time.time_ns() // 1_000_000,
        )
