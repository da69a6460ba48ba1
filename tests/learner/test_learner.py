"""The Learner on real parts: Valkey replay, DeepSpeed engine, gRPC WeightService, /metrics."""

import threading
import urllib.request

import numpy as np
import pytest
import torch

from fleetloop.actors.subscriber import WeightSubscriber
from fleetloop.config import load_config
from fleetloop.learner.learner import Learner, LearnerInitError
from fleetloop.learner.settings import LearnerSettings
from fleetloop.replay import EmptyReplayError, ReplayClient
from fleetloop.system import DualSystemPolicy, embodiment_id, load_policy
from tests.learner.conftest import first_batch


@pytest.fixture
def learner(valkey, demos, tmp_path):
    cfg = load_config("smoke", ["learner.batch_size=4", "learner.publish_every=2"])
    learner = Learner(LearnerSettings.of(cfg), str(tmp_path), ReplayClient(valkey.url))
    learner.fit_normalization("pretrain", demos)
    yield learner
    learner.close()


def test_train_publish_and_checkpoint(learner, tmp_path):
    received: dict[int, dict[str, torch.Tensor]] = {}
    done = threading.Event()

    def on_version(version, tensors):
        received[version] = tensors
        if version >= 2:
            done.set()

    subscriber = WeightSubscriber(learner.endpoints()["weights"], "test-actor", on_version=on_version)
    subscriber.start()
    try:
        result = learner.train(4)  # publishes at steps 2 and 4
        assert result["step"] == 4 and np.isfinite(result["loss"])
        assert result["version"] == 2
        assert learner.publish() == 2, "publishing again at the same step is a no-op"
        assert done.wait(30), "subscriber did not receive version 2"
    finally:
        subscriber.stop()

    replica = DualSystemPolicy(learner.model_cfg)
    replica.load_state_dict(received[2])
    for name, tensor in learner.model.state_dict().items():
        assert torch.equal(replica.state_dict()[name], tensor), name
    assert int(replica.action_dim[30]) == 2, "normalisation statistics travel with the weights"

    path = learner.save_checkpoint()
    restored = load_policy(path)
    for name, tensor in learner.model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name
    assert (tmp_path / "checkpoints" / "deepspeed" / "step-0000004").is_dir()


def test_training_moves_the_weights_and_exports_metrics(learner):
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    learner.train(2)
    changed = [k for k, v in learner.model.state_dict().items() if not torch.equal(before[k], v)]
    assert any(k.startswith("action_head.") for k in changed)
    assert not any(k in ("state_min", "state_max", "action_min", "action_max") for k in changed)
    with urllib.request.urlopen(learner.endpoints()["metrics"], timeout=5) as response:
        body = response.read().decode()
    for series in ("fleetloop_learner_steps_total", "fleetloop_learner_loss", "fleetloop_learner_step_seconds",
                   "fleetloop_weights_version_published"):
        assert series in body


def test_gradient_accumulation_consumes_micro_batches(valkey, demos, tmp_path):
    cfg = load_config("smoke", ["learner.batch_size=2", "learner.grad_accum_steps=3", "learner.warmup_steps=2"])
    learner = Learner(LearnerSettings.of(cfg), str(tmp_path), ReplayClient(valkey.url))
    try:
        learner.fit_normalization("pretrain", demos)
        result = learner.train(2)
        assert result["step"] == 2 and learner.engine.global_steps == 2
        assert learner.engine.micro_steps == 6
        assert learner.engine.get_lr()[0] == pytest.approx(cfg.learner.lr)  # warm-up done after 2 steps
    finally:
        learner.close()


def test_freeze_flags_keep_frozen_parts_fixed(valkey, demos, tmp_path):
    cfg = load_config("smoke", ["learner.batch_size=4", "learner.tune_llm=false", "learner.tune_visual=false",
                                "learner.gradient_checkpointing=true"])
    learner = Learner(LearnerSettings.of(cfg), str(tmp_path), ReplayClient(valkey.url))
    try:
        learner.fit_normalization("pretrain", demos)
        before = {k: v.clone() for k, v in learner.model.state_dict().items()}
        learner.train(2)
        after = learner.model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
    finally:
        learner.close()
    assert not any(k.startswith(("backbone.model.language_model.", "backbone.model.vision_model.",
                                 "backbone.model.mlp1.")) for k in changed)
    assert any(k.startswith("action_head.model.") for k in changed)


def test_normalisation_treats_dims_that_barely_move_as_constant(valkey, demos, client, tmp_path):
    bounds = client.compute_stats("pretrain", demos)
    ranges = bounds["state_max"] - bounds["state_min"]
    cut = float(np.median(ranges))
    learner = Learner(LearnerSettings.of(load_config("smoke", [f"learner.min_stat_range={cut}"])), str(tmp_path),
                      ReplayClient(valkey.url))
    try:
        learner.fit_normalization("pretrain", demos)
        slot = embodiment_id(demos)
        low = learner.model.state_min[slot, : len(ranges)].numpy()
        high = learner.model.state_max[slot, : len(ranges)].numpy()
    finally:
        learner.close()
    narrow = ranges < cut
    assert narrow.any() and (~narrow).any()
    np.testing.assert_allclose(low[narrow], high[narrow])
    np.testing.assert_allclose(low[~narrow], bounds["state_min"][~narrow], rtol=1e-6)


def test_class_weights_reach_each_window_of_a_batch(valkey, demos, client, make_episode, tmp_path):
    mixed = make_episode(length=16, state_dim=4, action_dim=2, frame_steps=(0, 8), frame_shape=(64, 64),
                         embodiment=demos, source="pre_intervention")
    client.write_episode("pretrain", mixed)
    batch, windows = first_batch(valkey.url, tmp_path, ["learner.batch_size=16", "learner.class_weights={demo: 0.5}"])
    expected = [{"demo": 0.5, "pre_intervention": 0.0}[w["source"]] for w in windows]
    assert batch["sample_weight"].tolist() == expected and 0.0 in expected and 0.5 in expected


def test_a_fresh_learner_starts_from_a_policy_file(learner, valkey, tmp_path):
    learner.train(2)
    path = learner.save_checkpoint()
    cfg = load_config("smoke", ["learner.batch_size=4", f"learner.init_from={path}"])
    fresh = Learner(LearnerSettings.of(cfg), str(tmp_path / "fine-tune"), ReplayClient(valkey.url))
    try:
        for name, tensor in learner.model.state_dict().items():
            assert torch.equal(fresh.model.state_dict()[name], tensor), name
        assert fresh.step == 0 and fresh.version == 0, "fine-tuning, not a resume"
    finally:
        fresh.close()
    for bad, message in ((str(tmp_path / "missing.safetensors"), "is not a file"),
                         (str(tmp_path / "checkpoints" / "published_version.json"), "not a fleetloop.system/1")):
        with pytest.raises(LearnerInitError, match=f"learner.init_from: .*{message}"):
            Learner(LearnerSettings.of(load_config("smoke", [f"learner.init_from={bad}"])), str(tmp_path / "bad"),
                    ReplayClient(valkey.url))


def test_mixture_normalisation_covers_every_table_and_label(valkey, demos, client, make_episode, tmp_path):
    labelled = make_episode(length=2, state_dim=4, action_dim=2, frame_steps=(0, 1), frame_shape=(64, 64),
                            embodiment=demos, source="intervention")
    labelled.labels = np.full((2, 16, 2), 9.0, np.float32)
    client.write_episode("corrections", labelled)
    cfg = load_config("smoke", ["replay.mixture={pretrain: 0.5, corrections: 0.5}"])
    learner = Learner(LearnerSettings.of(cfg), str(tmp_path), ReplayClient(valkey.url))
    try:
        assert learner.fit_mixture_normalization() == [demos]
        assert learner.model.action_max[embodiment_id(demos), :2].tolist() == [9.0, 9.0]
    finally:
        learner.close()
    empty = Learner(LearnerSettings.of(load_config("smoke", ["replay.mixture={rollouts: 1.0}"])),
                    str(tmp_path / "e"), ReplayClient(valkey.url))
    try:
        with pytest.raises(EmptyReplayError, match=r"replay tables \['rollouts'\].*ingest a dataset first"):
            empty.fit_mixture_normalization()
    finally:
        empty.close()
