"""Category-specific layers: one weight slice per embodiment."""

import pytest
import torch

from fleetloop.system.category_layers import CategorySpecificLinear, CategorySpecificMLP, MultiEmbodimentActionEncoder


def test_category_specific_linear_uses_each_samples_slice():
    torch.manual_seed(0)
    layer = CategorySpecificLinear(4, 3, 5)
    torch.nn.init.normal_(layer.b)
    x = torch.randn(2, 6, 3)
    ids = torch.tensor([1, 3])
    out = layer(x, ids)
    assert layer.W.shape == (4, 3, 5) and layer.b.shape == (4, 5)
    for row, slot in enumerate(ids.tolist()):
        torch.testing.assert_close(out[row], x[row] @ layer.W[slot] + layer.b[slot])


def test_category_specific_mlp_shape():
    mlp = CategorySpecificMLP(4, 3, 8, 2)
    assert mlp(torch.randn(2, 1, 3), torch.tensor([0, 2])).shape == (2, 1, 2)


def test_action_encoder_shape_and_timestep_check():
    encoder = MultiEmbodimentActionEncoder(action_dim=6, hidden_size=16, num_embodiments=4)
    actions = torch.randn(3, 5, 6)
    ids = torch.tensor([0, 1, 3])
    assert encoder(actions, torch.tensor([0, 500, 999]), ids).shape == (3, 5, 16)
    with pytest.raises(ValueError, match=r"timesteps: expected shape \(3,\), got \(3, 5\)"):
        encoder(actions, torch.zeros(3, 5, dtype=torch.long), ids)
