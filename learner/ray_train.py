"""The learner's data-parallel ranks as Ray Train workers: TorchTrainer, DeepSpeed in each worker.

Ray Train creates the torch.distributed group (gloo on CPU, NCCL with CUDA) and sets
RANK/WORLD_SIZE/MASTER_* in every worker; ``init_distributed`` then finds the group ready and
DeepSpeed joins it. Joins the Ray cluster at RAY_ADDRESS (a KubeRay cluster) or starts a local one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from fleetloop.learner.role import LearnerRoleError, run_learner

if TYPE_CHECKING:
    from fleetloop.config import FleetloopConfig


def fit_ray_trainer(worker: Callable[[dict], Any], config: dict, *, ranks: int, run_dir: str) -> Any:
    """Run ``worker(config)`` on ``ranks`` Ray Train workers; returns rank 0's return value.

    Raises:
        LearnerRoleError: a worker failed; the message carries Ray Train's error snippet.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cuda = torch.cuda.is_available()
    own_cluster = not ray.is_initialized()
    if own_cluster:
        env_vars = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        if not cuda:
            env_vars["DS_ACCELERATOR"] = "cpu"
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address or "local", num_cpus=None if address else max(ranks, os.cpu_count() or 1),
                 include_dashboard=False, runtime_env={"env_vars": env_vars})
    try:
        trainer = TorchTrainer(
            worker, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=ranks, use_gpu=cuda, resources_per_worker={"CPU": 1}),
            torch_config=TorchConfig(backend="nccl" if cuda else "gloo"),
            run_config=RunConfig(name="learner", storage_path=str(Path(run_dir).resolve() / "ray_train")),
        )
        try:
            return trainer.fit().return_value
        except Exception as exc:  # Ray Train's WorkerGroupError/TrainingFailedError carry the workers' tracebacks
            raise LearnerRoleError(f"Ray Train learner ranks failed: {exc}") from exc
    finally:
        if own_cluster:
            ray.shutdown()


def _learner_rank(config: dict) -> dict[str, Any]:
    return run_learner(config["cfg"], config["run_dir"], config["redis_url"], steps=config["steps"],
                       resume=config["resume"])


def run_with_ray_train(cfg: "FleetloopConfig", run_dir: str, redis_url: str, *, ranks: int, steps: int,
                       resume: bool) -> dict[str, Any]:
    """``run_learner`` on ``ranks`` Ray Train workers; returns rank 0's final status."""
    config = {"cfg": cfg, "run_dir": str(Path(run_dir).resolve()), "redis_url": redis_url, "steps": steps,
              "resume": resume}
    return fit_ray_trainer(_learner_rank, config, ranks=ranks, run_dir=run_dir)
