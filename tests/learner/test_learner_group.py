"""LearnerGroup: the learner's ranks on Ray Train workers, called by the loop like one learner actor."""

import pytest

from fleetloop.actors.subscriber import WeightSubscriber
from fleetloop.config import load_config
from fleetloop.learner.group import LearnerGroup


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def _cfg(*overrides: str):
    return load_config("smoke", ["learner.batch_size=2", "learner.publish_every=2", "learner.checkpoint_every=0",
                                 "learner.warmup_steps=1", "learner.torch_threads=1", "weights.port=0",
                                 "metrics.learner_port=0", *overrides])


def test_two_ranks_train_publish_and_checkpoint_as_one_learner(ray_cluster, valkey, demos, tmp_path):
    import ray

    group = LearnerGroup(_cfg("learner.zero_stage=3"), str(tmp_path), valkey.url, resume=False, ranks=2)
    try:
        status = ray.get(group.build.remote())
        assert (status["rank"], status["world_size"]) == (0, 2) and status["weights"]
        assert ray.get(group.fit_mixture_normalization.remote()) == [demos]
        result = ray.get(group.train.remote(3))
        assert result["step"] == 3 and result["version"] == 1  # published at step 2
        assert len(result["losses"]) == 3 and all(loss > 0 for loss in result["losses"])
        version = ray.get(group.publish.remote())
        assert version == 2
        received = {}
        subscriber = WeightSubscriber(status["weights"], "test", lambda v, tensors: received.update({v: tensors}))
        subscriber.start()
        try:
            assert subscriber.wait_for_version(version, timeout=30)
            assert set(received) == {version} and received[version]  # the whole model, gathered from both ranks
        finally:
            subscriber.stop()
        path = ray.get(group.save_checkpoint.remote())
        assert path.endswith("policy-step-0000003.safetensors")
        assert ray.get(group.status.remote())["checkpoint_step"] == 3
    finally:
        group.shutdown()


def test_an_error_on_the_ranks_raises_from_the_group_call(ray_cluster, valkey, demos, tmp_path):
    import ray

    group = LearnerGroup(_cfg(), str(tmp_path), valkey.url, resume=False, ranks=2)
    try:
        ray.get(group.build.remote())
        with pytest.raises(ray.exceptions.RayTaskError, match="unknown_table"):
            ray.get(group.set_mixture.remote({"unknown_table": 1.0}))
    finally:
        group.shutdown()
