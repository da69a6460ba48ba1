"""EnvActor: owns one environment, an inference copy of the policy and a weight subscriber.

Run as a Ray actor by the launcher. It seeds ``pretrain`` with expert demonstrations, and in
every round rolls out the newest applied policy: DAgger episodes (``actors.dagger.mode``) and
policy-only evaluation episodes (on fixed seeds when ``actors.eval_seed_base`` and
``actors.dagger_seed_base`` are set, so rounds are compared on the same episodes). A scene with several robots (gr1_handover) gives
one trajectory per robot, each written as its own episode; every robot has its own policy
(System 2 cache and noise) over the shared model. Every trajectory
is written to ``rollouts`` (executed actions) and ``corrections`` (expert labels), stamped
with the weight version that produced it.

With ``actors.robot=bridge`` the actor drives its robot only through a robot bridge
(``actors/bridge/connection.py``, one robot per bridge): its rollouts and evaluations run there,
the corrections are the operator's takeovers, and an episode during which the bridge went away
is discarded. The local env and expert then only record the demonstrations (offline data).

An episode reaches the replay only whole (one atomic write at its end), so an actor that
crashes mid-episode leaves nothing partial; Ray restarts it, and the restarted actor
re-subscribes to the weights and waits for the round's version before rolling out. Every
acknowledged write is appended to the actor's audit file (``audit_dir/<actor>.jsonl``), which
survives restarts and gives each new episode a fresh environment seed.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import prometheus_client as prom
import torch

from fleetloop.actors.bridge import RobotClient
from fleetloop.actors.bridge.connection import BridgeConnection
from fleetloop.actors.bridge.episode import EpisodeDiscarded
from fleetloop.actors.dagger import DEMO, INTERVENTION, RELABEL, ROBOT, beta_for_round, segments, to_episode
from fleetloop.actors.envs import env_options, make_env, make_expert
from fleetloop.actors.gate import InterventionGate
from fleetloop.actors.outbox import Outbox
from fleetloop.actors.rollout import PolicyOutputError, Trajectory, run_episodes
from fleetloop.actors.subscriber import WeightSubscriber
from fleetloop.replay import ReplayClient
from fleetloop.system import DualSystemPolicy, Policy, Processor, embodiment_id, embodiment_layout, model_preset
from fleetloop.system.checkpoint import tensors_digest

if TYPE_CHECKING:
    from fleetloop.config import FleetloopConfig

log = logging.getLogger(__name__)

EPISODES = prom.Counter("fleetloop_actor_episodes_total", "Episodes the actor wrote to the replay (acknowledged).",
                        ["actor", "table"])
ENV_STEPS = prom.Counter("fleetloop_actor_env_steps_total", "Environment steps taken.", ["actor"])
TASK_LABELS = ["actor", "task", "embodiment"]
SUCCESS_RATE = prom.Gauge("fleetloop_actor_success_rate", "Success rate of the latest round's policy-only episodes.",
                          TASK_LABELS)
INTERVENTION_RATE = prom.Gauge("fleetloop_actor_intervention_rate",
                               "Fraction of steps the expert or operator drove in the latest round's DAgger episodes.",
                               TASK_LABELS)
RETURN_ON_HUMAN_EFFORT = prom.Gauge(
    "fleetloop_actor_return_on_human_effort",
    "Successful episodes per minute of expert/operator control in the latest round's DAgger episodes.", TASK_LABELS)
DISCARDED = prom.Counter("fleetloop_actor_discarded_episodes_total",
                         "Episodes stopped and not written (e.g. the policy returned NaN or a wrong-shaped chunk, "
                         "the robot bridge went away).",
                         ["actor", "reason"])
EPISODE_LENGTH = prom.Gauge("fleetloop_actor_episode_length", "Steps of the latest episode.", TASK_LABELS)
WEIGHTS_VERSION = prom.Gauge("fleetloop_actor_weights_version", "Weight version the actor's policy runs.", ["actor"])
POLICY_LAG = prom.Gauge("fleetloop_actor_policy_lag_versions",
                        "Published versions the actor's policy is behind the newest it was told of.", TASK_LABELS)
INFERENCE_SECONDS = prom.Histogram("fleetloop_actor_inference_seconds", "Time to predict one action chunk.", ["actor"],
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


class EnvActor:
    """One environment runner of the fleet.

    Args:
        actor_index: position in the fleet; names the actor and offsets its seeds and port.
        cfg: the validated run configuration.
        redis_url: the replay server.
        weights_target: ``host:port`` of the learner's WeightService.
        audit_dir: folder of the actors' audit files (kept across restarts).
        bridge_target: actors.robot=bridge: ``host:port`` of the robot bridge (default: the
            ``bridge`` section's host and port).

    Raises:
        BridgeMismatch: the bridge drives another robot than the model's embodiment.
        BridgeUnavailable: no bridge answered within ``bridge.reconnect_timeout_s``.
    """

    def __init__(self, actor_index: int, cfg: "FleetloopConfig", redis_url: str, weights_target: str,
                 audit_dir: str, bridge_target: str | None = None):
        self.cfg = cfg
        self.actor_id = f"actor-{actor_index}"
        acfg = cfg.actors
        torch.set_num_threads(acfg.torch_threads)
        self.model_cfg = model_preset(cfg.model.preset)
        self.env = make_env(acfg.env, **env_options(cfg))
        self.expert = make_expert(acfg.env, self.env)
        self.embodiment = self.env.embodiment
        self.embodiment_id = embodiment_id(self.embodiment)
        self.layout = embodiment_layout(self.embodiment)
        self.actor_index = actor_index
        self.bridge = None if acfg.robot == "sim" else BridgeConnection(
            RobotClient.from_config(cfg.bridge, bridge_target), self.actor_id, self.embodiment,
            acfg.execute_steps, cfg.bridge.reconnect_timeout_s)
        actor_seed = cfg.run.seed * 1000 + actor_index
        self.model = DualSystemPolicy(self.model_cfg).eval()
        processor = Processor(self.model_cfg, tokenizer_dir=cfg.model.tokenizer_dir)
        # One policy per robot of the scene (own System 2 cache and noise), sharing the model.
        self.policies = {agent: Policy(self.model, processor, num_inference_steps=cfg.model.num_inference_steps,
                                       system2_every=cfg.model.system2_every)
                         for agent in self.env.possible_agents}
        self.replay = ReplayClient(redis_url, **cfg.replay.client_options())
        self.rng = np.random.default_rng([cfg.run.seed, actor_index])
        self.seed_base = actor_seed * 100_000  # episode i of this actor resets its env with seed_base + i
        self.audit_path = Path(audit_dir) / f"{self.actor_id}.jsonl"
        self.audit_path.parent.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(self.replay, self.actor_id, self.audit_path, acfg.replay_retry_s,
                             on_written=lambda table, _: EPISODES.labels(self.actor_id, table).inc())
        # A restarted actor continues the seeds after every episode it wrote before.
        self.episode_count = sum(len(ids) for ids in read_audit(self.audit_path).values())
        self.labels = (self.actor_id, acfg.env, self.embodiment)
        self.versions_applied: list[int] = []
        self._published_dtypes: dict[str, torch.dtype] = {}
        self._lock = threading.Lock()
        port = cfg.metrics.actor_base_port and cfg.metrics.actor_base_port + actor_index * cfg.metrics.actor_port_stride
        self._metrics_server, _ = prom.start_http_server(port, addr=cfg.metrics.host)
        self.metrics_port = self._metrics_server.server_port
        tls, token = cfg.weights.credentials()
        self.subscriber = WeightSubscriber(weights_target, self.actor_id, on_version=self._apply_weights, tls=tls,
                                           token=token)
        self.subscriber.start()

    # -- weights ---------------------------------------------------------------------------
    def _apply_weights(self, version: int, tensors: dict[str, torch.Tensor]) -> None:
        """Swap a fully received, verified version in (never while a chunk is being planned)."""
        with self._lock:
            self.model.load_state_dict(tensors, strict=True)
            self.versions_applied.append(version)
            self._published_dtypes = {name: tensor.dtype for name, tensor in tensors.items()}
        WEIGHTS_VERSION.labels(self.actor_id).set(version)
        log.info("%s applied weights version %d", self.actor_id, version)

    def weights_digest(self) -> tuple[int, str]:
        """The applied version and ``tensors_digest`` of the weights the policy runs now, in the
        dtypes they were published in (exact: a model in a wider dtype casts back losslessly)."""
        with self._lock:
            state = self.model.state_dict()
            return self.version, tensors_digest({name: state[name].to(dtype)
                                                 for name, dtype in self._published_dtypes.items()})

    @property
    def version(self) -> int:
        return self.versions_applied[-1] if self.versions_applied else 0

    def wait_for_version(self, version: int, timeout_s: float) -> bool:
        """Block until a version >= ``version`` is applied; False on timeout."""
        return self.subscriber.wait_for_version(version, timeout_s)

    def _plan(self, policy: Policy, image: np.ndarray, state: np.ndarray, instruction: str) -> np.ndarray:
        start = time.perf_counter()
        with self._lock:
            chunk = policy.act({"image": image, "state": state, "instruction": instruction,
                                     "embodiment_id": self.embodiment_id})
        INFERENCE_SECONDS.labels(self.actor_id).observe(time.perf_counter() - start)
        if self.layout is not None and chunk.shape[-1] != self.env.action_dim:
            # The model drives part of the robot (GR-1: arms and hands); the other joints hold
            # their current positions (the GR-1 state is its joint positions, in action order).
            chunk = self.layout.scatter("action", chunk, state[: self.env.action_dim])
        return chunk

    # -- episodes --------------------------------------------------------------------------
    def _episode(self, *, beta: float, use_policy: bool, frame_every: int, gated: bool = False,
                 seed: int | None = None) -> tuple[dict[str, Trajectory] | None, int]:
        """Run one episode (one trajectory per robot of the scene); (None, version) when the
        policy's output made it unusable (discarded). ``seed`` None takes the actor's next seed."""
        version = self.version
        POLICY_LAG.labels(*self.labels).set(max(0, self.subscriber.latest_announced - version))
        if seed is None:
            seed = self.seed_base + self.episode_count
            self.episode_count += 1
        for k, policy in enumerate(self.policies.values()):
            policy.reset(seed=seed * len(self.policies) + k)  # the same episode seed, the same noise
        dcfg = self.cfg.actors.dagger
        gates = {agent: InterventionGate(dcfg.gate_threshold, dcfg.gate_patience, dcfg.takeover_steps)
                 for agent in self.policies} if gated else None
        plans = {agent: functools.partial(self._plan, policy) for agent, policy in self.policies.items()}
        try:
            if self.bridge is not None and use_policy:  # the bridge's operator gates; evaluations it watches
                trajs = {self.bridge.robot_id: self.bridge.episode(next(iter(plans.values())), seed=seed,
                                                                   evaluation=not gated)}
            else:
                trajs = run_episodes(self.env, self.expert, plans if use_policy else None, beta=beta,
                                     horizon=self.model_cfg.action_head.action_horizon,
                                     execute_steps=self.cfg.actors.execute_steps, frame_every=frame_every,
                                     rng=self.rng, seed=seed, gates=gates)
        except (PolicyOutputError, EpisodeDiscarded) as exc:
            log.warning("%s: episode (seed %d) discarded: %s", self.actor_id, seed, exc)
            DISCARDED.labels(self.actor_id, exc.reason if isinstance(exc, EpisodeDiscarded) else "policy_output").inc()
            return None, version
        steps = len(next(iter(trajs.values())).states)
        ENV_STEPS.labels(self.actor_id).inc(steps * len(trajs))
        EPISODE_LENGTH.labels(*self.labels).set(steps)
        return trajs, version

    def _write(self, table: str, traj: Trajectory, cls: str, version: int, *, relabel: bool = False,
               start: int = 0, end: int | None = None) -> str:
        """Write steps [start, end) as one episode of correction class ``cls`` (its priority is
        the class weight) through the outbox, which records it in the audit file once Redis acknowledged it."""
        episode = to_episode(traj, relabel=relabel, source=cls, embodiment=self.embodiment, policy_version=version,
                             actor_id=self.actor_id, start=start, end=end)
        return self.outbox.put(table, episode, priority=self.cfg.actors.dagger.class_weights[cls])

    def collect_demos(self, count: int) -> int:
        """Write ``count`` expert demonstrations (one episode per robot) to ``pretrain``; returns
        how many succeeded."""
        successes = 0
        for _ in range(count):
            trajs, _ = self._episode(beta=1.0, use_policy=False, frame_every=self.cfg.actors.demo_frame_every)
            for traj in trajs.values():
                self._write("pretrain", traj, DEMO, version=0)
            successes += all(traj.success for traj in trajs.values())
        return successes

    def _fixed_seed(self, base: int | None, per_round: int, index: int) -> int | None:
        """Env seed of episode ``index`` of a round from a fixed-seed base (actors.eval_seed_base or
        dagger_seed_base): the same in every round; None without a base (the actor's next seed)."""
        return None if base is None else base + self.actor_index * per_round + index

    def run_round(self, round_index: int, min_version: int = 0, timeout_s: float = 120.0) -> dict[str, Any]:
        """This round's DAgger episodes (mode ``actors.dagger.mode``), then policy-only evaluation
        episodes, written to the replay by correction class (actors/dagger.py).

        Waits first until a weights version >= ``min_version`` is applied (a restarted actor
        pulls it anew). An episode succeeds when every robot of the scene succeeded.

        Raises:
            TimeoutError: that version did not arrive within ``timeout_s``.
        """
        if not self.wait_for_version(min_version, timeout_s):
            raise TimeoutError(f"{self.actor_id}: weights version {min_version} not applied within {timeout_s:.0f} s")
        acfg, dcfg = self.cfg.actors, self.cfg.actors.dagger
        gated = dcfg.mode == "hg-dagger"
        beta = 0.0 if gated else beta_for_round(dcfg.beta_start, dcfg.beta_decay, round_index)
        eval_successes, dagger_successes, expert_steps, dagger_steps, discarded, versions = 0, 0, 0, 0, 0, set()
        for i in range(acfg.dagger_episodes_per_round + acfg.eval_episodes_per_round):
            training = i < acfg.dagger_episodes_per_round
            trajs, version = self._episode(
                beta=beta if training else 0.0, use_policy=True, frame_every=acfg.execute_steps,
                gated=gated and training,
                seed=self._fixed_seed(acfg.dagger_seed_base, acfg.dagger_episodes_per_round, i) if training else
                self._fixed_seed(acfg.eval_seed_base, acfg.eval_episodes_per_round, i - acfg.dagger_episodes_per_round))
            versions.add(version)
            if trajs is None:  # discarded: nothing written; an evaluation episode counts as a failure
                discarded += 1
                continue
            for traj in trajs.values():
                # An operator may take over an evaluation on a robot too: its steps are corrections.
                self._write_trajectory(traj, version, takeovers_only=gated and (training or any(traj.intervened)))
            success = all(traj.success for traj in trajs.values())
            if training:
                expert_steps += sum(sum(traj.intervened) for traj in trajs.values())
                dagger_steps += sum(len(traj.intervened) for traj in trajs.values())
                dagger_successes += success
            else:
                eval_successes += success
        success_rate = eval_successes / acfg.eval_episodes_per_round
        intervention_rate = expert_steps / dagger_steps if dagger_steps else 0.0
        SUCCESS_RATE.labels(*self.labels).set(success_rate)
        INTERVENTION_RATE.labels(*self.labels).set(intervention_rate)
        if expert_steps:
            operator_minutes = expert_steps * self.env.control_dt / 60.0
            RETURN_ON_HUMAN_EFFORT.labels(*self.labels).set(dagger_successes / operator_minutes)
        return {"actor": self.actor_id, "round": round_index, "mode": dcfg.mode, "beta": beta,
                "eval_episodes": acfg.eval_episodes_per_round, "eval_successes": eval_successes,
                "success_rate": success_rate, "intervention_rate": intervention_rate, "discarded": discarded,
                "versions_used": sorted(versions)}

    def _write_trajectory(self, traj: Trajectory, version: int, *, takeovers_only: bool) -> None:
        """hg-dagger: only the takeover segments go to ``corrections`` (the steps before them to
        ``rollouts``); otherwise the whole rollout, and in dagger mode its expert relabelling."""
        dcfg = self.cfg.actors.dagger
        if takeovers_only:
            for seg in segments(traj.intervened, dcfg.pre_intervention_steps):
                table = "corrections" if seg.cls == INTERVENTION else "rollouts"
                self._write(table, traj, seg.cls, version, start=seg.start, end=seg.end)
            return
        self._write("rollouts", traj, ROBOT, version)
        if dcfg.mode == "dagger":
            self._write("corrections", traj, RELABEL, version, relabel=True)

    def status(self) -> dict[str, Any]:
        return {"actor": self.actor_id, "embodiment": self.embodiment, "versions_applied": list(self.versions_applied),
                "restarted": _restarted_by_ray(),
                "written": read_audit(self.audit_path),
                "metrics": f"http://{self.cfg.metrics.host}:{self.metrics_port}/metrics"}

    def close(self) -> None:
        self.subscriber.stop()
        self._metrics_server.shutdown()
        if self.bridge is not None:
            self.bridge.close()
        self.env.close()
        self.replay.close()


def _restarted_by_ray() -> bool:
    """True in a Ray actor that Ray restarted after a crash."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed


def read_audit(path: Path) -> dict[str, list[str]]:
    """Table -> ids of the episodes an actor had acknowledged, from its audit file.

    A line torn by a crash mid-write is ignored (its episode's write was not acknowledged to
    the audit, though Redis may hold it).
    """
    written: dict[str, list[str]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            written.setdefault(entry["table"], []).append(entry["episode_id"])
    return written
