"""System 1's denoiser: GR00T N1's cross-attention DiT.

Blocks alternate between cross-attention from the state+action tokens to the
vision-language tokens (even blocks) and self-attention over the state+action tokens
(odd blocks). Each block is conditioned on the flow time through AdaLayerNorm, and the
output through a shift/scale projection. Module names follow GR00T's released DiT.
"""

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

TIMESTEP_PROJ_DIM = 256
"""Width of the sinusoidal timestep code fed to timestep_embedder.linear_1."""


class DiTConfig(BaseModel):
    """Sizes of the DiT; inner width = num_heads * head_dim."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    num_layers: int = Field(gt=0)
    """Number of transformer blocks (even: cross-attention, odd: self-attention)."""
    num_heads: int = Field(gt=0)
    """Attention heads per block."""
    head_dim: int = Field(gt=0)
    """Width of one attention head."""
    output_dim: int = Field(gt=0)
    """Width of the DiT output tokens (proj_out_2), input of the action decoder."""
    ff_mult: int = Field(default=4, gt=0)
    """Feed-forward inner width as a multiple of the inner width."""
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    """Dropout on attention outputs and in the feed-forward (GR00T N1 uses 0.2)."""
    norm_eps: float = Field(default=1e-5, gt=0.0)
    """Epsilon of the block layer norms."""

    @property
    def inner_dim(self) -> int:
        """Derived: token width inside the DiT, num_heads * head_dim."""
        return self.num_heads * self.head_dim

    @model_validator(mode="after")
    def _check_head_dim(self) -> "DiTConfig":
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even, got head_dim={self.head_dim}")
        return self


def timestep_sinusoid(timesteps: torch.Tensor, dim: int = TIMESTEP_PROJ_DIM) -> torch.Tensor:
    """diffusers' Timesteps(flip_sin_to_cos=True, downscale_freq_shift=1): (B,) -> (B, dim) [cos, sin]."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / (half - 1)
    angles = timesteps.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimestepEncoder(nn.Module):
    """Timestep buckets (B,) long -> embedding (B, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(TIMESTEP_PROJ_DIM, dim)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.timestep_embedder(timestep_sinusoid(timesteps))


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, scaled and shifted by a projection of the timestep embedding."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), temb (B, D) -> (B, T, D)."""
        scale, shift = self.linear(F.silu(temb)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention with biased projections; self-attention when no context is given."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        inner = num_heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(dropout)])

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, T, D), context (B, L, D) or None, context_mask (B, L) bool (True = attend) -> (B, T, D)."""
        source = x if context is None else context
        batch = x.shape[0]
        q, k, v = (
            proj(inp).view(batch, inp.shape[1], self.num_heads, -1).transpose(1, 2)
            for proj, inp in ((self.to_q, x), (self.to_k, source), (self.to_v, source))
        )
        mask = None if context_mask is None else context_mask[:, None, None, :].bool()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, x.shape[1], -1)
        return self.to_out[1](self.to_out[0](out))


class GELUProj(nn.Module):
    """Linear `proj` followed by tanh-approximated GELU."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """net = [GELUProj(D -> inner), Dropout, Linear(inner -> D), Dropout]."""

    def __init__(self, dim: int, inner_dim: int, dropout: float):
        super().__init__()
        self.net = nn.ModuleList(
            [GELUProj(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim), nn.Dropout(dropout)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """x += attn1(norm1(x, temb)[, context]); x += ff(norm3(x))."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        dim = config.inner_dim
        self.norm1 = AdaLayerNorm(dim, config.norm_eps)
        self.attn1 = Attention(dim, config.num_heads, config.head_dim, config.dropout)
        self.final_dropout = nn.Dropout(config.dropout)
        self.norm3 = nn.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=False)
        self.ff = FeedForward(dim, config.ff_mult * dim, config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        temb: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, D), temb (B, D), context (B, L, D) or None for self-attention -> (B, T, D)."""
        x = x + self.final_dropout(self.attn1(self.norm1(x, temb), context, context_mask))
        return x + self.ff(self.norm3(x))


class DiT(nn.Module):
    """Diffusion transformer over state+action tokens, conditioned on vision-language tokens."""

    config_class = DiTConfig

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        dim = config.inner_dim
        self.timestep_encoder = TimestepEncoder(dim)
        self.transformer_blocks = nn.ModuleList(BasicTransformerBlock(config) for _ in range(config.num_layers))
        self.norm_out = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.proj_out_1 = nn.Linear(dim, 2 * dim)
        self.proj_out_2 = nn.Linear(dim, config.output_dim)
        self.gradient_checkpointing = False
        """Recompute each block's activations in the backward pass (train mode only)."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoise one step.

        Args:
            hidden_states: (B, T, D) state+action tokens.
            encoder_hidden_states: (B, L, D) vision-language tokens.
            timestep: (B,) long timestep buckets.
            encoder_attention_mask: (B, L) bool, True on real vision-language tokens.

        Returns:
            (B, T, output_dim).
        """
        temb = self.timestep_encoder(timestep)
        x = hidden_states
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for idx, block in enumerate(self.transformer_blocks):
            args = (x, temb) if idx % 2 == 1 else (x, temb, encoder_hidden_states, encoder_attention_mask)
            x = checkpoint(block, *args, use_reentrant=False) if recompute else block(*args)
        shift, scale = self.proj_out_1(F.silu(temb)).chunk(2, dim=1)
        x = self.norm_out(x) * (1 + scale[:, None]) + shift[:, None]
        return self.proj_out_2(x)
