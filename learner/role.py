"""`fleetloop learner`: the learner as a long-running role, one process per data-parallel rank.

One process trains alone; under the ``deepspeed`` launcher every process is one rank (the
launcher sets RANK/WORLD_SIZE/MASTER_*); under Ray Train each TorchTrainer worker runs
``run_learner`` (see ``ray_train.py``). Every rank drives its Learner with the loop's own
``TrainingDriver`` (driver.py): a fresh start fits the normalisation and saves a step-0
checkpoint (or it resumes), publishes, then trains in chunks that end on publish boundaries
until ``steps`` (0 = until stopped). SIGTERM or Ctrl-C ends it at the next chunk boundary on
every rank together, after a final checkpoint and publish, so a pre-empted pod loses no steps.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from fleetloop.learner.driver import TrainingDriver
from fleetloop.learner.learner import Learner

if TYPE_CHECKING:
    from fleetloop.config import FleetloopConfig

log = logging.getLogger(__name__)


class LearnerRoleError(RuntimeError):
    """The learner role cannot start; the message says what to do."""


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM/SIGINT (handlers are installed only from the main thread)."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    return stop


def run_learner(cfg: "FleetloopConfig", run_dir: str, redis_url: str, *, steps: int, resume: bool,
                stop: threading.Event | None = None) -> dict[str, Any]:
    """Run this rank of the learner until ``steps`` optimizer steps (0 = until stopped), driven by
    the ``TrainingDriver`` every rank runs alike (each call is collective).

    Returns:
        The learner's status (step, version, resumed_from_step, ...) and the last chunk's loss.
    """
    stop = stop or _stop_on_signals()
    learner = Learner(cfg, run_dir, redis_url, resume=resume)
    try:
        driver = TrainingDriver(learner, cfg.learner)
        fitted = driver.start(fresh=learner.resumed_from is None)
        if fitted:
            log.info("normalisation fitted for %s", fitted)
        learner.publish()
        with tqdm(total=steps or None, initial=learner.step, desc="learner", unit="step",
                  disable=learner.rank != 0) as bar:
            def advance(result: dict[str, Any]) -> None:
                bar.update(result["step"] - bar.n)
                bar.set_postfix(loss=f"{result['loss']:.4f}", version=result["version"])

            trained = driver.train_to(steps or sys.maxsize, on_chunk=advance,
                                      should_stop=lambda: learner.any_rank(stop.is_set()))
        if trained["stopped"]:
            log.info("stop requested at step %d", learner.step)
        driver.finish()
        return {**learner.status(), "loss": trained["loss"], "stopped": trained["stopped"]}
    finally:
        learner.close()
