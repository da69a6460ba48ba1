"""The asynchronous loop of `fleetloop up` (``run.mode=async``), and the stop conditions of both modes.

Nobody waits for anybody: the learner trains in calls that end on publish boundaries (it publishes
every ``learner.publish_every`` steps; the TrainingDriver's ``chunk_steps`` sizes the calls), each
env actor rolls out one DAgger episode per call with the newest weights it received, and the
evaluator evaluates the newest version whenever it is free and ``evaluator.every_versions``
versions came out since its last. The driver below only reacts to whichever call finishes first
(``ray.wait``) and starts the next one, IMPALA-style. The replay's rate limiters
(``replay.tables``) pace the learner against the fleet's inserts.

Vocabulary:

- *busy fraction*: the share of the loop's wall-clock a role spent working: the learner in
  optimizer steps, an actor in episodes (the rest is waiting).
- *policy lag*: how many versions the policy of an episode was behind the newest published when
  the episode ended.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from fleetloop.learner.driver import chunk_steps
from fleetloop.ray_calls import ray_call

if TYPE_CHECKING:
    from fleetloop.config import RunSection
    from fleetloop.launcher import Loop

log = logging.getLogger(__name__)

TRAIN_CALL_S = 10.0
"""Longest a learner call runs before it returns to the driver (which checks the stop conditions)."""
EPISODES_PER_CALL = 1
"""DAgger episodes an actor runs per call: it takes the newest weights between calls."""


class StopConditions:
    """``run.max_learner_steps`` (default run.rounds x learner.steps_per_round), ``run.duration_s`` and
    ``run.target_success``, measured from the loop's start (``started``, monotonic seconds)."""

    def __init__(self, run: "RunSection", max_steps: int, started: float):
        self.run, self.max_steps, self.started = run, max_steps, started

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def reason(self, step: int, success: float | None = None) -> str | None:
        """Why the loop stops now (``max_learner_steps``, ``duration_s``, ``target_success``), or None."""
        if step >= self.max_steps:
            return "max_learner_steps"
        if self.run.duration_s is not None and self.elapsed() >= self.run.duration_s:
            return "duration_s"
        if self.run.target_success is not None and success is not None and success >= self.run.target_success:
            return "target_success"
        return None


@dataclass
class FleetTally:
    """What the actors reported: episodes, successes, corrections written, each episode's policy lag,
    and the DAgger episodes' steps and the steps of them the expert or operator drove."""

    episodes: int = 0
    successes: int = 0
    written: int = 0
    paused: int = 0
    busy_s: float = 0.0
    steps: int = 0
    expert_steps: int = 0
    lags: list[int] = field(default_factory=list)

    def add(self, result: dict[str, Any]) -> None:
        self.episodes += result.get("episodes", 0)
        self.successes += result.get("successes", 0)
        self.written += result.get("written", 0)
        self.paused += bool(result.get("paused"))
        self.busy_s += result.get("busy_s", 0.0)
        self.steps += result.get("steps", 0)
        self.expert_steps += result.get("expert_steps", 0)
        self.lags += result.get("episode_lags", [])


def lag_p95(lags: list[int]) -> float | None:
    """The 95th percentile of policy lags (versions); None without episodes."""
    return float(np.percentile(lags, 95)) if lags else None


def run_async(loop: "Loop", stop: StopConditions) -> dict[str, Any]:
    """Run learner, actors and evaluator concurrently until a stop condition holds; returns the
    fleet's tally, the learner's losses and the reason it stopped. Every started evaluation is
    finished and merged into ``evaluations.json``; the final version is evaluated too."""
    import ray

    cfg, learner = loop.cfg, loop.learner
    version = ray_call(learner.publish.remote(), "publishing the first weights")
    if loop.gate is not None:  # the fleet starts on the first version; the evaluator gates the next ones
        loop.promote(version)
    step = loop.learner_status["step"]
    tally, losses, best = FleetTally(), [], None

    def train_call():
        steps = chunk_steps(step, stop.max_steps, cfg.learner.publish_every)
        return learner.train.remote(steps, return_after_s=TRAIN_CALL_S) if steps else None

    training = train_call()
    collecting = {actor.collect.remote(EPISODES_PER_CALL): i for i, actor in enumerate(loop.actors)}
    evaluating, evaluated = loop.start_evaluation(version, step, stop.elapsed()), version
    reason = stop.reason(step)
    with tqdm(total=stop.max_steps, initial=step, desc="async loop", unit="step", leave=False) as bar:
        while reason is None:
            refs = [ref for ref in (training, evaluating and evaluating[0]) if ref is not None] + list(collecting)
            (ready,), _ = ray.wait(refs, num_returns=1)
            if ready is training:
                result = ray_call(ready, "training")
                bar.update(result["step"] - step)
                step, version = result["step"], result["version"]
                losses += result["losses"]
                bar.set_postfix(loss=f"{result['loss']:.4f}", version=version, episodes=tally.episodes,
                                success="-" if best is None else f"{best:.2f}")
                training = train_call()
            elif evaluating and ready is evaluating[0]:
                evaluation = loop.finish_evaluation(evaluating)
                best = max(best or 0.0, evaluation["success_rate"])
                evaluating = None
            else:
                i = collecting.pop(ready)
                tally.add(ray_call(ready, f"rolling out (actor-{i})"))
                collecting[loop.actors[i].collect.remote(EPISODES_PER_CALL)] = i
            if evaluating is None and version - evaluated >= cfg.evaluator.every_versions:
                evaluating, evaluated = loop.start_evaluation(version, step, stop.elapsed()), version
            reason = stop.reason(step, best)
    # Whole episodes only: every actor finishes the episode it is in; the learner its call.
    for ref, i in collecting.items():
        tally.add(ray_call(ref, f"rolling out (actor-{i})"))
    if training is not None:
        result = ray_call(training, "training")
        step, version, losses = result["step"], result["version"], losses + result["losses"]
    if evaluating:
        loop.finish_evaluation(evaluating)
    loop.verify_weights()  # the actors are idle now: each runs exactly what was published as its version
    final = ray_call(learner.publish.remote(), "publishing the final weights")
    if loop.evaluator and final != evaluated:
        loop.finish_evaluation(loop.start_evaluation(final, step, stop.elapsed()))
    log.info("async loop stopped (%s) at learner step %d, version %d, after %d episodes", reason, step, final,
             tally.episodes)
    return {"stopped_by": reason, "tally": tally, "losses": losses, "step": step, "version": final}
