"""System 1's flow-matching head: loss, sampling, time distribution, validation."""

import pytest
import torch

from fleetloop.system import ModelConfig
from fleetloop.system.action_head import FlowMatchingActionHead

B = 3


@pytest.fixture
def head(config: ModelConfig) -> FlowMatchingActionHead:
    torch.manual_seed(0)
    return FlowMatchingActionHead(config.action_head)


def inputs(length: int = 20) -> dict[str, torch.Tensor]:
    return {
        "vl_tokens": torch.randn(B, length, 128),
        "vl_mask": torch.ones(B, length, dtype=torch.bool),
        "state": torch.randn(B, 64),
        "embodiment_id": torch.tensor([24, 30, 31]),
    }


def test_loss_is_finite_scalar(head: FlowMatchingActionHead):
    action = torch.rand(B, 16, 32) * 2 - 1
    mask = torch.zeros(B, 16, 32, dtype=torch.bool)
    mask[..., :7] = True
    loss = head(**inputs(), action=action, action_mask=mask)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert head.action_decoder.layer2.W.grad[30].abs().sum() > 0
    assert head.action_decoder.layer2.W.grad[0].abs().sum() == 0


def test_get_action_shape_and_determinism(head: FlowMatchingActionHead):
    args = inputs()
    first = head.get_action(**args, generator=torch.Generator().manual_seed(3))
    second = head.get_action(**args, generator=torch.Generator().manual_seed(3))
    assert first.shape == (B, 16, 32) and torch.equal(first, second)


def test_time_distribution(head: FlowMatchingActionHead):
    torch.manual_seed(0)
    t = head.sample_time(20000, torch.device("cpu"))
    assert t.min() >= (0.999 - 1) / 0.999 and t.max() <= 1.0
    # u ~ Beta(1.5, 1) has mean 0.6, so t = (s - u) / s has mean (0.999 - 0.6) / 0.999.
    assert abs(t.mean().item() - 0.3994) < 0.01


@pytest.mark.parametrize(
    ("key", "shape", "message"),
    [
        pytest.param("state", (B, 32), r"state: expected shape \(3, 64\), got \(3, 32\)", id="state"),
        pytest.param("vl_tokens", (B, 20, 64), r"vl_tokens: expected shape \(\*, \*, 128\)", id="vl-width"),
        pytest.param("vl_mask", (B, 19), r"vl_mask: expected shape \(3, 20\)", id="vl-mask"),
        pytest.param("embodiment_id", (B, 1), r"embodiment_id: expected shape \(3,\)", id="ids"),
    ],
)
def test_bad_shapes(head: FlowMatchingActionHead, key: str, shape, message: str):
    args = inputs()
    args[key] = torch.zeros(shape, dtype=args[key].dtype)
    with pytest.raises(ValueError, match=message):
        head.get_action(**args)


def test_bad_action_shape_and_embodiment(head: FlowMatchingActionHead):
    with pytest.raises(ValueError, match=r"action: expected shape \(3, 16, 32\), got \(3, 8, 32\)"):
        head(**inputs(), action=torch.zeros(B, 8, 32), action_mask=torch.ones(B, 8, 32, dtype=torch.bool))
    args = inputs()
    args["embodiment_id"] = torch.tensor([0, 1, 32])
    with pytest.raises(ValueError, match=r"embodiment_id: values must be in \[0, 32\)"):
        head.get_action(**args)


def test_sample_weights_scale_each_samples_share_of_the_loss(head: FlowMatchingActionHead):
    action = torch.rand(B, 16, 32) * 2 - 1
    mask = torch.zeros(B, 16, 32, dtype=torch.bool)
    mask[..., :7] = True
    draws = {"noise": torch.randn(B, 16, 32), "t": torch.rand(B)}
    args = {**inputs(), "action": action, "action_mask": mask, **draws}
    per_sample = torch.stack([head(**{k: v[i:i + 1] for k, v in args.items()}) for i in range(B)])
    weights = torch.tensor([1.0, 0.0, 3.0])
    weighted = head(**args, sample_weight=weights)
    torch.testing.assert_close(weighted, (weights * per_sample).sum() / weights.sum())
    torch.testing.assert_close(head(**args, sample_weight=torch.ones(B)), head(**args))
    assert head(**args, sample_weight=torch.zeros(B)) == 0, "all weights zero: nothing to learn, no NaN"
    with pytest.raises(ValueError, match="sample_weight"):
        head(**args, sample_weight=torch.ones(B + 1))
