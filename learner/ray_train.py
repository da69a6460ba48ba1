"""Any function run on N Ray Train workers (TorchTrainer), one DeepSpeed rank in each.

The learner's ranks themselves run in a LearnerGroup (group.py), in `fleetloop up` and in
`fleetloop learner --ranks N`; this runs code of one's own on every rank instead: the 2-rank
throughput figure of bench/learner.py and the test that 2 ranks of b train like 1 rank of 2b.
Ray Train creates the torch.distributed group (gloo on CPU, NCCL with CUDA) and sets
RANK/WORLD_SIZE/MASTER_* in every worker; ``init_distributed`` then finds the group ready and
DeepSpeed joins it. Joins the Ray cluster at RAY_ADDRESS (a KubeRay cluster) or starts a local one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from fleetloop.learner.role import LearnerRoleError


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
        from fleetloop.rundir import ray_runtime_env

        log_dir = Path(run_dir) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address or "local", num_cpus=None if address else max(ranks, os.cpu_count() or 1),
                 include_dashboard=False, runtime_env=ray_runtime_env(log_dir, cpu_only=not cuda))
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
