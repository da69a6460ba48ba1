"""`fleetloop learner`: the learner as a long-running role, one process per data-parallel rank.

One process trains alone; under the ``deepspeed`` launcher every process is one rank (the
launcher sets RANK/WORLD_SIZE/MASTER_*); under Ray Train each TorchTrainer worker runs
``run_learner`` (see ``ray_train.py``). The loop: fit normalisation on the mixture's tables (a
fresh start without ``learner.init_from``) or resume,
publish, then train in chunks that end on publish boundaries until ``steps`` (0 = until
stopped). SIGTERM or Ctrl-C ends it at the next chunk boundary on every rank together,
after a final publish and checkpoint, so a pre-empted pod loses no steps.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

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
    """Run this rank of the learner until ``steps`` optimizer steps (0 = until stopped).

    Returns:
        The learner's status (step, version, resumed_from_step, ...) and the last chunk's loss.
    """
    stop = stop or _stop_on_signals()
    learner = Learner(cfg, run_dir, redis_url, resume=resume)
    try:
        if learner.resumed_from is None and not cfg.learner.init_from:
            log.info("normalisation fitted for %s", learner.fit_mixture_normalization())
        learner.publish()
        every = cfg.learner.publish_every
        loss, stopped = float("nan"), False
        with tqdm(total=steps or None, initial=learner.step, desc="learner", unit="step",
                  disable=learner.rank != 0) as bar:
            while steps == 0 or learner.step < steps:
                chunk = every - learner.step % every
                if steps:
                    chunk = min(chunk, steps - learner.step)
                result = learner.train(chunk)
                loss = result["loss"]
                bar.update(chunk)
                bar.set_postfix(loss=f"{loss:.4f}", version=result["version"])
                stopped = learner.any_rank(stop.is_set())
                if stopped:
                    log.info("stop requested at step %d", learner.step)
                    break
        learner.publish()
        learner.save_checkpoint()
        return {**learner.status(), "loss": loss, "stopped": stopped}
    finally:
        learner.close()
