"""System 1's DiT: shapes, masking and the cross/self-attention interleave."""

import pytest
import torch

from fleetloop.system import DiT, DiTConfig
from fleetloop.system.dit import timestep_sinusoid


@pytest.fixture
def dit() -> DiT:
    torch.manual_seed(0)
    return DiT(DiTConfig(num_layers=4, num_heads=4, head_dim=8, output_dim=24, dropout=0.0)).eval()


def test_timestep_sinusoid():
    code = timestep_sinusoid(torch.tensor([0, 10, 999]))
    assert code.shape == (3, 256)
    torch.testing.assert_close(code[0], torch.cat([torch.ones(128), torch.zeros(128)]))


def test_output_shape(dit: DiT):
    out = dit(torch.randn(2, 17, 32), torch.randn(2, 9, 32), torch.tensor([0, 999]))
    assert out.shape == (2, 17, 24)


def test_masked_context_tokens_are_ignored(dit: DiT):
    x, context, t = torch.randn(2, 17, 32), torch.randn(2, 9, 32), torch.tensor([3, 700])
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[:, 6:] = False
    changed = context.clone()
    changed[:, 6:] += 5.0
    torch.testing.assert_close(dit(x, context, t, mask), dit(x, changed, t, mask))
    assert not torch.allclose(dit(x, context, t), dit(x, changed, t))


def test_even_blocks_cross_attend_odd_blocks_self_attend(dit: DiT):
    x, temb = torch.randn(1, 5, 32), torch.randn(1, 32)
    context = torch.randn(1, 9, 32)
    even, odd = dit.transformer_blocks[0], dit.transformer_blocks[1]
    assert not torch.allclose(even(x, temb, context), even(x, temb, context + 1.0))
    assert odd(x, temb).shape == x.shape


def test_timestep_conditions_output(dit: DiT):
    x, context = torch.randn(1, 5, 32), torch.randn(1, 9, 32)
    assert not torch.allclose(dit(x, context, torch.tensor([0])), dit(x, context, torch.tensor([500])))
