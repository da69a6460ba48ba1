"""Policy.act: System 2 caching schedule, K override, reset, layouts and bad observations."""

import numpy as np
import pytest
import torch

from fleetloop.system import DualSystemPolicy, Policy


def _observation(rng: np.random.Generator, **overrides) -> dict:
    observation = {
        "image": rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8),
        "state": rng.uniform(-1, 1, size=4).astype(np.float32),
        "instruction": "reach the red ball",
        "embodiment_id": "sim_arm",
    }
    return observation | overrides


@pytest.fixture
def sim_arm_model(model: DualSystemPolicy) -> DualSystemPolicy:
    model.set_normalization(30, np.full(4, -3.0), np.full(4, 3.0), np.array([-2.0, -2.5]), np.array([2.0, 2.5]))
    return model


def test_cached_system2_gives_the_same_actions_as_recomputing(sim_arm_model, monkeypatch):
    observation = _observation(np.random.default_rng(0))
    fresh = Policy(sim_arm_model, seed=5, system2_every=1)
    cached = Policy(sim_arm_model, seed=5, system2_every=3)
    runs = []
    encode = sim_arm_model.encode_vision_language
    monkeypatch.setattr(sim_arm_model, "encode_vision_language", lambda batch: runs.append(1) or encode(batch))
    expected = [fresh.act(observation) for _ in range(3)]
    assert len(runs) == 3
    got = [cached.act(observation) for _ in range(3)]
    assert len(runs) == 4, "System 2 ran once for three cached calls"
    for want, have in zip(expected, got):
        np.testing.assert_array_equal(have, want)
        assert have.shape == (16, 2) and have.dtype == np.float32


def test_schedule_refreshes_every_n_calls_and_on_new_instruction_and_reset(sim_arm_model, monkeypatch):
    runs = []
    encode = sim_arm_model.encode_vision_language
    monkeypatch.setattr(sim_arm_model, "encode_vision_language", lambda batch: runs.append(1) or encode(batch))
    policy = Policy(sim_arm_model, seed=0, system2_every=2)
    observation = _observation(np.random.default_rng(0))
    for _ in range(4):
        policy.act(observation)
    assert len(runs) == 2
    policy.act(observation | {"instruction": "reach the blue ball"})
    assert len(runs) == 3
    policy.act(observation, refresh_vl=False)
    assert len(runs) == 3
    policy.reset()
    policy.act(observation, refresh_vl=False)
    assert len(runs) == 4, "reset drops the cache"


def test_num_inference_steps_overrides_the_preset(sim_arm_model):
    observation = _observation(np.random.default_rng(1))
    one_step = Policy(sim_arm_model, seed=2, num_inference_steps=1).act(observation)
    default = Policy(sim_arm_model, seed=2).act(observation)
    assert not np.allclose(one_step, default)
    batch = Policy(sim_arm_model).processor.collate([observation])
    expected = sim_arm_model.get_action(batch, generator=torch.Generator().manual_seed(2), num_steps=1)
    np.testing.assert_array_equal(one_step, expected[0, :, :2].numpy())


def test_gr1_observation_uses_its_layout(model: DualSystemPolicy):
    low, high = -np.ones(44), np.ones(44)
    model.set_normalization(24, low, high, low, high)
    rng = np.random.default_rng(0)
    chunk = Policy(model, seed=0).act(_observation(rng, state=rng.uniform(-1, 1, 44), embodiment_id="gr1"))
    assert chunk.shape == (16, 26)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"image": None}, r"missing keys \['image'\]; expected \{'image': '\(h, w, 3\) uint8'\}", id="cam"),
        pytest.param({"state": np.zeros(7)}, r"state: expected shape \(4,\) for embodiment 'sim_arm', got \(7"),
        pytest.param({"embodiment_id": "robot_x"}, "unknown embodiment tag 'robot_x'", id="unknown-tag"),
        pytest.param({"image": np.zeros((64, 64), dtype=np.uint8)}, r"image: expected an \(h, w, 3\) uint8", id="grey"),
    ],
)
def test_bad_observations(sim_arm_model, overrides, message):
    observation = {k: v for k, v in _observation(np.random.default_rng(0), **overrides).items() if v is not None}
    with pytest.raises(ValueError, match=message):
        Policy(sim_arm_model).act(observation)


def test_bad_policy_settings(sim_arm_model):
    with pytest.raises(ValueError, match="num_inference_steps: expected >= 1, got 0"):
        Policy(sim_arm_model, num_inference_steps=0)
    with pytest.raises(ValueError, match="system2_every: expected >= 1, got 0"):
        Policy(sim_arm_model, system2_every=0)


def test_state_length_checked_against_statistics_without_layout(model: DualSystemPolicy, register_stats, make_sample):
    register_stats(model)
    observation = make_sample(np.random.default_rng(0), with_action=False, state=np.zeros(6))
    message = r"state: expected shape \(7,\) for embodiment 31 \(its statistics\), got \(6,\)"
    with pytest.raises(ValueError, match=message):
        Policy(model).act(observation)
