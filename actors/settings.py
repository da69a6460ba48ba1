"""The parts of a run's configuration the actor roles read.

An EnvActor is built from ``ActorSettings`` and the evaluator from ``EvaluatorSettings``, not from
the whole ``FleetloopConfig``: each names the sections it reads (its own ``actors`` or
``evaluator`` section and those of what it talks to) and the run-level numbers it needs. ``of(cfg)``
is the one place that maps a run's configuration onto each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetloop.config import (ActorsSection, BridgeSection, EvaluatorSection, FleetloopConfig, MetricsSection,
                                  ModelSection, ReplaySection, WeightsSection)


@dataclass(frozen=True)
class ActorSettings:
    actors: ActorsSection
    model: ModelSection
    replay: ReplaySection
    """Where episodes are written (client options)."""
    weights: WeightsSection
    """How to subscribe to the learner's versions (credentials)."""
    metrics: MetricsSection
    bridge: BridgeSection
    """The robot bridge, with ``actors.robot=bridge``."""
    seed: int
    """``run.seed``: each actor's random stream is (seed, actor index)."""
    seed_bases: tuple[int, ...]
    """First episode seed of each actor's own sequence (``FleetloopConfig.actor_seed_base``)."""
    steps_per_version: int
    """``learner.publish_every``: with ``steps_per_round``, the round a weight version belongs to."""
    steps_per_round: int

    @classmethod
    def of(cls, cfg: FleetloopConfig) -> ActorSettings:
        return cls(actors=cfg.actors, model=cfg.model, replay=cfg.replay, weights=cfg.weights, metrics=cfg.metrics,
                   bridge=cfg.bridge, seed=cfg.run.seed,
                   seed_bases=tuple(cfg.actor_seed_base(i) for i in range(cfg.actors.num_actors)),
                   steps_per_version=cfg.learner.publish_every, steps_per_round=cfg.learner.steps_per_round)

    def round_of(self, version: int) -> int:
        """The learner round weight ``version`` was published in (beta decays per round)."""
        return version * self.steps_per_version // self.steps_per_round


@dataclass(frozen=True)
class EvaluatorSettings:
    evaluator: EvaluatorSection
    actors: ActorsSection
    """The env the fleet runs and how it executes chunks (evaluated the same way)."""
    model: ModelSection
    weights: WeightsSection
    """How the loop's evaluator subscribes to the learner's versions (credentials)."""
    metrics: MetricsSection

    @classmethod
    def of(cls, cfg: FleetloopConfig) -> EvaluatorSettings:
        return cls(evaluator=cfg.evaluator, actors=cfg.actors, model=cfg.model, weights=cfg.weights,
                   metrics=cfg.metrics)
