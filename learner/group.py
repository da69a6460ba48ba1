"""The learner's data-parallel ranks inside `fleetloop up`: a LearnerGroup, as in RLlib.

The LearnerGroup is one Ray actor that owns the ranks: Ray Train's BackendExecutor starts one Ray
actor per rank (a PACK placement group keeps them together), forms the torch.distributed group
among them (gloo on the CPU, NCCL with GPUs, each rank seeing only its own GPU) and only then is
each rank's Learner built, so DeepSpeed joins a group that is ready. The loop calls the group as
it calls one learner actor: ``group.train.remote(steps)`` runs the call on every rank (every call
is collective) and resolves to rank 0's result; an error on any rank raises from it. Rank 0
serves the WeightService and /metrics.

*Restart*: when a rank's process dies during a call, the other ranks would wait for it in a
collective; the group ends every rank, starts ``ranks`` new ones that resume from the newest
checkpoint (rank 0 on the same weights and metrics ports, where the fleet dials it) and runs the
interrupted call again, at most ``learner.max_restarts`` times in a run, as Ray does for the
one-rank learner actor.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fleetloop.learner.learner import Learner, has_checkpoint
from fleetloop.replay import ReplayClient

if TYPE_CHECKING:
    from fleetloop.learner.settings import LearnerSettings

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 30.0


def learner_rank_class() -> type:
    """LearnerRank: one rank of a LearnerGroup, a Learner built by ``build()`` once the process group
    exists. It is Ray Train's worker class itself (not wrapped in one), so its process is
    ``ray::LearnerRank`` in an operator's ``ps``. Made on demand: Ray Train is imported only where
    a group starts (the group's own actor), never in the loop's driver."""
    from ray.train._internal.worker_group import RayTrainWorker

    class LearnerRank(Learner, RayTrainWorker):
        def __init__(self, *args, **kwargs):  # noqa: D107 - settings, run_dir, redis_url and resume, kept for build()
            self._build_args = (args, kwargs)
            self._built = False

        def build(self) -> dict[str, Any]:
            """Build this rank's Learner in the group Ray Train formed; returns its status."""
            os.environ.update(RANK=str(torch.distributed.get_rank()),
                              WORLD_SIZE=str(torch.distributed.get_world_size()),
                              LOCAL_RANK="0")  # each rank sees only its own GPU
            (settings, run_dir, redis_url), kwargs = self._build_args
            Learner.__init__(self, settings, run_dir, ReplayClient(redis_url, **settings.replay.client_options()),
                             **kwargs)
            self._built = True
            return self.status()

        def pid(self) -> int:
            return os.getpid()

        def close(self) -> None:
            if self._built:
                super().close()

    return LearnerRank


class LearnerGroup:
    """``ranks`` Learner ranks on Ray Train workers; run it as a Ray actor (``start_learner_group``).

    Args:
        settings: the ranks' configuration (``learner.num_gpus`` and ``learner.ray_resources`` per
            rank, ``learner.max_restarts``); pin its ports (``with_pinned_ports``) for restarts to keep them.
        run_dir, redis_url, resume: as for ``Learner``.
        ranks: data-parallel ranks (``learner.ranks``).
    """

    def __init__(self, settings: LearnerSettings, run_dir: str, redis_url: str, *, resume: bool, ranks: int):
        self.settings, self.run_dir, self.redis_url, self.ranks = settings, run_dir, redis_url, ranks
        self.restarts = 0
        self._start(resume)

    def _start(self, resume: bool) -> None:
        from ray.train._internal.backend_executor import BackendExecutor

        lcfg = self.settings.learner
        resources = {"CPU": 1, **({"GPU": lcfg.num_gpus} if lcfg.num_gpus else {}), **dict(lcfg.ray_resources)}
        self._executor = BackendExecutor(backend_config=_torch_config(bool(lcfg.num_gpus)), num_workers=self.ranks,
                                         resources_per_worker=resources, max_retries=0)
        self._executor.start(train_cls=learner_rank_class(),
                             train_cls_args=(self.settings, self.run_dir, self.redis_url),
                             train_cls_kwargs={"resume": resume})
        self.workers = [worker.actor for worker in self._executor.worker_group.workers]
        self._on_ranks("build")

    def _on_ranks(self, method: str, *args, **kwargs) -> Any:
        """``method`` on every rank; rank 0's result. Raises the first error of any rank as it comes,
        without waiting for ranks that may be blocked in a collective with a dead one."""
        import ray

        refs = [getattr(worker, method).remote(*args, **kwargs) for worker in self.workers]
        pending = list(refs)
        while pending:
            (ready,), pending = ray.wait(pending, num_returns=1)
            ray.get(ready)
        return ray.get(refs[0])

    def _call(self, method: str, *args, **kwargs) -> Any:
        """``_on_ranks``, restarting every rank from the newest checkpoint when one died."""
        import ray

        while True:
            try:
                return self._on_ranks(method, *args, **kwargs)
            except ray.exceptions.RayActorError as exc:
                if self.restarts >= self.settings.learner.max_restarts:
                    raise
                self.restarts += 1
                log.warning("a learner rank died during %s (%s): restarting the %d ranks from the newest checkpoint "
                            "(restart %d of learner.max_restarts=%d)", method, str(exc).splitlines()[0], self.ranks,
                            self.restarts, self.settings.learner.max_restarts)
                self._executor.shutdown(graceful_termination=False)
                self._start(resume=has_checkpoint(Path(self.run_dir) / "checkpoints"))

    def status(self) -> dict[str, Any]:
        """Rank 0's status, with ``restarted`` (the ranks were restarted after a crash), ``restarts``
        (how often) and ``rank_pids``."""
        import ray

        return {**self._call("status"), "restarted": self.restarts > 0, "restarts": self.restarts,
                "rank_pids": ray.get([worker.pid.remote() for worker in self.workers])}

    def train(self, *args, **kwargs) -> dict[str, Any]:
        return self._call("train", *args, **kwargs)

    def publish(self) -> int:
        return self._call("publish")

    def promote(self, version: int) -> bool:
        return self._call("promote", version)

    def hold(self, version: int) -> bool:
        return self._call("hold", version)

    def release(self, version: int) -> None:
        return self._call("release", version)

    def save_checkpoint(self) -> str:
        return self._call("save_checkpoint")

    def published_digest(self, version: int) -> str | None:
        return self._call("published_digest", version)

    def fit_mixture_normalization(self, *args, **kwargs) -> Any:
        return self._call("fit_mixture_normalization", *args, **kwargs)

    def set_mixture(self, *args, **kwargs) -> Any:
        return self._call("set_mixture", *args, **kwargs)

    def shutdown(self) -> None:
        """Close every rank's Learner (servers, prefetcher, replay client), then end their actors."""
        import ray

        try:
            ray.get([worker.close.remote() for worker in self.workers], timeout=CLOSE_TIMEOUT_S)
        except (ray.exceptions.RayError, TimeoutError) as exc:  # a dead or stuck rank: its actor ends below
            log.warning("closing the learner ranks: %s", str(exc).splitlines()[0])
        self._executor.shutdown(graceful_termination=False)


def start_learner_group(settings: LearnerSettings, run_dir: str, redis_url: str, *, resume: bool, ranks: int):
    """The LearnerGroup as a Ray actor (no CPU of its own: its ranks hold them); call
    ``shutdown`` on it before the cluster ends."""
    import ray

    return ray.remote(num_cpus=0)(LearnerGroup).remote(settings, run_dir, redis_url, resume=resume, ranks=ranks)


def _torch_config(gpus: bool):
    from ray.train.torch.config import TorchConfig, _TorchBackend

    class _OwnDeviceBackend(_TorchBackend):
        share_cuda_visible_devices = False  # a rank sees only its GPU: LOCAL_RANK 0 is its device

    class _OwnDeviceConfig(TorchConfig):
        @property
        def backend_cls(self):
            return _OwnDeviceBackend

    return _OwnDeviceConfig(backend="nccl" if gpus else "gloo")
