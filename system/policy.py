"""DualSystemPolicy: System 2 + System 1 + per-embodiment normalisation statistics.

Batch keys (all torch tensors, B samples, S = max_state_dim, A = max_action_dim):
    pixel_values   (B, 3, image_size, image_size) float, SigLIP-normalised to [-1, 1]
    input_ids      (B, L) long;  attention_mask (B, L) bool/long
    state          (B, S) raw, zero-padded;  state_mask (B, S) bool
    action         (B, H, A) raw, zero-padded (training only)
    action_mask    (B, H, A) bool (training only)
    action_mask_count  scalar, optional: what the loss's summed error is divided by (data
                   parallel ranks share one; default the weighted action_mask's sum)
    sample_weight  (B,) float, optional: each sample's weight in the loss (training only)
    embodiment_id  (B,) long

State and action are normalised inside the model (`fleetloop.system.normalization`) with
statistics kept as persistent buffers, so they travel in every state_dict and checkpoint.
"""

import torch
from torch import nn

from fleetloop.system.action_head import FlowMatchingActionHead
from fleetloop.system.backbone import VisionLanguageBackbone
from fleetloop.system.config import ModelConfig
from fleetloop.system.normalization import NormalizationMixin
from fleetloop.system.shapes import check_ids, check_shape

VisionLanguage = tuple[torch.Tensor, torch.Tensor]
"""Cached System 2 output: tokens (B, L, E) and mask (B, L) bool."""


class DualSystemPolicy(NormalizationMixin, nn.Module):
    """GR00T-N1-style vision-language-action model: `forward` for training, `get_action` to act."""

    config_class = ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        head = config.action_head
        self.backbone = VisionLanguageBackbone(config.vision, config.llm, head.input_embedding_dim)
        self.action_head = FlowMatchingActionHead(head)
        self._register_statistics(head.max_num_embodiments, head.max_state_dim, head.max_action_dim)

    def trainable_groups(self) -> dict[str, list[nn.Module]]:
        """The modules each GR00T tune flag governs (names of set_trainable's arguments)."""
        eagle, head = self.backbone.model, self.action_head
        return {
            "tune_llm": [eagle.language_model],
            "tune_visual": [eagle.vision_model, eagle.mlp1],
            "tune_projector": [
                self.backbone.linear,
                head.state_encoder,
                head.action_encoder,
                head.action_decoder,
                head.position_embedding,
            ],
            "tune_diffusion_model": [head.model],
        }

    def set_trainable(
        self,
        *,
        tune_llm: bool = True,
        tune_visual: bool = True,
        tune_projector: bool = True,
        tune_diffusion_model: bool = True,
    ) -> dict[str, int]:
        """Freeze (False) or unfreeze (True) parameter groups, as GR00T's tune_* flags.

        tune_llm: the Llama layers and token embeddings. tune_visual: the SigLIP tower and
        the mlp1 projector. tune_projector: backbone.linear and the embodiment-specific state
        encoder, action encoder, action decoder and action position embedding.
        tune_diffusion_model: the DiT (action_head.model).

        Returns:
            Trainable parameter count per flag, e.g. {"tune_llm": 0, ...}.
        """
        flags = {
            "tune_llm": tune_llm,
            "tune_visual": tune_visual,
            "tune_projector": tune_projector,
            "tune_diffusion_model": tune_diffusion_model,
        }
        counts = {}
        for flag, modules in self.trainable_groups().items():
            for module in modules:
                module.requires_grad_(flags[flag])
            counts[flag] = sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)
        return counts

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute activations in the backward pass (SigLIP, Llama and DiT layers) to save memory.

        Results are unchanged (RNG state is replayed for dropout); only active in train mode.
        """
        eagle = self.backbone.model
        for hf_model in (eagle.vision_model.vision_model, eagle.language_model.model):
            if enabled:
                hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                hf_model.activation_checkpointing_disable()
        self.action_head.model.gradient_checkpointing = enabled

    def encode_vision_language(self, batch: dict[str, torch.Tensor]) -> VisionLanguage:
        """Run System 2: tokens (B, L, E) and mask (B, L); cache them to run System 2 less often."""
        _require(batch, ("pixel_values", "input_ids", "attention_mask"))
        return self.backbone(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training step: {"loss": scalar flow-matching loss} on a batch with actions (and
        optionally its ``flow_noise``/``flow_t`` draws, see ``action_head.flow_draws``)."""
        _require(batch, ("state", "state_mask", "action", "action_mask", "embodiment_id"))
        ids = batch["embodiment_id"]
        state = self._normalized_state(batch)
        head = self.config.action_head
        check_shape("action", batch["action"], (ids.shape[0], head.action_horizon, head.max_action_dim))
        check_shape("action_mask", batch["action_mask"], tuple(batch["action"].shape))
        action = self.normalize_action(batch["action"], batch["action_mask"], ids)
        tokens, mask = self.encode_vision_language(batch)
        loss = self.action_head(tokens, mask, state, action, batch["action_mask"], ids,
                                noise=batch.get("flow_noise"), t=batch.get("flow_t"),
                                mask_count=batch.get("action_mask_count"), sample_weight=batch.get("sample_weight"))
        return {"loss": loss}

    @torch.no_grad()
    def get_action(
        self,
        batch: dict[str, torch.Tensor],
        vl: VisionLanguage | None = None,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """Act: (B, H, max_action_dim) actions in raw units.

        Args:
            batch: observation keys (action and action_mask are not needed).
            vl: cached `encode_vision_language(batch)` output; computed when None.
            generator: seeds the initial noise for reproducible actions.
            num_steps: Euler steps K; None = the config's num_inference_timesteps.
        """
        _require(batch, ("state", "state_mask", "embodiment_id"))
        state = self._normalized_state(batch)
        tokens, mask = self.encode_vision_language(batch) if vl is None else vl
        ids = batch["embodiment_id"]
        action = self.action_head.get_action(tokens, mask, state, ids, generator=generator, num_steps=num_steps)
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
