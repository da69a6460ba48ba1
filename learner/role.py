"""`fleetloop learner`: the learner as a long-running role.

Three ways to run its ranks, one way to drive them (the loop's own ``TrainingDriver``,
driver.py: a fresh start fits the normalisation and saves a step-0 checkpoint, or it resumes;
it publishes, then trains in chunks that end on publish boundaries until ``steps``, 0 = until
stopped):

- one process, one rank (``run_learner``);
- under the ``deepspeed`` launcher, every process is one rank (the launcher sets
  RANK/WORLD_SIZE/MASTER_*) and drives its own Learner; every driver call is collective;
- ``--ranks N`` (``run_learner_group``): the ``LearnerGroup`` `fleetloop up` runs (group.py), N
  ranks on Ray Train workers driven from this process. When a rank dies the group restarts every
  rank from the newest checkpoint and the interrupted call goes on, at most
  ``learner.max_restarts`` times, with no operator's ``--resume``.

SIGTERM or Ctrl-C ends it at the next chunk boundary on every rank together, after a final
checkpoint and publish, so a pre-empted pod loses no steps.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tqdm import tqdm

from fleetloop.learner.driver import RemoteLearner, TrainingDriver
from fleetloop.learner.learner import Learner
from fleetloop.learner.settings import LearnerSettings
from fleetloop.replay import ReplayClient

if TYPE_CHECKING:
    from fleetloop.config import FleetloopConfig

log = logging.getLogger(__name__)


class LearnerRoleError(RuntimeError):
    """The learner role cannot start or go on; the message says what to do."""


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM/SIGINT (handlers are installed only from the main thread)."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    return stop


def _drive(learner: Any, cfg: "FleetloopConfig", steps: int, *, fresh: bool, should_stop: Callable[[], bool],
           show_progress: bool) -> dict[str, Any]:
    """Start, train to ``steps`` (0 = until ``should_stop``) and finish ``learner`` with the
    TrainingDriver; returns the last chunk's loss and whether it stopped early."""
    driver = TrainingDriver(learner, cfg.learner)
    fitted = driver.start(fresh=fresh)
    if fitted:
        log.info("normalisation fitted for %s", fitted)
    learner.publish()
    with tqdm(total=steps or None, initial=learner.status()["step"], desc="learner", unit="step",
              disable=not show_progress) as bar:
        def advance(result: dict[str, Any]) -> None:
            bar.update(result["step"] - bar.n)
            bar.set_postfix(loss=f"{result['loss']:.4f}", version=result["version"])

        trained = driver.train_to(steps or sys.maxsize, on_chunk=advance, should_stop=should_stop)
    if trained["stopped"]:
        log.info("stop requested at step %d", trained["step"])
    driver.finish()
    return {"loss": trained["loss"], "stopped": trained["stopped"]}


def run_learner(cfg: "FleetloopConfig", run_dir: str, redis_url: str, *, steps: int, resume: bool,
                stop: threading.Event | None = None) -> dict[str, Any]:
    """Run this process's rank until ``steps`` optimizer steps (0 = until stopped).

    Returns:
        The learner's status (step, version, resumed_from_step, ...) and the last chunk's loss.
    """
    stop = stop or _stop_on_signals()
    learner = Learner(LearnerSettings.of(cfg), run_dir, ReplayClient(redis_url, **cfg.replay.client_options()),
                      resume=resume)
    try:
        result = _drive(learner, cfg, steps, fresh=learner.resumed_from is None,
                        should_stop=lambda: learner.any_rank(stop.is_set()), show_progress=learner.rank == 0)
        return {**learner.status(), **result}
    finally:
        learner.close()


def run_learner_group(cfg: "FleetloopConfig", run_dir: str, redis_url: str, *, ranks: int, steps: int,
                      resume: bool) -> dict[str, Any]:
    """``ranks`` ranks as a LearnerGroup on the Ray cluster at RAY_ADDRESS (a KubeRay cluster) or on
    a local one started here, driven from this process until ``steps`` (0 = until stopped).

    Returns:
        Rank 0's final status with ``restarted`` and the last chunk's loss.

    Raises:
        LaunchError: a rank failed for good (an error in the learner, or more deaths than
            ``learner.max_restarts``); the message names the call and carries the rank's error.
    """
    import ray

    from fleetloop.learner.group import start_learner_group
    from fleetloop.ray_calls import ray_call
    from fleetloop.rundir import ray_runtime_env

    address = os.environ.get("RAY_ADDRESS")
    on_sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(address=address or "local", num_cpus=None if address else max(ranks, os.cpu_count() or 1),
             include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             runtime_env=ray_runtime_env(Path(run_dir) / "logs", cpu_only=not cfg.learner.num_gpus))
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)  # ray.init replaces it with a plain sys.exit
    stop = _stop_on_signals()
    group = None
    try:
        # pinned ports: a restarted rank 0 serves weights and metrics where its clients dial it
        settings = LearnerSettings.of(cfg)
        group = start_learner_group(settings if address else settings.with_pinned_ports(), run_dir, redis_url,
                                    resume=resume, ranks=ranks)
        learner = RemoteLearner(group, ray_call)
        result = _drive(learner, cfg, steps, fresh=learner.status()["resumed_from_step"] is None,
                        should_stop=stop.is_set, show_progress=True)
        return {**learner.status(), **result}
    finally:
        if group is not None:
            try:
                ray.get(group.shutdown.remote())
            except ray.exceptions.RayError as exc:
                log.warning("shutting the learner ranks down: %s", str(exc).splitlines()[0])
        ray.shutdown()
