"""System 1: the flow-matching action head of GR00T N1.

The head denoises a chunk of H actions conditioned on the vision-language tokens, the
robot state and the embodiment. Tokens fed to the DiT are [state token, H action tokens].

Flow matching (all values normalised to [-1, 1]):
    t = (s - u) / s, u ~ Beta(alpha, beta);  noisy = (1 - t) * eps + t * a
    target velocity = a - eps;  loss = MSE on the real action dims only
    timestep bucket = floor(t * num_timestep_buckets)
Inference integrates K Euler steps from Gaussian noise: t_k = k / K, a += v / K.
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from fleetloop.system.dit import DiT, DiTConfig
from fleetloop.system.category_layers import CategorySpecificMLP, MultiEmbodimentActionEncoder
from fleetloop.system.shapes import check_ids, check_shape


class ActionHeadConfig(BaseModel):
    """Flow-matching action head: embodiment layers, DiT and the noise schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    dit: DiTConfig
    """The denoising transformer; its inner width is the token width E."""
    hidden_size: int = Field(gt=0)
    """Hidden width of the state encoder and action decoder MLPs."""
    max_state_dim: int = Field(default=64, gt=0)
    """State vectors are zero-padded to this many dims."""
    max_action_dim: int = Field(default=32, gt=0)
    """Action vectors are zero-padded to this many dims."""
    action_horizon: int = Field(default=16, gt=0)
    """Actions per chunk, H."""
    max_num_embodiments: int = Field(default=32, gt=0)
    """Slots of the category-specific layers."""
    max_seq_len: int = Field(gt=0)
    """Rows of the action position embedding."""
    num_timestep_buckets: int = Field(default=1000, gt=0)
    """Flow time t in [0, 1] is discretised into this many buckets."""
    noise_beta_alpha: float = Field(default=1.5, gt=0.0)
    """alpha of the Beta distribution of u."""
    noise_beta_beta: float = Field(default=1.0, gt=0.0)
    """beta of the Beta distribution of u."""
    noise_s: float = Field(default=0.999, gt=0.0, le=1.0)
    """s in t = (s - u) / s; keeps t away from 1."""
    num_inference_timesteps: int = Field(default=4, gt=0)
    """Euler steps K at inference."""

    @property
    def input_embedding_dim(self) -> int:
        """Derived: token width E, the DiT inner width."""
        return self.dit.inner_dim

    @model_validator(mode="after")
    def _check(self) -> "ActionHeadConfig":
        if self.action_horizon > self.max_seq_len:
            raise ValueError(f"action_horizon={self.action_horizon} exceeds max_seq_len={self.max_seq_len}")
        return self


def flow_draws(config: ActionHeadConfig, sample_ids: Sequence[int], seed: int) -> dict[str, torch.Tensor]:
    """The flow-matching noise and time of each training sample, keyed by its global index.

    Each sample's draws come from its own generator seeded by (seed, sample id), so a batch
    split across data-parallel ranks sees exactly the noise it would see on one rank, and a
    resumed learner continues the same sequence.

    Returns:
        ``{"flow_noise": (B, H, max_action_dim), "flow_t": (B,)}`` float32 tensors.
    """
    noise = np.empty((len(sample_ids), config.action_horizon, config.max_action_dim), dtype=np.float32)
    u = np.empty(len(sample_ids), dtype=np.float64)
    for row, sample_id in enumerate(sample_ids):
        rng = np.random.default_rng([seed, int(sample_id)])
        noise[row] = rng.standard_normal(noise.shape[1:], dtype=np.float32)
        u[row] = rng.beta(config.noise_beta_alpha, config.noise_beta_beta)
    t = (config.noise_s - u) / config.noise_s
    return {"flow_noise": torch.from_numpy(noise), "flow_t": torch.from_numpy(t.astype(np.float32))}


class FlowMatchingActionHead(nn.Module):
    """State + noisy action chunk + vision-language tokens -> velocity, per embodiment."""

    config_class = ActionHeadConfig

    def __init__(self, config: ActionHeadConfig):
        super().__init__()
        self.config = config
        dim = config.input_embedding_dim
        slots = config.max_num_embodiments
        self.model = DiT(config.dit)
        self.state_encoder = CategorySpecificMLP(slots, config.max_state_dim, config.hidden_size, dim)
        self.action_encoder = MultiEmbodimentActionEncoder(config.max_action_dim, dim, slots)
        self.action_decoder = CategorySpecificMLP(
            slots, config.dit.output_dim, config.hidden_size, config.max_action_dim
        )
        self.position_embedding = nn.Embedding(config.max_seq_len, dim)

    def sample_time(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Flow times (B,) in ((s - 1) / s, 1], t = (s - u) / s with u ~ Beta(alpha, beta)."""
        beta = torch.distributions.Beta(
            torch.tensor(self.config.noise_beta_alpha, device=device),
            torch.tensor(self.config.noise_beta_beta, device=device),
        )
        return (self.config.noise_s - beta.sample((batch_size,))) / self.config.noise_s

    def forward(
        self,
        vl_tokens: torch.Tensor,
        vl_mask: torch.Tensor,
        state: torch.Tensor,
        action: torch.Tensor,
        action_mask: torch.Tensor,
        embodiment_id: torch.Tensor,
        noise: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        mask_count: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow-matching loss.

        Args:
            vl_tokens: (B, L, E) vision-language tokens; vl_mask: (B, L) bool.
            state: (B, max_state_dim) normalised, zero-padded.
            action: (B, H, max_action_dim) normalised, zero-padded.
            action_mask: (B, H, max_action_dim) bool, True on real action dims and steps.
            embodiment_id: (B,) long.
            noise, t: the per-sample draws (``flow_draws``); sampled here from torch's RNG when None.
            mask_count: scalar the summed error is divided by; None: the (weighted) mask's sum. Data
                parallel ranks pass the mean of their counts, so that the mean of their losses is
                the loss of the whole global batch even when their windows hold different
                numbers of padded steps.
            sample_weight: (B,) weight of each sample's error (e.g. by correction class); None: 1.

        Returns:
            Scalar loss: the (sample-weighted) mean squared velocity error over the real action
            dims and steps.
        """
        cfg = self.config
        batch = self._check_inputs(vl_tokens, vl_mask, state, embodiment_id)
        check_shape("action", action, (batch, cfg.action_horizon, cfg.max_action_dim))
        check_shape("action_mask", action_mask, tuple(action.shape))
        if (noise is None) != (t is None):
            raise ValueError("flow_noise and flow_t: give both or neither")
        if noise is None:
            noise = torch.randn_like(action)
            t = self.sample_time(batch, action.device)
        check_shape("flow_noise", noise, tuple(action.shape))
        check_shape("flow_t", t, (batch,))
        noise, t = noise.to(action.dtype), t.to(action.dtype)
        noisy = (1 - t[:, None, None]) * noise + t[:, None, None] * action
        buckets = (t * cfg.num_timestep_buckets).long()
        state_tokens = self.state_encoder(state.unsqueeze(1), embodiment_id)
        pred = self._velocity(vl_tokens, vl_mask, state_tokens, noisy, buckets, embodiment_id)
        mask = action_mask.to(pred.dtype)
        if sample_weight is not None:
            check_shape("sample_weight", sample_weight, (batch,))
            mask = mask * sample_weight.to(pred.dtype)[:, None, None]
        count = mask.sum() if mask_count is None else mask_count.to(pred)
        return (F.mse_loss(pred, action - noise, reduction="none") * mask).sum() / count.clamp_min(1.0)

    @torch.no_grad()
    def get_action(
        self,
        vl_tokens: torch.Tensor,
        vl_mask: torch.Tensor,
        state: torch.Tensor,
        embodiment_id: torch.Tensor,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """Denoise an action chunk with K Euler steps.

        Args: as in forward; generator seeds the initial noise; num_steps is K (None = the
        config's num_inference_timesteps).

        Returns:
            (B, H, max_action_dim) normalised actions.
        """
        cfg = self.config
        batch = self._check_inputs(vl_tokens, vl_mask, state, embodiment_id)
        actions = torch.randn(
            (batch, cfg.action_horizon, cfg.max_action_dim),
            generator=generator,
            device=vl_tokens.device,
            dtype=vl_tokens.dtype,
        )
        state_tokens = self.state_encoder(state.unsqueeze(1), embodiment_id)
        steps = cfg.num_inference_timesteps if num_steps is None else num_steps
        if steps < 1:
            raise ValueError(f"num_steps: expected >= 1, got {steps}")
        for k in range(steps):
            bucket = int(k / steps * cfg.num_timestep_buckets)
            buckets = torch.full((batch,), bucket, dtype=torch.long, device=actions.device)
            velocity = self._velocity(vl_tokens, vl_mask, state_tokens, actions, buckets, embodiment_id)
            actions = actions + velocity / steps
        return actions

    def _velocity(
        self,
        vl_tokens: torch.Tensor,
        vl_mask: torch.Tensor,
        state_tokens: torch.Tensor,
        actions: torch.Tensor,
        buckets: torch.Tensor,
        embodiment_id: torch.Tensor,
    ) -> torch.Tensor:
        """Predicted velocity (B, H, max_action_dim) for noisy actions (B, H, max_action_dim)."""
        action_tokens = self.action_encoder(actions, buckets, embodiment_id)
        positions = torch.arange(action_tokens.shape[1], device=actions.device)
        action_tokens = action_tokens + self.position_embedding(positions).unsqueeze(0)
        tokens = torch.cat([state_tokens, action_tokens], dim=1)
        out = self.model(tokens, vl_tokens, buckets, vl_mask)
        return self.action_decoder(out, embodiment_id)[:, -actions.shape[1] :]

    def _check_inputs(
        self, vl_tokens: torch.Tensor, vl_mask: torch.Tensor, state: torch.Tensor, embodiment_id: torch.Tensor
    ) -> int:
        """Validate the shared inputs and return the batch size."""
        cfg = self.config
        check_shape("vl_tokens", vl_tokens, (None, None, cfg.input_embedding_dim))
        batch, length, _ = vl_tokens.shape
        check_shape("vl_mask", vl_mask, (batch, length))
        check_shape("state", state, (batch, cfg.max_state_dim))
        check_shape("embodiment_id", embodiment_id, (batch,))
        check_ids("embodiment_id", embodiment_id, cfg.max_num_embodiments)
        return batch
