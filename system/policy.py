"""DualSystemPolicy: System 2 + System 1 + per-embodiment normalisation statistics.

Batch keys (all torch tensors, B samples, S = max_state_dim, A = max_action_dim):
    pixel_values   (B, 3, image_size, image_size) float, SigLIP-normalised to [-1, 1]
    input_ids      (B, L) long;  attention_mask (B, L) bool/long
    state          (B, S) raw, zero-padded;  state_mask (B, S) bool
    action         (B, H, A) raw, zero-padded (training only)
    action_mask    (B, H, A) bool (training only)
    embodiment_id  (B,) long

State and action are min-max normalised to [-1, 1] inside the model with statistics kept
as persistent buffers, so they travel in every state_dict and checkpoint. A dim whose max
equals its min maps to 0, and padded dims are zeroed. An embodiment without registered
statistics is passed through unchanged (min -1, max 1).
"""

import numpy as np
import torch
from torch import nn

from fleetloop.system.action_head import FlowMatchingActionHead
from fleetloop.system.backbone import VisionLanguageBackbone
from fleetloop.system.config import ModelConfig
from fleetloop.system.shapes import check_ids, check_shape

VisionLanguage = tuple[torch.Tensor, torch.Tensor]
"""Cached System 2 output: tokens (B, L, E) and mask (B, L) bool."""


def normalize(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Map [low, high] to [-1, 1] elementwise; dims with high == low map to 0."""
    span = high - low
    constant = span == 0
    return torch.where(constant, torch.zeros_like(x), 2 * (x - low) / torch.where(constant, 1, span) - 1)


def unnormalize(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Inverse of normalize (dims with high == low return low)."""
    return (x + 1) / 2 * (high - low) + low


def _as_vector(name: str, value: np.ndarray | torch.Tensor, max_dim: int) -> torch.Tensor:
    """A finite 1-D float32 tensor of at most max_dim entries, or ValueError naming `name`."""
    vector = torch.as_tensor(np.asarray(value, dtype=np.float32))
    if vector.ndim != 1 or not 0 < vector.shape[0] <= max_dim:
        raise ValueError(f"{name}: expected a vector of 1..{max_dim} dims, got shape {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        raise ValueError(f"{name}: values must be finite, got {vector.tolist()}")
    return vector


class DualSystemPolicy(nn.Module):
    """GR00T-N1-style vision-language-action model: `forward` for training, `get_action` to act."""

    config_class = ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        head = config.action_head
        self.backbone = VisionLanguageBackbone(config.vision, config.llm, head.input_embedding_dim)
        self.action_head = FlowMatchingActionHead(head)
        slots = head.max_num_embodiments
        self.register_buffer("state_min", -torch.ones(slots, head.max_state_dim))
        self.register_buffer("state_max", torch.ones(slots, head.max_state_dim))
        self.register_buffer("action_min", -torch.ones(slots, head.max_action_dim))
        self.register_buffer("action_max", torch.ones(slots, head.max_action_dim))
        self.register_buffer("state_dim", torch.zeros(slots, dtype=torch.long))
        self.register_buffer("action_dim", torch.zeros(slots, dtype=torch.long))

    def set_normalization(
        self,
        embodiment_id: int,
        state_min: np.ndarray | torch.Tensor,
        state_max: np.ndarray | torch.Tensor,
        action_min: np.ndarray | torch.Tensor,
        action_max: np.ndarray | torch.Tensor,
    ) -> None:
        """Register min/max statistics of one embodiment's real state and action dims.

        Also records the real dims (`state_dim[id]`, `action_dim[id]`), which `get_action`
        uses to zero padded action dims and `Policy.act` to slice its output.

        Raises:
            ValueError: for an out-of-range id, wrong dims, non-finite values or min > max.
        """
        head = self.config.action_head
        if not 0 <= embodiment_id < head.max_num_embodiments:
            raise ValueError(f"embodiment_id: expected 0..{head.max_num_embodiments - 1}, got {embodiment_id}")
        rows = {}
        for kind, low, high, max_dim in (
            ("state", state_min, state_max, head.max_state_dim),
            ("action", action_min, action_max, head.max_action_dim),
        ):
            low = _as_vector(f"{kind}_min", low, max_dim)
            high = _as_vector(f"{kind}_max", high, max_dim)
            if low.shape != high.shape:
                raise ValueError(f"{kind}_min has {low.shape[0]} dims but {kind}_max has {high.shape[0]}")
            if (low > high).any():
                dims = torch.nonzero(low > high).flatten().tolist()
                raise ValueError(f"{kind}_min exceeds {kind}_max at dims {dims}")
            rows[kind] = (low, high)
        with torch.no_grad():
            for kind, (low, high) in rows.items():
                buf_min, buf_max = getattr(self, f"{kind}_min"), getattr(self, f"{kind}_max")
                buf_min[embodiment_id].zero_()
                buf_max[embodiment_id].zero_()
                buf_min[embodiment_id, : low.shape[0]] = low
                buf_max[embodiment_id, : high.shape[0]] = high
                getattr(self, f"{kind}_dim")[embodiment_id] = low.shape[0]

    def normalize_state(self, state: torch.Tensor, state_mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Raw state (B, S) -> [-1, 1], padded dims zeroed."""
        return normalize(state, self.state_min[ids], self.state_max[ids]) * state_mask

    def normalize_action(self, action: torch.Tensor, action_mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Raw action (B, H, A) -> [-1, 1], padded dims zeroed."""
        low, high = self.action_min[ids][:, None], self.action_max[ids][:, None]
        return normalize(action, low, high) * action_mask

    def unnormalize_action(self, action: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Normalised action (B, H, A) -> raw units, dims beyond the registered action_dim zeroed."""
        raw = unnormalize(action, self.action_min[ids][:, None], self.action_max[ids][:, None])
        dims = self.action_dim[ids]
        real = torch.arange(raw.shape[-1], device=raw.device)[None, :] < dims[:, None]
        real = real | (dims == 0)[:, None]
        return raw * real[:, None, :]

    def encode_vision_language(self, batch: dict[str, torch.Tensor]) -> VisionLanguage:
        """Run System 2: tokens (B, L, E) and mask (B, L); cache them to run System 2 less often."""
        _require(batch, ("pixel_values", "input_ids", "attention_mask"))
        return self.backbone(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training step: {"loss": scalar flow-matching loss} on a batch with actions."""
        _require(batch, ("state", "state_mask", "action", "action_mask", "embodiment_id"))
        ids = batch["embodiment_id"]
        state = self._normalized_state(batch)
        head = self.config.action_head
        check_shape("action", batch["action"], (ids.shape[0], head.action_horizon, head.max_action_dim))
        check_shape("action_mask", batch["action_mask"], tuple(batch["action"].shape))
        action = self.normalize_action(batch["action"], batch["action_mask"], ids)
        tokens, mask = self.encode_vision_language(batch)
        return {"loss": self.action_head(tokens, mask, state, action, batch["action_mask"], ids)}

    @torch.no_grad()
    def get_action(
        self,
        batch: dict[str, torch.Tensor],
        vl: VisionLanguage | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Act: (B, H, max_action_dim) actions in raw units.

        Args:
            batch: observation keys (action and action_mask are not needed).
            vl: cached `encode_vision_language(batch)` output; computed when None.
            generator: seeds the initial noise for reproducible actions.
        """
        _require(batch, ("state", "state_mask", "embodiment_id"))
        state = self._normalized_state(batch)
        tokens, mask = self.encode_vision_language(batch) if vl is None else vl
        ids = batch["embodiment_id"]
        action = self.action_head.get_action(tokens, mask, state, ids, generator=generator)
        return self.unnormalize_action(action, ids)

    def _normalized_state(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["embodiment_id"]
        check_shape("embodiment_id", ids, (None,))
        max_state = self.config.action_head.max_state_dim
        check_shape("state", batch["state"], (ids.shape[0], max_state))
        check_shape("state_mask", batch["state_mask"], (ids.shape[0], max_state))
        check_ids("embodiment_id", ids, self.config.action_head.max_num_embodiments)
        return self.normalize_state(batch["state"], batch["state_mask"], ids)


def _require(batch: dict[str, torch.Tensor], keys: tuple[str, ...]) -> None:
    """Raise ValueError naming the batch keys that are missing."""
    missing = [key for key in keys if key not in batch]
    if missing:
        raise ValueError(f"batch is missing keys {missing}; it has {sorted(batch)}")
