"""EnvActor: owns one environment, an inference copy of the policy and a weight subscriber.

Run as a Ray actor by the launcher. It seeds ``pretrain`` with expert demonstrations, and in
every round rolls out the newest applied policy: beta-mixture DAgger episodes (the expert
drives a chunk with probability beta) and policy-only evaluation episodes. Every trajectory
is written to ``rollouts`` (executed actions) and ``corrections`` (expert labels), stamped
with the weight version that produced it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import prometheus_client as prom
import torch

from fleetloop.actors.dagger import SOURCE_DEMO, SOURCE_RELABEL, SOURCE_ROLLOUT, beta_for_round, to_episode
from fleetloop.actors.envs import make_env
from fleetloop.actors.envs.expert import ReachExpert
from fleetloop.actors.rollout import Trajectory, run_episode
from fleetloop.actors.subscriber import WeightSubscriber
from fleetloop.replay import ReplayClient
from fleetloop.system import DualSystemPolicy, Policy, Processor, embodiment_id, model_preset

if TYPE_CHECKING:
    from fleetloop.config import FleetloopConfig

log = logging.getLogger(__name__)

EPISODES = prom.Counter("fleetloop_actor_episodes_total", "Episodes the actor wrote to the replay (acknowledged).",
                        ["actor", "table"])
ENV_STEPS = prom.Counter("fleetloop_actor_env_steps_total", "Environment steps taken.", ["actor"])
SUCCESS_RATE = prom.Gauge("fleetloop_actor_success_rate", "Success rate of the latest round's policy-only episodes.",
                          ["actor", "task", "embodiment"])
INTERVENTION_RATE = prom.Gauge("fleetloop_actor_intervention_rate",
                               "Fraction of steps the expert drove in the latest round's DAgger episodes.", ["actor"])
EPISODE_LENGTH = prom.Gauge("fleetloop_actor_episode_length", "Steps of the latest episode.", ["actor"])
WEIGHTS_VERSION = prom.Gauge("fleetloop_actor_weights_version", "Weight version the actor's policy runs.", ["actor"])
POLICY_LAG = prom.Gauge("fleetloop_actor_policy_lag_versions",
                        "Published versions the actor's policy is behind the newest it was told of.", ["actor"])
INFERENCE_SECONDS = prom.Histogram("fleetloop_actor_inference_seconds", "Time to predict one action chunk.", ["actor"],
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


class EnvActor:
    """One environment runner of the fleet.

    Args:
        actor_index: position in the fleet; names the actor and offsets its seeds and port.
        cfg: the validated run configuration.
        redis_url: the replay server.
        weights_target: ``host:port`` of the learner's WeightService.
    """

    def __init__(self, actor_index: int, cfg: "FleetloopConfig", redis_url: str, weights_target: str):
        self.cfg = cfg
        self.actor_id = f"actor-{actor_index}"
        acfg = cfg.actors
        torch.set_num_threads(acfg.torch_threads)
        self.model_cfg = model_preset(cfg.model.preset)
        self.env = make_env(acfg.env, image_size=self.model_cfg.vision.image_size, max_steps=acfg.max_steps,
                            shuffle_layout=acfg.shuffle_layout)
        self.expert = ReachExpert(self.env)
        self.embodiment = self.env.embodiment
        self.embodiment_id = embodiment_id(self.embodiment)
        actor_seed = cfg.run.seed * 1000 + actor_index
        self.model = DualSystemPolicy(self.model_cfg).eval()
        self.policy = Policy(self.model, Processor(self.model_cfg, tokenizer_dir=cfg.model.tokenizer_dir),
                             seed=actor_seed, num_inference_steps=cfg.model.num_inference_steps,
                             system2_every=cfg.model.system2_every)
        self.replay = ReplayClient(redis_url)
        self.rng = np.random.default_rng([cfg.run.seed, actor_index])
        self.seed_base = actor_seed * 100_000  # episode i of this actor resets its env with seed_base + i
        self.episode_count = 0
        self.written: dict[str, list[str]] = {}
        self.versions_applied: list[int] = []
        self._lock = threading.Lock()
        base = cfg.metrics.actor_base_port
        self._metrics_server, _ = prom.start_http_server(base + actor_index if base else 0, addr=cfg.metrics.host)
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
        WEIGHTS_VERSION.labels(self.actor_id).set(version)
        log.info("%s applied weights version %d", self.actor_id, version)

    @property
    def version(self) -> int:
        return self.versions_applied[-1] if self.versions_applied else 0

    def wait_for_version(self, version: int, timeout_s: float) -> bool:
        """Block until a version >= ``version`` is applied; False on timeout."""
        return self.subscriber.wait_for_version(version, timeout_s)

    def _plan(self, image: np.ndarray, state: np.ndarray, instruction: str) -> np.ndarray:
        start = time.perf_counter()
        with self._lock:
            chunk = self.policy.act({"image": image, "state": state, "instruction": instruction,
                                     "embodiment_id": self.embodiment_id})
        INFERENCE_SECONDS.labels(self.actor_id).observe(time.perf_counter() - start)
        return chunk

    # -- episodes --------------------------------------------------------------------------
    def _episode(self, *, beta: float, use_policy: bool, frame_every: int) -> tuple[Trajectory, int]:
        version = self.version
        self.policy.reset()
        POLICY_LAG.labels(self.actor_id).set(max(0, self.subscriber.latest_announced - version))
        traj = run_episode(self.env, self.expert, self._plan if use_policy else None, beta=beta,
                           horizon=self.model_cfg.action_head.action_horizon, execute_steps=self.cfg.actors.execute_steps,
                           frame_every=frame_every, rng=self.rng, seed=self.seed_base + self.episode_count)
        self.episode_count += 1
        ENV_STEPS.labels(self.actor_id).inc(len(traj.states))
        EPISODE_LENGTH.labels(self.actor_id).set(len(traj.states))
        return traj, version

    def _write(self, table: str, traj: Trajectory, *, relabel: bool, source: str, version: int) -> str:
        episode = to_episode(traj, relabel=relabel, source=source, embodiment=self.embodiment,
                             policy_version=version, actor_id=self.actor_id)
        episode_id = self.replay.write_episode(table, episode)
        self.written.setdefault(table, []).append(episode_id)
        EPISODES.labels(self.actor_id, table).inc()
        return episode_id

    def collect_demos(self, count: int) -> int:
        """Write ``count`` expert demonstrations to ``pretrain``; returns how many succeeded."""
        successes = 0
        for _ in range(count):
            traj, _ = self._episode(beta=1.0, use_policy=False, frame_every=self.cfg.actors.demo_frame_every)
            self._write("pretrain", traj, relabel=False, source=SOURCE_DEMO, version=0)
            successes += traj.success
        return successes

    def run_round(self, round_index: int) -> dict[str, Any]:
        """DAgger episodes with this round's beta, then policy-only episodes; all relabelled."""
        acfg = self.cfg.actors
        beta = beta_for_round(acfg.dagger.beta_start, acfg.dagger.beta_decay, round_index)
        plans: list[float] = [beta] * acfg.dagger_episodes_per_round + [0.0] * acfg.eval_episodes_per_round
        eval_successes, expert_steps, dagger_steps, versions = 0, 0, 0, set()
        for i, episode_beta in enumerate(plans):
            traj, version = self._episode(beta=episode_beta, use_policy=True, frame_every=acfg.execute_steps)
            versions.add(version)
            self._write("rollouts", traj, relabel=False, source=SOURCE_ROLLOUT, version=version)
            self._write("corrections", traj, relabel=True, source=SOURCE_RELABEL, version=version)
            if i < acfg.dagger_episodes_per_round:
                expert_steps += sum(traj.intervened)
                dagger_steps += len(traj.intervened)
            else:
                eval_successes += traj.success
        success_rate = eval_successes / acfg.eval_episodes_per_round
        SUCCESS_RATE.labels(self.actor_id, acfg.env, self.embodiment).set(success_rate)
        if dagger_steps:
            INTERVENTION_RATE.labels(self.actor_id).set(expert_steps / dagger_steps)
        return {"actor": self.actor_id, "round": round_index, "beta": beta, "eval_episodes": acfg.eval_episodes_per_round,
                "eval_successes": eval_successes, "success_rate": success_rate, "versions_used": sorted(versions)}

    def status(self) -> dict[str, Any]:
        return {"actor": self.actor_id, "embodiment": self.embodiment, "versions_applied": list(self.versions_applied),
                "written": {table: list(ids) for table, ids in self.written.items()},
                "metrics": f"http://{self.cfg.metrics.host}:{self.metrics_port}/metrics"}

    def close(self) -> None:
        self.subscriber.stop()
        self._metrics_server.shutdown()
        self.env.close()
        self.replay.close()
