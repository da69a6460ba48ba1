"""DualSystemPolicy: training loss, acting, normalisation, masking, embodiments."""


import numpy as np
import pytest
import torch

from fleetloop.system import DualSystemPolicy
from fleetloop.system.normalization import collapse_narrow_ranges, varies_across_episodes


def test_tiny_preset_stays_small_enough_for_cpu(model: DualSystemPolicy):
    # Its speed is measured by bench/inference.py, not asserted here.
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


def test_forward_loss_is_finite(model: DualSystemPolicy, batch, register_stats):
    register_stats(model)
    out = model(batch)
    assert set(out) == {"loss"} and out["loss"].shape == () and torch.isfinite(out["loss"])


def test_get_action_shape_and_determinism(model: DualSystemPolicy, batch, register_stats):
    register_stats(model)
    model.eval()
    first = model.get_action(batch, generator=torch.Generator().manual_seed(7))
    second = model.get_action(batch, generator=torch.Generator().manual_seed(7))
    other = model.get_action(batch, generator=torch.Generator().manual_seed(8))
    assert first.shape == (4, 16, 32) and not first.requires_grad
    assert torch.equal(first, second) and not torch.equal(first, other)
    assert (first[..., 5:] == 0).all()


def test_cached_vision_language_tokens(model: DualSystemPolicy, batch):
    model.eval()
    vl = model.encode_vision_language(batch)
    assert vl[0].shape == (4, 16 + 48, 128) and vl[1].shape == (4, 64)
    fresh = model.get_action(batch, generator=torch.Generator().manual_seed(0))
    cached = model.get_action(batch, vl=vl, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fresh, cached)


def test_dims_that_only_jitter_normalise_to_zero(model: DualSystemPolicy):
    low, high = collapse_narrow_ranges(np.array([0.0, 1.0, -2.0]), np.array([1e-4, 3.0, -2.0]), min_range=0.01)
    np.testing.assert_allclose(low, [5e-5, 1.0, -2.0])
    np.testing.assert_allclose(high, [5e-5, 3.0, -2.0])
    model.set_normalization(3, low, high, [-1, 0, 4], [1, 10, 4])
    state = torch.tensor([[3e-4, 2.0, -2.0] + [0.0] * 61])  # a new episode's jitter, past the old range
    mask = torch.zeros(1, 64, dtype=torch.bool)
    mask[0, :3] = True
    torch.testing.assert_close(model.normalize_state(state, mask, torch.tensor([3]))[0, :3],
                               torch.tensor([0.0, 0.0, 0.0]))


def test_a_narrow_dim_that_tells_episodes_apart_is_kept():
    # dim 0: a target's x, constant in each episode, 8 mm apart between them; dim 1: a held joint's jitter
    keep = varies_across_episodes(mean_min=np.array([0.380, 0.50000]), mean_max=np.array([0.388, 0.50002]),
                                  within_max=np.array([0.0, 1e-4]), min_range=0.01)
    assert keep.tolist() == [True, False]
    low, high = collapse_narrow_ranges(np.array([0.380, 0.49995]), np.array([0.388, 0.50008]), 0.01, keep)
    np.testing.assert_allclose(low, [0.380, 0.500015])
    np.testing.assert_allclose(high, [0.388, 0.500015])
    assert not varies_across_episodes(np.array([0.0]), np.array([5e-5]), np.array([0.0]), 0.01).any(), \
        "a spread under 1 % of min_range is noise, even between constant episodes"


def test_min_max_normalization_in_the_model(model: DualSystemPolicy):
    model.set_normalization(3, [0, 0], [1, 2], [-1, 0, 4], [1, 10, 4])
    ids = torch.tensor([3])
    action = torch.zeros(1, 16, 32)
    action[..., :3] = torch.tensor([0.5, 7.5, 4.0])
    mask = torch.zeros(1, 16, 32, dtype=torch.bool)
    mask[..., :3] = True
    normed = model.normalize_action(action, mask, ids)
    torch.testing.assert_close(normed[0, 0, :3], torch.tensor([0.5, 0.5, 0.0]))
    restored = model.unnormalize_action(normed, ids)
    torch.testing.assert_close(restored[..., :2], action[..., :2])
    assert (restored[..., 2] == 4.0).all() and (restored[..., 3:] == 0).all()
    state = torch.zeros(1, 64)
    state[0, :2] = torch.tensor([0.25, 2.0])
    state[0, 5] = 9.0
    state_mask = torch.zeros(1, 64, dtype=torch.bool)
    state_mask[0, :2] = True
    normed_state = model.normalize_state(state, state_mask, ids)
    torch.testing.assert_close(normed_state[0, :2], torch.tensor([-0.5, 1.0]))
    assert (normed_state[0, 2:] == 0).all()


def test_statistics_are_persistent_buffers(model: DualSystemPolicy, register_stats):
    register_stats(model)
    state = model.state_dict()
    for name in ("state_min", "state_max", "action_min", "action_max", "state_dim", "action_dim"):
        assert name in state
    assert state["state_min"].shape == (32, 64) and state["action_max"].shape == (32, 32)
    assert state["action_dim"][31] == 5 and state["state_dim"][31] == 7


def test_loss_ignores_padded_action_dims(model: DualSystemPolicy, batch, register_stats):
    register_stats(model)
    torch.manual_seed(5)
    reference = model(batch)["loss"]
    changed = dict(batch, action=batch["action"].clone(), state=batch["state"].clone())
    changed["action"][..., 5:] = 123.0
    changed["state"][:, 7:] = -50.0
    torch.manual_seed(5)
    assert torch.equal(model(changed)["loss"], reference)
    changed["action"][..., 0] += 0.5
    torch.manual_seed(5)
    assert not torch.equal(model(changed)["loss"], reference)


def test_embodiments_use_their_own_slices(model: DualSystemPolicy, batch):
    model.eval()
    other = dict(batch, embodiment_id=torch.full_like(batch["embodiment_id"], 24))
    first = model.get_action(batch, generator=torch.Generator().manual_seed(0))
    second = model.get_action(other, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(first, second)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"embodiment_id": 32}, "embodiment_id: expected 0..31, got 32", id="id"),
        pytest.param({"state_min": np.zeros(65)}, "state_min: expected a vector of 1..64 dims", id="state-dim"),
        pytest.param({"action_max": np.ones(33)}, "action_max: expected a vector of 1..32 dims", id="action-dim"),
        pytest.param({"action_min": [0.0, np.nan]}, "action_min: values must be finite", id="nan"),
        pytest.param({"state_max": [1.0]}, "state_min has 2 dims but state_max has 1", id="mismatch"),
        pytest.param({"state_min": [0.0, 5.0]}, r"state_min exceeds state_max at dims \[1\]", id="order"),
    ],
)
def test_set_normalization_rejects(model: DualSystemPolicy, kwargs, message):
    args = {"embodiment_id": 1, "state_min": [0.0, 0.0], "state_max": [1.0, 1.0]}
    args |= {"action_min": [0.0], "action_max": [1.0]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        model.set_normalization(**args)


def test_bad_batches_name_the_field(model: DualSystemPolicy, batch):
    with pytest.raises(ValueError, match=r"missing keys \['action'\]"):
        model({k: v for k, v in batch.items() if k != "action"})
    with pytest.raises(ValueError, match=r"state: expected shape \(4, 64\), got \(4, 7\)"):
        model.get_action(dict(batch, state=batch["state"][:, :7]))
    with pytest.raises(ValueError, match=r"action: expected shape \(4, 16, 32\), got \(4, 8, 32\)"):
        model(dict(batch, action=batch["action"][:, :8]))
    with pytest.raises(ValueError, match=r"embodiment_id: values must be in \[0, 32\)"):
        model.get_action(dict(batch, embodiment_id=torch.full((4,), 40)))
