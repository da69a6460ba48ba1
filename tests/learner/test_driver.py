"""The TrainingDriver on a real Learner (Valkey replay, DeepSpeed engine), and behind a Ray actor."""

import numpy as np
import pytest

from fleetloop.config import load_config
from fleetloop.learner.driver import RemoteLearner, TrainingDriver, chunk_steps
from fleetloop.learner.settings import LearnerSettings
from fleetloop.replay import ReplayClient
from fleetloop.learner.learner import Learner, RestartableLearner
from fleetloop.ray_calls import LaunchError, ray_call
from fleetloop.system import embodiment_id
from tests.tools import local_ray


def _config(*overrides: str):
    return load_config("smoke", ["learner.batch_size=4", "learner.publish_every=3", "learner.checkpoint_every=0",
                                 "learner.torch_threads=1", *overrides])


def _checkpoint_steps(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints" / "deepspeed").iterdir() if p.is_dir())


@pytest.mark.parametrize(("step", "target", "expected"), [(0, 10, 3), (1, 10, 2), (3, 10, 3), (9, 10, 1),
                                                          (10, 10, 0), (11, 10, 0)])
def test_chunks_end_on_publish_boundaries_and_never_pass_the_target(step, target, expected):
    assert chunk_steps(step, target, publish_every=3) == expected


def test_a_fresh_start_fits_normalisation_and_checkpoints_step_0(valkey, demos, tmp_path):
    learner = Learner(LearnerSettings.of(_config()), str(tmp_path), ReplayClient(valkey.url))
    try:
        driver = TrainingDriver(learner, learner.settings.learner)
        assert int(learner.model.action_dim[embodiment_id(demos)]) == 0, "no statistics before the start"
        assert driver.start(fresh=True) == [demos]
        assert int(learner.model.action_dim[embodiment_id(demos)]) == 2
        assert _checkpoint_steps(tmp_path) == ["step-0000000"]
        assert driver.start(fresh=False) == [], "a resumed learner keeps its own statistics and checkpoints"
    finally:
        learner.close()


def test_train_to_publishes_on_every_boundary_and_stops_when_asked(valkey, demos, tmp_path):
    learner = Learner(LearnerSettings.of(_config()), str(tmp_path), ReplayClient(valkey.url))
    try:
        driver = TrainingDriver(learner, learner.settings.learner)
        driver.start(fresh=True)
        chunks = []
        trained = driver.train_to(7, on_chunk=lambda result: chunks.append((result["step"], result["version"])))
        assert chunks == [(3, 1), (6, 2), (7, 2)], "published at steps 3 and 6, the target reached at 7"
        assert (trained["step"], trained["version"], len(trained["losses"])) == (7, 2, 7)
        assert np.isfinite(trained["loss"]) and not trained["stopped"]

        stopped = driver.train_to(100, should_stop=lambda: True)
        assert (stopped["step"], stopped["stopped"]) == (9, True), "stops after the chunk to the next boundary"
        finished = driver.finish()
        assert finished["version"] == 3 and finished["checkpoint"].endswith("policy-step-0000009.safetensors")
        assert _checkpoint_steps(tmp_path)[-1] == "step-0000009"
    finally:
        learner.close()


def test_init_from_skips_the_fit_but_still_checkpoints_step_0(valkey, demos, tmp_path):
    first = Learner(LearnerSettings.of(_config()), str(tmp_path / "first"), ReplayClient(valkey.url))
    try:
        first.fit_normalization("pretrain", demos)
        policy = first.save_checkpoint()
    finally:
        first.close()
    learner = Learner(LearnerSettings.of(_config(f"learner.init_from={policy}")), str(tmp_path / "second"),
                      ReplayClient(valkey.url))
    try:
        assert TrainingDriver(learner, learner.settings.learner).start(fresh=True) == []
        assert _checkpoint_steps(tmp_path / "second") == ["step-0000000"]
    finally:
        learner.close()


@pytest.fixture(scope="module")
def ray_local():
    import ray

    with local_ray(1, {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}):
        yield ray


def test_a_remote_learner_is_driven_alike_and_its_errors_name_the_call(ray_local, valkey, demos, tmp_path):
    actor = ray_local.remote(num_cpus=1)(RestartableLearner).remote(LearnerSettings.of(_config()), str(tmp_path),
                                                                    valkey.url)
    try:
        driver = TrainingDriver(RemoteLearner(actor, ray_call), _config().learner)
        assert driver.start(fresh=True) == [demos]
        assert driver.train_to(4)["step"] == 4
        with pytest.raises(LaunchError, match=r"the learner's set_mixture failed: ValueError: .*nope"):
            driver.learner.set_mixture({"nope": 1.0})
    finally:
        ray_local.get(actor.close.remote())
        ray_local.kill(actor)
