"""Evaluator: scores a policy on fixed seeds with policy-only episodes.

An *evaluation* is ``evaluator.episodes`` episodes of ``actors.env`` on the seeds
``evaluator.seed_base + i``, the policy driving alone (no operator, nothing written to the replay).
Every policy evaluated sees the same scenes and the same denoising noise (``ScenePolicy``), so two
evaluations are a paired comparison, and the evaluator's episode on a seed is the env actor's
evaluation episode on that seed with the same weights. Its figure is the success rate with a
Wilson 95 % interval; an episode the policy's output made unusable counts as a failure.

``EvaluatorRole`` is the evaluator of the loop (a Ray actor): it follows the learner's
WeightService like an env actor, but holds the newest version it received aside and loads it
only when asked to evaluate, so one evaluation runs one version throughout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import prometheus_client as prom
import torch

from fleetloop.actors.envs import env_options, make_env
from fleetloop.actors.rollout import PolicyOutputError, run_episodes
from fleetloop.actors.scene_policy import ScenePolicy
from fleetloop.actors.subscriber import WeightSubscriber
from fleetloop.stats import wilson
from fleetloop.system.checkpoint import load_policy

if TYPE_CHECKING:
    from fleetloop.actors.settings import EvaluatorSettings

log = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """A policy cannot be evaluated with this configuration; the message says what to give instead."""


@dataclass(frozen=True)
class Evaluation:
    """One policy's evaluation: ``outcomes[i]`` is the episode on seed ``seed_base + i`` (in
    ``to_dict`` a string of "0"/"1", so evaluations of two policies pair seed by seed)."""

    policy: str
    """What was evaluated: a policy file's path, or ``version N`` of a WeightService."""
    step: int | None
    """The learner step the weights come from, when known."""
    env: str
    seed_base: int
    outcomes: list[bool]
    discarded: int
    """Episodes stopped because the policy's output was unusable (counted as failures)."""
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        successes = sum(self.outcomes)
        return {**asdict(self), "outcomes": "".join("1" if o else "0" for o in self.outcomes),
                "episodes": len(self.outcomes), "successes": successes,
                "success_rate": round(successes / len(self.outcomes), 4), "ci95": wilson(successes, len(self.outcomes))}


class Evaluator:
    """Runs evaluations of ``model.preset`` policies on ``actors.env`` (``settings``:
    ``EvaluatorSettings.of(cfg)``)."""

    def __init__(self, settings: EvaluatorSettings):
        self.settings = settings
        torch.set_num_threads(settings.actors.torch_threads)
        self.env = make_env(settings.actors.env, **env_options(settings.actors, settings.model))
        self.scene = ScenePolicy(settings.model, self.env)

    def load_file(self, path: str | Path) -> None:
        """Run the weights of the policy file ``path``.

        Raises:
            EvaluationError: the file holds a model of another architecture than ``model.preset``.
            ValueError: it is not a policy file (the message names it).
        """
        model = load_policy(path)
        if model.config != self.scene.model_cfg:
            raise EvaluationError(f"{path} holds a model of another architecture than model.preset "
                                  f"{self.settings.model.preset!r}: pass the config it was trained with (--config)")
        self.scene.load(model.state_dict(), version=0)

    def evaluate(self, policy: str, step: int | None = None, episodes: int | None = None,
                 on_episode: Callable[[bool], None] | None = None) -> Evaluation:
        """Evaluate the loaded weights, named ``policy`` in the result, on ``episodes`` seeds
        (default ``evaluator.episodes``); ``on_episode`` is called with each outcome (progress)."""
        ecfg = self.settings.evaluator
        start, outcomes, discarded = time.perf_counter(), [], 0
        for i in range(episodes or ecfg.episodes):
            seed = ecfg.seed_base + i
            self.scene.reset(seed)
            try:
                trajs = run_episodes(self.env, None, self.scene.plans(), horizon=self.scene.horizon,
                                     execute_steps=self.settings.actors.execute_steps,
                                     frame_every=self.settings.actors.execute_steps, rng=None, seed=seed)
                outcomes.append(all(traj.success for traj in trajs.values()))
            except PolicyOutputError as exc:
                log.warning("evaluation of %s: episode (seed %d) discarded, counted as a failure: %s", policy, seed, exc)
                discarded += 1
                outcomes.append(False)
            if on_episode is not None:
                on_episode(outcomes[-1])
        return Evaluation(policy=policy, step=step, env=self.settings.actors.env, seed_base=ecfg.seed_base,
                          outcomes=outcomes, discarded=discarded, seconds=round(time.perf_counter() - start, 1))

    def close(self) -> None:
        self.env.close()


SUCCESS_RATE = prom.Gauge("fleetloop_evaluator_success_rate",
                          "Success rate of the latest evaluated weight version on the evaluator's fixed seeds.")
SUCCESS_CI = prom.Gauge("fleetloop_evaluator_success_ci95", "Wilson 95 % interval of that success rate.", ["bound"])
EVALUATED_VERSION = prom.Gauge("fleetloop_evaluator_version", "Weight version of the latest evaluation.")
EPISODES = prom.Counter("fleetloop_evaluator_episodes_total", "Evaluation episodes run.")
EVALUATION_SECONDS = prom.Gauge("fleetloop_evaluator_evaluation_seconds", "Wall time of the latest evaluation.")


class EvaluatorRole:
    """The loop's evaluator: evaluates the weight versions it is asked for (``evaluate_version``).

    Args:
        settings: ``EvaluatorSettings.of(cfg)`` (its ``evaluator`` section sets episodes and seeds).
        weights_target: ``host:port`` of the learner's WeightService.
    """

    def __init__(self, settings: EvaluatorSettings, weights_target: str):
        self.evaluator = Evaluator(settings)
        metrics = settings.metrics
        self._metrics_server, _ = prom.start_http_server(metrics.evaluator_port, addr=metrics.host)
        self.metrics = f"http://{metrics.host}:{self._metrics_server.server_port}/metrics"
        tls, token = settings.weights.credentials()
        self.subscriber = WeightSubscriber(weights_target, "evaluator", on_version=self.evaluator.scene.receive,
                                           tls=tls, token=token)
        self.subscriber.start()

    def evaluate_version(self, version: int, step: int | None = None, timeout_s: float = 120.0) -> dict[str, Any]:
        """Evaluate the newest version received once one >= ``version`` has arrived; returns the
        evaluation (``Evaluation.to_dict``) with its ``version``.

        Raises:
            TimeoutError: no such version arrived within ``timeout_s``.
        """
        if not self.subscriber.wait_for_version(version, timeout_s):
            raise TimeoutError(f"evaluator: weights version {version} not received within {timeout_s:.0f} s")
        self.evaluator.scene.refresh()
        received = self.evaluator.scene.version
        evaluation = self.evaluator.evaluate(f"version {received}", step=step if received == version else None)
        record = {**evaluation.to_dict(), "version": received}
        SUCCESS_RATE.set(record["success_rate"])
        for bound, value in zip(("low", "high"), record["ci95"]):
            SUCCESS_CI.labels(bound).set(value)
        EVALUATED_VERSION.set(received)
        EPISODES.inc(record["episodes"])
        EVALUATION_SECONDS.set(record["seconds"])
        return record

    def status(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "version": self.subscriber.applied_version}

    def close(self) -> None:
        self.subscriber.stop()
        self._metrics_server.shutdown()
        self.evaluator.close()
