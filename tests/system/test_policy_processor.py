"""Processor batching and the Policy inference wrapper."""

import numpy as np
import pytest
import torch

from fleetloop.system import Policy, Processor


def test_collate_builds_padded_batch(processor: Processor, samples: list[dict]):
    batch = processor.collate(samples)
    assert batch["pixel_values"].shape == (4, 3, 64, 64) and batch["pixel_values"].dtype == torch.float32
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (4, 48)
    assert batch["state"].shape == batch["state_mask"].shape == (4, 64)
    assert batch["state_mask"][:, :7].all() and not batch["state_mask"][:, 7:].any()
    torch.testing.assert_close(batch["state"][0, :7], torch.from_numpy(samples[0]["state"]))
    assert (batch["state"][:, 7:] == 0).all()
    assert batch["action"].shape == batch["action_mask"].shape == (4, 16, 32)
    assert batch["action_mask"][..., :5].all() and not batch["action_mask"][..., 5:].any()
    assert batch["embodiment_id"].tolist() == [31] * 4 and batch["embodiment_id"].dtype == torch.long


def test_padded_steps_are_left_out_of_the_action_mask(processor: Processor, make_sample):
    rng = np.random.default_rng(0)
    padded = make_sample(rng, action_is_pad=np.arange(16) >= 5)
    batch = processor.collate([padded, make_sample(rng)])
    assert batch["action_mask"][0, :5, :5].all() and not batch["action_mask"][0, 5:].any()
    assert batch["action_mask"][1, :, :5].all()


@pytest.mark.parametrize(
    ("is_pad", "message"),
    [
        pytest.param(np.zeros(16), "expected a bool array of shape", id="dtype"),
        pytest.param(np.zeros(8, dtype=bool), r"expected a bool array of shape \(16,\)", id="shape"),
        pytest.param(np.ones(16, dtype=bool), "the first step of a window must be real", id="all-padding"),
    ],
)
def test_collate_rejects_bad_padding_marks(processor: Processor, make_sample, is_pad, message):
    with pytest.raises(ValueError, match=f"action_is_pad: {message}"):
        processor.collate([make_sample(np.random.default_rng(0), action_is_pad=is_pad)])


def test_sample_weights_are_collated_and_checked(processor: Processor, make_sample):
    rng = np.random.default_rng(0)
    batch = processor.collate([make_sample(rng, weight=0.0), make_sample(rng, weight=2.5)])
    assert batch["sample_weight"].tolist() == [0.0, 2.5]
    assert "sample_weight" not in processor.collate([make_sample(rng)])
    with pytest.raises(ValueError, match="weight: present in some samples but not in others"):
        processor.collate([make_sample(rng, weight=1.0), make_sample(rng)])
    with pytest.raises(ValueError, match="weight: expected finite weights >= 0"):
        processor.collate([make_sample(rng, weight=-1.0)])


def test_inference_samples_have_no_action(processor: Processor, make_sample):
    batch = processor.collate([make_sample(np.random.default_rng(0), with_action=False)])
    assert "action" not in batch and "action_mask" not in batch


def test_image_normalisation_and_resize(processor: Processor):
    white = processor.image_to_tensor(np.full((64, 64, 3), 255, dtype=np.uint8))
    torch.testing.assert_close(white, torch.ones(3, 64, 64))
    resized = processor.image_to_tensor(np.zeros((120, 30, 3), dtype=np.uint8))
    torch.testing.assert_close(resized, -torch.ones(3, 64, 64))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"state": np.array([0.0, np.nan])}, "state: contains NaN or inf", id="state-nan"),
        pytest.param({"action": np.full((16, 3), np.inf)}, "action: contains NaN or inf", id="action-inf"),
        pytest.param({"state": np.zeros(65)}, "state: 65 dims exceed max_state_dim=64", id="state-dim"),
        pytest.param({"action": np.zeros((16, 33))}, "action: 33 dims exceed max_action_dim=32", id="action-dim"),
        pytest.param({"action": np.zeros((8, 3))}, "action: expected horizon 16, got 8", id="horizon"),
        pytest.param({"image": np.zeros((8, 8, 3), dtype=np.float32)}, "image: expected an", id="image-dtype"),
        pytest.param({"embodiment_id": 32}, r"embodiment_id: expected an int in \[0, 32\)", id="embodiment"),
        pytest.param({"instruction": None}, "instruction: expected str", id="instruction"),
    ],
)
def test_collate_rejects_bad_samples(processor: Processor, make_sample, overrides, message):
    with pytest.raises(ValueError, match=message):
        processor.collate([make_sample(np.random.default_rng(0), **overrides)])


def test_collate_rejects_missing_keys_and_mixed_actions(processor: Processor, make_sample):
    rng = np.random.default_rng(0)
    sample = make_sample(rng)
    del sample["state"]
    with pytest.raises(ValueError, match=r"missing keys \['state'\]"):
        processor.collate([sample])
    with pytest.raises(ValueError, match="action: present in some samples"):
        processor.collate([make_sample(rng), make_sample(rng, with_action=False)])


def test_policy_act(model, register_stats, make_sample):
    register_stats(model)
    observation = make_sample(np.random.default_rng(0), with_action=False)
    first = Policy(model, seed=3).act(observation)
    assert first.shape == (16, 5) and first.dtype == np.float32
    np.testing.assert_array_equal(first, Policy(model, seed=3).act(observation))


def test_policy_reuses_cached_vision_language(model, register_stats, make_sample):
    register_stats(model)
    rng = np.random.default_rng(0)
    first, second = make_sample(rng, with_action=False), make_sample(rng, with_action=False)
    policy = Policy(model, seed=0)
    policy.act(first)
    reused = policy.act(second, refresh_vl=False)
    reference = Policy(model, seed=0)
    reference.act(first)
    batch = reference.processor.collate([second])
    vl = model.encode_vision_language(reference.processor.collate([first]))
    expected = model.get_action(batch, vl=vl, generator=reference.generator)
    np.testing.assert_allclose(reused, expected[0, :, :5].numpy())


def test_policy_needs_statistics(model, make_sample):
    with pytest.raises(ValueError, match="embodiment_id: 31 has no statistics"):
        Policy(model).act(make_sample(np.random.default_rng(0), with_action=False))
