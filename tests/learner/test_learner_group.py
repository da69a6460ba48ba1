"""LearnerGroup: the learner's ranks on Ray Train workers, called by the loop like one learner actor."""

import os
import signal

import pytest

from fleetloop.actors.subscriber import WeightSubscriber
from fleetloop.config import load_config
from fleetloop.learner.group import start_learner_group
from fleetloop.learner.settings import LearnerSettings
from tests.integration.test_loop import free_ports
from tests.tools import local_ray


@pytest.fixture(scope="module")
def ray_cluster():
    with local_ray(3, {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}):
        yield


def _cfg(*overrides: str):
    return load_config("smoke", ["learner.batch_size=2", "learner.publish_every=2", "learner.checkpoint_every=0",
                                 "learner.warmup_steps=1", "learner.torch_threads=1", "weights.port=0",
                                 "metrics.learner_port=0", *overrides])


def test_two_ranks_train_publish_and_checkpoint_as_one_learner(ray_cluster, valkey, demos, tmp_path):
    import ray

    group = start_learner_group(LearnerSettings.of(_cfg("learner.zero_stage=3")), str(tmp_path), valkey.url,
                                resume=False, ranks=2)
    try:
        status = ray.get(group.status.remote())
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
        ray.get(group.shutdown.remote())


def test_an_error_on_the_ranks_raises_from_the_group_call(ray_cluster, valkey, demos, tmp_path):
    import ray

    group = start_learner_group(LearnerSettings.of(_cfg()), str(tmp_path), valkey.url, resume=False, ranks=2)
    try:
        ray.get(group.status.remote())
        with pytest.raises(ray.exceptions.RayTaskError, match="unknown_table"):
            ray.get(group.set_mixture.remote({"unknown_table": 1.0}))
    finally:
        ray.get(group.shutdown.remote())


def test_a_killed_rank_restarts_every_rank_from_the_newest_checkpoint_and_the_call_goes_on(
        ray_cluster, valkey, demos, tmp_path):
    """kill -9 of one rank: the others would wait for it in a collective; the group ends them all,
    resumes ``ranks`` new ones from the newest checkpoint (versions never go back, rank 0 serves
    at the same address) and runs the interrupted call again."""
    import ray

    ports = free_ports(2)  # pinned, as `fleetloop up` pins them, so that a restarted rank 0 binds them again
    cfg = _cfg("learner.checkpoint_every=2", "learner.max_restarts=1", f"weights.port={ports[0]}",
               f"metrics.learner_port={ports[1]}")
    group = start_learner_group(LearnerSettings.of(cfg), str(tmp_path), valkey.url, resume=False, ranks=2)
    try:
        before = ray.get(group.status.remote())
        ray.get(group.fit_mixture_normalization.remote())
        trained = ray.get(group.train.remote(4))  # checkpoints at steps 2 and 4, version 2 out at step 4
        assert (trained["step"], trained["version"]) == (4, 2)
        os.kill(before["rank_pids"][1], signal.SIGKILL)
        result = ray.get(group.train.remote(2))
        assert result["step"] == 6 and result["version"] == 3, "resumed at step 4, version 2, and trained on"
        after = ray.get(group.status.remote())
        assert after["restarted"] and after["resumed_from_step"] == 4
        assert set(after["rank_pids"]).isdisjoint(before["rank_pids"]), "every rank was replaced"
        assert after["weights"] == before["weights"], "rank 0 serves where the fleet dials it"
        os.kill(after["rank_pids"][0], signal.SIGKILL)  # learner.max_restarts=1: used up
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(group.train.remote(1))
    finally:
        ray.get(group.shutdown.remote())
