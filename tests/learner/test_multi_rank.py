"""Data-parallel ranks as Ray Train workers: 2 ranks x micro-batch b train like 1 rank x 2b.

Every run starts from the same policy file (under ZeRO-3 the model is built partitioned, so a
fresh build draws other initial weights than stages 1 and 2) and sees the same windows (each
global batch of 2b windows, read once from the replay, split in halves across the 2 ranks) and
the same flow-matching draws (numbered by global sample index), so only the order of floating-point reductions differs: losses and final
weights agree to a relative 1e-4 (the stated tolerance) over several steps.
"""

import copy
import os
from pathlib import Path

import numpy as np
import pytest

from fleetloop.config import load_config
from fleetloop.learner.learner import Learner
from fleetloop.learner.settings import LearnerSettings
from fleetloop.learner.ray_train import fit_ray_trainer
from fleetloop.replay import ReplayClient, WindowSampler
from fleetloop.system import DualSystemPolicy, model_preset, save_policy
from tests.tools import local_ray

B = 2
STEPS = 4
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


class FixedWindows:
    """A rank's data source: its share of fixed global batches, in order."""

    def __init__(self, batches: list[list[dict]], rank: int, world_size: int):
        self.batches, self.rank, self.world_size, self.index = batches, rank, world_size, 0

    def sample(self, n: int) -> list[dict]:
        batch = self.batches[self.index]
        self.index += 1
        assert n * self.world_size == len(batch)
        return copy.deepcopy(batch[self.rank * n:(self.rank + 1) * n])

    def get_state(self) -> dict:
        return {"index": self.index}


def _rank(config: dict) -> dict:
    learner = Learner(LearnerSettings.of(config["cfg"]), config["run_dir"], ReplayClient(config["redis_url"]))
    try:
        learner.fit_normalization("pretrain", config["embodiment"])
        learner.sampler = FixedWindows(config["batches"], learner.rank, learner.world_size)
        losses = learner.train(STEPS)["losses"]
        state = learner._full_state_dict()  # collective under ZeRO-3: the consolidated export
        return {"losses": losses, "world_size": learner.world_size,
                "state": None if state is None else {k: v.detach().float().numpy().copy() for k, v in state.items()}}
    finally:
        learner.close()


def _run(tmp_path, url, demos, batches, ranks: int, zero_stage: int) -> dict:
    start = tmp_path / "start.safetensors"  # one set of initial weights: ZeRO-3 builds the model partitioned
    if not start.exists():
        save_policy(DualSystemPolicy(model_preset(load_config("smoke").model.preset)), start)
    cfg = load_config("smoke", [f"learner.batch_size={2 * B // ranks}", f"learner.zero_stage={zero_stage}",
                                f"learner.init_from={start}",
                                "learner.publish_every=100", "learner.steps_per_round=100",
                                "learner.checkpoint_every=0", "learner.warmup_steps=1", "learner.torch_threads=1"])
    run_dir = str(tmp_path / f"ranks{ranks}-zero{zero_stage}")
    config = {"cfg": cfg, "run_dir": run_dir, "redis_url": url, "embodiment": demos, "batches": batches}
    result = fit_ray_trainer(_rank, config, ranks=ranks, run_dir=run_dir)
    assert result["world_size"] == ranks
    return result


@pytest.fixture(scope="module")
def ray_cluster():
    # Workers import this module (its worker function) by name, as pytest does from this folder.
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    with local_ray(2, {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}):
        yield


def test_two_ranks_of_b_match_one_rank_of_2b_under_every_zero_stage(ray_cluster, valkey, demos, tmp_path):
    with ReplayClient(valkey.url) as client:
        sampler = WindowSampler(client, {"pretrain": 1.0}, horizon=16, seed=7)
        batches = [sampler.sample(2 * B) for _ in range(STEPS)]

    single = _run(tmp_path, valkey.url, demos, batches, ranks=1, zero_stage=1)
    assert len(single["losses"]) == STEPS and np.all(np.isfinite(single["losses"]))
    assert single["losses"][0] != pytest.approx(single["losses"][-1], rel=1e-3), "the model trains"
    for stage in (1, 2, 3):
        pair = _run(tmp_path, valkey.url, demos, batches, ranks=2, zero_stage=stage)
        np.testing.assert_allclose(pair["losses"], single["losses"], **TOLERANCE, err_msg=f"ZeRO-{stage} losses")
        assert pair["state"].keys() == single["state"].keys(), f"ZeRO-{stage} export lacks tensors"
        for name, array in single["state"].items():
            np.testing.assert_allclose(pair["state"][name], array, **TOLERANCE, err_msg=f"ZeRO-{stage} {name}")
