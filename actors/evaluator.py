"""Evaluator: scores a policy on fixed seeds with policy-only episodes.

An *evaluation* is ``evaluator.episodes`` episodes of ``actors.env`` on the seeds
``evaluator.seed_base + i``, the policy driving alone (no operator, nothing written to the replay).
Every policy evaluated sees the same scenes and the same denoising noise (``ScenePolicy``), so two
evaluations are a paired comparison, and the evaluator's episode on a seed is the env actor's
evaluation episode on that seed with the same weights. Its figure is the success rate with a
Wilson 95 % interval; an episode the policy's output made unusable counts as a failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fleetloop.actors.envs import env_options, make_env
from fleetloop.actors.rollout import PolicyOutputError, run_episodes
from fleetloop.actors.scene_policy import ScenePolicy
from fleetloop.stats import wilson
from fleetloop.system.checkpoint import load_policy

if TYPE_CHECKING:
    from fleetloop.config import FleetloopConfig


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
    """Runs evaluations of ``cfg.model.preset`` policies on ``cfg.actors.env``."""

    def __init__(self, cfg: "FleetloopConfig"):
        self.cfg = cfg
        torch.set_num_threads(cfg.actors.torch_threads)
        self.env = make_env(cfg.actors.env, **env_options(cfg))
        self.scene = ScenePolicy(cfg, self.env)

    def load_file(self, path: str | Path) -> None:
        """Run the weights of the policy file ``path``.

        Raises:
            EvaluationError: the file holds a model of another architecture than ``model.preset``.
            ValueError: it is not a policy file (the message names it).
        """
        model = load_policy(path)
        if model.config != self.scene.model_cfg:
            raise EvaluationError(f"{path} holds a model of another architecture than model.preset "
                                  f"{self.cfg.model.preset!r}: pass the config it was trained with (--config)")
        self.scene.load(model.state_dict(), version=0)

    def evaluate(self, policy: str, step: int | None = None, episodes: int | None = None,
                 on_episode: Callable[[bool], None] | None = None) -> Evaluation:
        """Evaluate the loaded weights, named ``policy`` in the result, on ``episodes`` seeds
        (default ``evaluator.episodes``); ``on_episode`` is called with each outcome (progress)."""
        ecfg = self.cfg.evaluator
        start, outcomes, discarded = time.perf_counter(), [], 0
        for i in range(episodes or ecfg.episodes):
            seed = ecfg.seed_base + i
            self.scene.reset(seed)
            try:
                trajs = run_episodes(self.env, None, self.scene.plans(), horizon=self.scene.horizon,
                                     execute_steps=self.cfg.actors.execute_steps,
                                     frame_every=self.cfg.actors.execute_steps, rng=None, seed=seed)
                outcomes.append(all(traj.success for traj in trajs.values()))
            except PolicyOutputError:
                discarded += 1
                outcomes.append(False)
            if on_episode is not None:
                on_episode(outcomes[-1])
        return Evaluation(policy=policy, step=step, env=self.cfg.actors.env, seed_base=ecfg.seed_base,
                          outcomes=outcomes, discarded=discarded, seconds=round(time.perf_counter() - start, 1))

    def close(self) -> None:
        self.env.close()
