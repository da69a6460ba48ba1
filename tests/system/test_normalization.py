"""Normalisation modes, the statistics API and statistics inside the model."""

import numpy as np
import pytest
import torch

from fleetloop.system import DualSystemPolicy, Statistics
from fleetloop.system.embodiment import NORM_MODES
from fleetloop.system.normalization import normalize, unnormalize


def _stats(mode: str, **values: list[float]) -> dict[str, torch.Tensor]:
    base = {"min": [-1.0, 0.0], "max": [3.0, 0.0], "q01": [-1.0, 0.0], "q99": [3.0, 0.0],
            "mean": [1.0, 0.0], "std": [2.0, 0.0]} | values
    stats = {name: torch.tensor(row) for name, row in base.items()}
    stats["mode"] = torch.full((2,), NORM_MODES.index(mode))
    return stats


@pytest.mark.parametrize(
    ("mode", "x", "expected"),
    [
        pytest.param("min_max", [[1.0, 0.0], [3.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]], id="min_max"),
        pytest.param("q99", [[1.0, 0.0], [-1.0, 0.0]], [[0.0, 0.0], [-1.0, 0.0]], id="q99"),
        pytest.param("mean_std", [[1.0, 0.0], [5.0, 0.0]], [[0.0, 0.0], [2.0, 0.0]], id="mean_std"),
        pytest.param("binary", [[1.0, 0.0], [0.0, 1.0]], [[1.0, -1.0], [-1.0, 1.0]], id="binary"),
    ],
)
def test_every_mode_round_trips(mode: str, x, expected):
    """The second dim is constant (max == min, q99 == q01, std == 0): it maps to 0, except binary."""
    stats = _stats(mode)
    x = torch.tensor(x)
    normed = normalize(x, stats)
    torch.testing.assert_close(normed, torch.tensor(expected))
    restored = unnormalize(normed, stats)
    if mode == "binary":
        torch.testing.assert_close(restored, x)
    else:
        torch.testing.assert_close(restored[:, 0], x[:, 0])


def test_q99_clips_outliers():
    stats = _stats("q99")
    torch.testing.assert_close(normalize(torch.tensor([[10.0, 0.0]]), stats), torch.tensor([[1.0, 0.0]]))


def test_random_round_trips_per_mode_in_the_model(model: DualSystemPolicy):
    rng = np.random.default_rng(0)
    states = rng.normal(2.0, 3.0, size=(500, 4))
    actions = rng.normal(-1.0, 0.5, size=(500, 16, 4))
    actions[..., 3] = rng.integers(0, 2, size=(500, 16))
    model.set_statistics(
        5,
        state=Statistics.of(states, ["min_max", "q99", "mean_std", "min_max"]),
        action=Statistics.of(actions, ["mean_std", "min_max", "q99", "binary"]),
    )
    assert model.state_dim[5] == 4 and model.action_dim[5] == 4
    assert model.action_mode[5, :4].tolist() == [2, 0, 1, 3] and (model.action_mode[5, 4:] == 0).all()
    ids = torch.tensor([5])
    action = torch.zeros(1, 16, 32)
    action[0, :, :4] = torch.from_numpy(actions[0]).float()
    action[0, :, 2] = action[0, :, 2].clamp(model.action_q01[5, 2], model.action_q99[5, 2])
    mask = torch.zeros(1, 16, 32, dtype=torch.bool)
    mask[..., :4] = True
    normed = model.normalize_action(action, mask, ids)
    assert normed[..., :2].abs().max() <= 5 and normed[..., 2].abs().max() <= 1
    torch.testing.assert_close(model.unnormalize_action(normed, ids), action, atol=1e-5, rtol=1e-5)


def test_statistics_of_computes_every_stat():
    values = np.arange(101.0)[:, None]
    stats = Statistics.of(values, "q99")
    assert stats.min[0] == 0 and stats.max[0] == 100 and stats.mean[0] == 50
    assert stats.q01[0] == pytest.approx(1.0) and stats.q99[0] == pytest.approx(99.0)
    assert stats.std[0] == pytest.approx(values.std())


def test_raw_layout_statistics_are_selected(model: DualSystemPolicy):
    """gr1 statistics may cover its raw 44-dim vectors; the model keeps its 26 action dims."""
    low, high = np.arange(44.0), np.arange(44.0) + 1
    model.set_normalization(24, low, high, low, high)
    assert model.state_dim[24] == 44 and model.action_dim[24] == 26
    np.testing.assert_array_equal(model.action_min[24, :26].numpy(), np.r_[0:13, 22:35])
    with pytest.raises(ValueError, match=r"expected 26 \(model\) or 44 \(raw\) dims for embodiment 'gr1', got 5"):
        model.set_normalization(24, low, high, low[:5], high[:5])


@pytest.mark.parametrize(
    ("state", "message"),
    [
        pytest.param(Statistics("q99", min=[0.0], max=[1.0]), r"'q99' needs \['state_q01', 'state_q99'\]", id="need"),
        pytest.param(Statistics("log", min=[0.0], max=[1.0]), "state modes: expected 1 modes", id="unknown-mode"),
        pytest.param(Statistics(["min_max"] * 2, min=[0.0], max=[1.0]), "state modes: expected 1 modes", id="count"),
        pytest.param(Statistics("q99", q01=[2.0], q99=[1.0]), r"state_q01 exceeds state_q99 at dims \[0\]", id="order"),
        pytest.param(Statistics("mean_std", mean=[0.0], std=[-1.0]), "state_std: must be >= 0", id="std"),
        pytest.param(Statistics("binary"), "state: no statistics given", id="empty"),
    ],
)
def test_set_statistics_rejects(model: DualSystemPolicy, state: Statistics, message: str):
    with pytest.raises(ValueError, match=message):
        model.set_statistics(1, state=state, action=Statistics(min=[0.0], max=[1.0]))
