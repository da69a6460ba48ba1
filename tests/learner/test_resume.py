"""Checkpoint and resume: a resumed learner continues exactly where the saved one stood."""

import json

import pytest

from fleetloop.config import load_config
from fleetloop.learner.learner import PUBLISHED_RECORD, Learner, ResumeError
from fleetloop.learner.settings import LearnerSettings
from fleetloop.replay import ReplayClient

OVERRIDES = ["learner.batch_size=4", "learner.publish_every=2", "learner.checkpoint_every=4",
             "learner.warmup_steps=2", "learner.keep_checkpoints=1"]


def _learner(cfg, run_dir, url, demos, resume=False):
    learner = Learner(LearnerSettings.of(cfg), str(run_dir), ReplayClient(url), resume=resume)
    if not resume:
        learner.fit_normalization("pretrain", demos)
    return learner


def test_resume_continues_step_optimizer_sampler_and_version(valkey, demos, tmp_path):
    cfg = load_config("smoke", OVERRIDES)
    straight = _learner(cfg, tmp_path / "straight", valkey.url, demos)
    try:
        expected = straight.train(8)["losses"]
    finally:
        straight.close()

    crashed = _learner(cfg, tmp_path / "run", valkey.url, demos)
    try:
        crashed.train(6)  # checkpoint at step 4 (version 2); version 3 published at step 6, then lost
        digest = crashed.published_digest(3)
    finally:
        crashed.close()
    record = json.loads((tmp_path / "run/checkpoints" / PUBLISHED_RECORD).read_text())
    assert record == {"version": 3, "step": 6, "digest": digest}

    resumed = _learner(cfg, tmp_path / "run", valkey.url, demos, resume=True)
    try:
        assert (resumed.step, resumed.resumed_from) == (4, 4)
        assert resumed.version == 3, "the version continues from the newest published, never going back"
        assert resumed.published_digest(3) == digest, "what actors may still run stays checkable"
        assert resumed.engine.global_steps == 4
        assert resumed.engine.get_lr()[0] == pytest.approx(straight_lr_at(cfg, 4))
        result = resumed.train(4)
    finally:
        resumed.close()
    # Same batches, same flow-matching draws, same optimizer moments: the same losses.
    assert result["losses"] == pytest.approx(expected[4:], rel=1e-5)
    assert result["version"] == 5
    kept = sorted(p.name for p in (tmp_path / "run/checkpoints/deepspeed").glob("step-*"))
    assert kept == ["step-0000008"], "keep_checkpoints=1 keeps only the newest"
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").glob("policy-*")) == ["policy-step-0000008.safetensors"]


def straight_lr_at(cfg, step):
    from fleetloop.learner.engine import warmup_cosine

    lcfg = cfg.learner
    return lcfg.lr * warmup_cosine(lcfg.warmup_steps, cfg.total_learner_steps, lcfg.min_lr_ratio)(step)


def test_resume_without_a_checkpoint_names_the_folder(valkey, demos, tmp_path):
    cfg = load_config("smoke", OVERRIDES)
    with pytest.raises(ResumeError, match=r"no checkpoint in .*checkpoints/deepspeed"):
        Learner(LearnerSettings.of(cfg), str(tmp_path / "empty"), ReplayClient(valkey.url), resume=True)
