"""GR00T N1's category-specific layers: one weight slice per embodiment slot.

Every layer keeps a slice per slot (an integer id < max_num_embodiments) and picks it per
sample by `embodiment_id`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class CategorySpecificLinear(nn.Module):
    """Linear layer with one weight slice per embodiment: y = x @ W[id] + b[id].

    W is [num_categories, in_dim, out_dim] and b is [num_categories, out_dim], as in GR00T.
    """

    def __init__(self, num_categories: int, in_dim: int, out_dim: int):
        super().__init__()
        # LeCun-normal (std 1/sqrt(in_dim)) rather than GR00T's 0.02: converted checkpoints overwrite
        # it anyway, and from scratch (tiny) the 0.02 layers shrink the state and the noisy actions
        # so far below the position and timestep codes that the model did not learn even an
        # identity mapping in 1,000 steps (docs/improvement.md).
        self.W = nn.Parameter(torch.randn(num_categories, in_dim, out_dim) / math.sqrt(in_dim))
        self.b = nn.Parameter(torch.zeros(num_categories, out_dim))

    def forward(self, x: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
        """x (B, T, in_dim), category_ids (B,) long -> (B, T, out_dim)."""
        return torch.bmm(x, self.W[category_ids]) + self.b[category_ids].unsqueeze(1)


class CategorySpecificMLP(nn.Module):
    """Two category-specific linear layers with a ReLU between them."""

    def __init__(self, num_categories: int, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.layer1 = CategorySpecificLinear(num_categories, in_dim, hidden_dim)
        self.layer2 = CategorySpecificLinear(num_categories, hidden_dim, out_dim)

    def forward(self, x: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
        """x (B, T, in_dim), category_ids (B,) -> (B, T, out_dim)."""
        return self.layer2(F.relu(self.layer1(x, category_ids)), category_ids)


def sinusoidal_encoding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """GR00T's action-encoder timestep code: timesteps (B, T) -> (B, T, dim), [sin, cos]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    angles = timesteps.float().unsqueeze(-1) * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class MultiEmbodimentActionEncoder(nn.Module):
    """Noisy action chunk + discretised flow time -> action tokens, per embodiment.

    W3(swish(W2([W1(a), sinusoid(t)]))), with W1: action_dim -> E, W2: 2E -> E, W3: E -> E.
    """

    def __init__(self, action_dim: int, hidden_size: int, num_embodiments: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.W1 = CategorySpecificLinear(num_embodiments, action_dim, hidden_size)
        self.W2 = CategorySpecificLinear(num_embodiments, 2 * hidden_size, hidden_size)
        self.W3 = CategorySpecificLinear(num_embodiments, hidden_size, hidden_size)

    def forward(self, actions: torch.Tensor, timesteps: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
        """actions (B, H, action_dim), timesteps (B,) long buckets, category_ids (B,) -> (B, H, E).

        Raises:
            ValueError: if timesteps is not (B,).
        """
        batch, horizon, _ = actions.shape
        if timesteps.shape != (batch,):
            raise ValueError(f"timesteps: expected shape ({batch},), got {tuple(timesteps.shape)}")
        a_emb = self.W1(actions, category_ids)
        tau_emb = sinusoidal_encoding(timesteps.unsqueeze(1).expand(-1, horizon), self.hidden_size).to(a_emb.dtype)
        x = F.silu(self.W2(torch.cat([a_emb, tau_emb], dim=-1), category_ids))
        return self.W3(x, category_ids)
