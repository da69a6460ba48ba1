"""The learner's data-parallel ranks inside `fleetloop up`: a LearnerGroup, as in RLlib.

Ray Train's BackendExecutor starts one Ray actor per rank (a PACK placement group keeps them
together), forms the torch.distributed group among them (gloo on the CPU, NCCL with GPUs, each
rank seeing only its own GPU) and only then is each rank's Learner built, so DeepSpeed joins a
group that is ready. The loop calls the group as it calls one learner actor:
``group.train.remote(steps)`` runs the call on every rank (every call is collective) and returns
one object reference that resolves to rank 0's result once every rank has finished; an error on
any rank raises from it. Rank 0 serves the WeightService and /metrics.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import torch

from fleetloop.learner.learner import Learner

if TYPE_CHECKING:
    from fleetloop.config import FleetloopConfig

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 30.0
GROUP_METHODS = ("build", "status", "train", "publish", "save_checkpoint", "published_digest",
                 "fit_mixture_normalization", "set_mixture")
"""The LearnerRank calls the loop makes; each runs on every rank."""


class LearnerRank(Learner):
    """One rank of a LearnerGroup: a Learner built by ``build()``, once the process group exists."""

    def __init__(self, *args, **kwargs):  # noqa: D107 - the Learner's own arguments, kept for build()
        self._build_args = (args, kwargs)
        self._built = False

    def build(self) -> dict[str, Any]:
        """Build this rank's Learner in the group Ray Train formed; returns its status."""
        os.environ.update(RANK=str(torch.distributed.get_rank()), WORLD_SIZE=str(torch.distributed.get_world_size()),
                          LOCAL_RANK="0")  # each rank sees only its own GPU
        args, kwargs = self._build_args
        Learner.__init__(self, *args, **kwargs)
        self._built = True
        return self.status()

    def close(self) -> None:
        if self._built:
            super().close()


def _rank_zero(*results: Any) -> Any:
    return results[0]


class _GroupCall:
    """``group.<method>.remote(...)``: the call on every rank, one reference to rank 0's result."""

    def __init__(self, group: "LearnerGroup", method: str):
        self.group, self.method = group, method

    def remote(self, *args, **kwargs):
        refs = [getattr(worker, self.method).remote(*args, **kwargs) for worker in self.group.workers]
        return self.group.rank_zero.remote(*refs)  # Ray resolves every rank's reference before it runs


class LearnerGroup:
    """``ranks`` Learner ranks on Ray Train workers, called like one learner actor.

    Args:
        cfg: the run configuration (``learner.num_gpus`` and ``learner.ray_resources`` per rank).
        run_dir, redis_url, resume: as for ``Learner``.
        ranks: data-parallel ranks (``learner.ranks``).
    """

    def __init__(self, cfg: "FleetloopConfig", run_dir: str, redis_url: str, *, resume: bool, ranks: int):
        import ray
        from ray.train._internal.backend_executor import BackendExecutor

        self.rank_zero = ray.remote(num_cpus=0)(_rank_zero)
        resources = {"CPU": 1, **({"GPU": cfg.learner.num_gpus} if cfg.learner.num_gpus else {}),
                     **dict(cfg.learner.ray_resources)}
        self._executor = BackendExecutor(backend_config=_torch_config(bool(cfg.learner.num_gpus)), num_workers=ranks,
                                         resources_per_worker=resources, max_retries=0)
        self._executor.start(train_cls=LearnerRank, train_cls_args=(cfg, run_dir, redis_url),
                             train_cls_kwargs={"resume": resume})
        self.workers = [worker.actor for worker in self._executor.worker_group.workers]
        for method in GROUP_METHODS:
            setattr(self, method, _GroupCall(self, method))

    def shutdown(self) -> None:
        """Close every rank's Learner (servers, prefetcher, replay client), then end their actors."""
        import ray

        try:
            ray.get([worker.close.remote() for worker in self.workers], timeout=CLOSE_TIMEOUT_S)
        except (ray.exceptions.RayError, TimeoutError) as exc:  # a dead or stuck rank: its actor ends below
            log.warning("closing the learner ranks: %s", str(exc).splitlines()[0])
        self._executor.shutdown(graceful_termination=False)


def _torch_config(gpus: bool):
    from ray.train.torch.config import TorchConfig, _TorchBackend

    class _OwnDeviceBackend(_TorchBackend):
        share_cuda_visible_devices = False  # a rank sees only its GPU: LOCAL_RANK 0 is its device

    class _OwnDeviceConfig(TorchConfig):
        @property
        def backend_cls(self):
            return _OwnDeviceBackend

    return _OwnDeviceConfig(backend="nccl" if gpus else "gloo")
