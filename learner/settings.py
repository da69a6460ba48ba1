"""LearnerSettings: the part of a run's configuration one learner rank reads.

A Learner (and the LearnerGroup of its ranks) is built from these, not from the whole
``FleetloopConfig``: its own ``learner`` section, the sections of what it reads and serves
(``model``, ``replay``, ``weights``, ``metrics``) and the two run-level numbers it needs. A test
or an embedding program can build one from sections alone; ``of(cfg)`` is the one place that maps
a run's configuration onto it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleetloop.ports import free_port

if TYPE_CHECKING:
    from fleetloop.config import (FleetloopConfig, LearnerSection, MetricsSection, ModelSection, ReplaySection,
                                  WeightsSection)


@dataclass(frozen=True)
class LearnerSettings:
    learner: LearnerSection
    model: ModelSection
    replay: ReplaySection
    """Where the learner samples from (``mixture``, client options)."""
    weights: WeightsSection
    """What rank 0 serves the published versions on."""
    metrics: MetricsSection
    """Where rank 0 serves /metrics."""
    seed: int
    """``run.seed``: the model's initialisation, the sampler's draws and the flow-matching noise."""
    total_steps: int
    """Optimizer steps of the whole run (the LR schedule's length): ``cfg.total_learner_steps``."""

    @classmethod
    def of(cls, cfg: FleetloopConfig) -> LearnerSettings:
        return cls(learner=cfg.learner, model=cfg.model, replay=cfg.replay, weights=cfg.weights, metrics=cfg.metrics,
                   seed=cfg.run.seed, total_steps=cfg.total_learner_steps)

    def with_pinned_ports(self) -> LearnerSettings:
        """These settings with the "any free port" (0) of the WeightService and /metrics replaced by
        free ports chosen now, so a learner restarted after a crash (by Ray, or by its group) comes
        back where the actors, the evaluator and Prometheus dial it."""
        weights, metrics = self.weights, self.metrics
        if weights.port == 0:
            weights = weights.model_copy(update={"port": free_port(weights.host)})
        if metrics.learner_port == 0:
            metrics = metrics.model_copy(update={"learner_port": free_port(metrics.host)})
        return dataclasses.replace(self, weights=weights, metrics=metrics)

