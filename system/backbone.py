"""System 2: the vision-language backbone (Eagle-2 style, as in GR00T N1).

Images go through a SigLIP vision encoder, a 0.5 pixel shuffle (4 neighbouring patches
become one token of 4x width) and the `mlp1` projector; the image tokens are followed by
the instruction's token embeddings and run through the first `select_layer` layers of a
Llama language model. `linear` maps the last hidden state to the DiT width. The module
tree mirrors GR00T's names: backbone.model.vision_model.vision_model.*,
backbone.model.mlp1.{0,1,3}, backbone.model.language_model.model.*, backbone.linear.
"""

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from transformers import LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

from fleetloop.system.shapes import check_shape

ATTN_IMPLEMENTATION = "sdpa"
"""Attention kernel of the transformers models (sdpa runs on CPU and GPU)."""


class VisionConfig(BaseModel):
    """SigLIP vision encoder and pixel shuffle."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    image_size: int = Field(gt=0)
    """Side of the square input image in pixels."""
    patch_size: int = Field(gt=0)
    """Side of one SigLIP patch in pixels."""
    hidden_size: int = Field(gt=0)
    """Width of the SigLIP encoder."""
    intermediate_size: int = Field(gt=0)
    """Width of the SigLIP MLP."""
    num_layers: int = Field(gt=0)
    """Number of SigLIP encoder layers."""
    num_heads: int = Field(gt=0)
    """Attention heads per SigLIP layer."""
    layer_norm_eps: float = Field(default=1e-6, gt=0.0)
    """Epsilon of the SigLIP layer norms."""
    downsample_ratio: float = Field(default=0.5, gt=0.0, le=1.0)
    """Pixel-shuffle ratio: each side of the patch grid shrinks by this factor."""

    @property
    def grid_side(self) -> int:
        """Derived: patches per image side."""
        return self.image_size // self.patch_size

    @property
    def shuffle_factor(self) -> int:
        """Derived: 1 / downsample_ratio, the patch-grid side merged into one token."""
        return round(1 / self.downsample_ratio)

    @property
    def num_image_tokens(self) -> int:
        """Derived: tokens per image after the pixel shuffle."""
        return (self.grid_side // self.shuffle_factor) ** 2

    @property
    def projector_in_dim(self) -> int:
        """Derived: width of a pixel-shuffled token, input of mlp1."""
        return self.hidden_size * self.shuffle_factor**2

    @model_validator(mode="after")
    def _check(self) -> "VisionConfig":
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}")
        if abs(1 / self.downsample_ratio - self.shuffle_factor) > 1e-6:
            raise ValueError(f"downsample_ratio={self.downsample_ratio} must be 1/n for an integer n")
        if self.grid_side % self.shuffle_factor:
            raise ValueError(
                f"downsample_ratio={self.downsample_ratio} needs a patch grid side divisible by "
                f"{self.shuffle_factor}, got {self.grid_side}"
            )
        return self


class LanguageConfig(BaseModel):
    """Llama language model (only the first `select_layer` layers are built)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    vocab_size: int = Field(gt=0)
    """Rows of the token embedding table."""
    hidden_size: int = Field(gt=0)
    """Width of the language model; also the mlp1 projector width."""
    intermediate_size: int = Field(gt=0)
    """Width of the Llama MLP."""
    select_layer: int = Field(gt=0)
    """Number of Llama layers kept and run; their output (after the final norm) is used."""
    num_heads: int = Field(gt=0)
    """Query heads per layer."""
    num_kv_heads: int = Field(gt=0)
    """Key/value heads per layer (grouped-query attention when < num_heads)."""
    rms_norm_eps: float = Field(default=1e-5, gt=0.0)
    """Epsilon of the RMS norms."""
    rope_theta: float = Field(default=10000.0, gt=0.0)
    """Base of the rotary position embedding."""
    max_position_embeddings: int = Field(gt=0)
    """Longest sequence (image + text tokens) the language model accepts."""
    max_text_tokens: int = Field(gt=1)
    """Length of the tokenised instruction, bos and eos included."""
    tokenizer: Literal["byte", "pretrained"] = "byte"
    """"byte": the built-in ByteTokenizer; "pretrained": a transformers tokenizer from a local directory."""

    @model_validator(mode="after")
    def _check(self) -> "LanguageConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        return self


class VisionTower(nn.Module):
    """Holds the SiglipVisionModel as `.vision_model` (Eagle's name nesting)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        siglip = SiglipVisionConfig(
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            image_size=config.image_size,
            patch_size=config.patch_size,
            layer_norm_eps=config.layer_norm_eps,
            vision_use_head=False,
            attn_implementation=ATTN_IMPLEMENTATION,
        )
        self.vision_model = SiglipVisionModel._from_config(siglip)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 3, S, S) -> last hidden state (B, num_patches, hidden)."""
        return self.vision_model(pixel_values=pixel_values).last_hidden_state


class LanguageModel(nn.Module):
    """Holds the LlamaModel as `.model`; there is no lm_head (GR00T drops it)."""

    def __init__(self, config: LanguageConfig):
        super().__init__()
        llama = LlamaConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.select_layer,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_kv_heads,
            max_position_embeddings=config.max_position_embeddings,
            rms_norm_eps=config.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
            use_cache=False,
            attn_implementation=ATTN_IMPLEMENTATION,
        )
        self.model = LlamaModel._from_config(llama)


def pixel_shuffle(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Eagle/InternVL pixel shuffle: (B, W, H, C) -> (B, W/factor, H/factor, C*factor^2)."""
    n, w, h, c = x.shape
    x = x.reshape(n, w, h // factor, c * factor).permute(0, 2, 1, 3)
    x = x.reshape(n, h // factor, w // factor, c * factor * factor).permute(0, 2, 1, 3)
    return x.contiguous()


class EagleModel(nn.Module):
    """vision_model + mlp1 projector + language_model, as in Eagle-2."""

    def __init__(self, vision: VisionConfig, llm: LanguageConfig):
        super().__init__()
        self.vision_config = vision
        self.vision_model = VisionTower(vision)
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(vision.projector_in_dim),
            nn.Linear(vision.projector_in_dim, llm.hidden_size),
            nn.GELU(),
            nn.Linear(llm.hidden_size, llm.hidden_size),
        )
        self.language_model = LanguageModel(llm)

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 3, S, S) -> image tokens (B, num_image_tokens, llm hidden)."""
        features = self.vision_model(pixel_values)
        side = self.vision_config.grid_side
        features = features.reshape(features.shape[0], side, side, -1)
        features = pixel_shuffle(features, self.vision_config.shuffle_factor)
        return self.mlp1(features.reshape(features.shape[0], -1, features.shape[-1]))


class VisionLanguageBackbone(nn.Module):
    """System 2: images + instruction -> vision-language tokens for the DiT."""

    def __init__(self, vision: VisionConfig, llm: LanguageConfig, output_dim: int):
        """Args:
        vision, llm: the two halves of System 2.
        output_dim: width of the produced tokens (the DiT inner width).
        """
        super().__init__()
        self.vision_config = vision
        self.llm_config = llm
        self.model = EagleModel(vision, llm)
        self.linear = nn.Linear(llm.hidden_size, output_dim)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode images and instructions.

        Args:
            pixel_values: (B, 3, S, S) float, SigLIP-normalised to [-1, 1].
            input_ids: (B, L) long, L <= max_text_tokens.
            attention_mask: (B, L) bool or long, true/1 on real tokens.

        Returns:
            tokens (B, N + L, output_dim) with N image tokens first, and their mask (B, N + L) bool.
        """
        side = self.vision_config.image_size
        check_shape("pixel_values", pixel_values, (None, 3, side, side))
        batch = pixel_values.shape[0]
        check_shape("input_ids", input_ids, (batch, None))
        check_shape("attention_mask", attention_mask, tuple(input_ids.shape))
        if input_ids.shape[1] > self.llm_config.max_text_tokens:
            raise ValueError(
                f"input_ids: expected at most max_text_tokens={self.llm_config.max_text_tokens} "
                f"tokens, got {input_ids.shape[1]}"
            )
        image_tokens = self.model.extract_feature(pixel_values)
        llama = self.model.language_model.model
        embeds = torch.cat([image_tokens, llama.embed_tokens(input_ids)], dim=1)
        image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=embeds.device)
        mask = torch.cat([image_mask, attention_mask.bool()], dim=1)
        hidden = llama(inputs_embeds=embeds, attention_mask=mask.long(), use_cache=False).last_hidden_state
        return self.linear(hidden), mask
