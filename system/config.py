"""ModelConfig: the whole dual-system model's configuration, and its named presets.

Each section's class sits beside the code it configures (VisionConfig and LanguageConfig
in backbone.py, DiTConfig in dit.py, ActionHeadConfig in action_head.py); this module
joins them and checks the rules that span sections.
"""

from pydantic import BaseModel, ConfigDict, model_validator

from fleetloop.system.action_head import ActionHeadConfig
from fleetloop.system.backbone import LanguageConfig, VisionConfig
from fleetloop.system.dit import DiTConfig
from fleetloop.system.presets import MODEL_PRESETS
from fleetloop.system.tokenizer import ByteTokenizer


class ModelConfig(BaseModel):
    """System 2 (vision + llm) and System 1 (action_head)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    vision: VisionConfig
    """SigLIP vision encoder and pixel shuffle."""
    llm: LanguageConfig
    """Llama language model and instruction length."""
    action_head: ActionHeadConfig
    """Flow-matching action head with its DiT."""

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        tokens = self.vision.num_image_tokens + self.llm.max_text_tokens
        if tokens > self.llm.max_position_embeddings:
            raise ValueError(
                f"llm.max_position_embeddings={self.llm.max_position_embeddings} is shorter than "
                f"{self.vision.num_image_tokens} image tokens + llm.max_text_tokens={self.llm.max_text_tokens}"
            )
        return self


def _tiny() -> ModelConfig:
    """A few layers of everything: tests and the CPU demo."""
    return ModelConfig(
        vision=VisionConfig(
            image_size=64, patch_size=8, hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4
        ),
        llm=LanguageConfig(
            vocab_size=ByteTokenizer.vocab_size,
            hidden_size=64,
            intermediate_size=256,
            select_layer=2,
            num_heads=4,
            num_kv_heads=4,
            max_position_embeddings=128,
            max_text_tokens=48,
        ),
        action_head=ActionHeadConfig(
            dit=DiTConfig(num_layers=4, num_heads=4, head_dim=32, output_dim=128, dropout=0.0),
            hidden_size=128,
            max_seq_len=64,
            num_inference_timesteps=4,
        ),
    )


def _n1_2b() -> ModelConfig:
    """GR00T-N1-2B as released: SigLIP-2 + SmolLM2 (first 12 layers) and a 16-block DiT."""
    return ModelConfig(
        vision=VisionConfig(
            image_size=224, patch_size=14, hidden_size=1152, intermediate_size=4304, num_layers=27, num_heads=16
        ),
        llm=LanguageConfig(
            vocab_size=49164,
            hidden_size=2048,
            intermediate_size=8192,
            select_layer=12,
            num_heads=32,
            num_kv_heads=32,
            rope_theta=130000.0,
            max_position_embeddings=8192,
            max_text_tokens=64,
            tokenizer="pretrained",
        ),
        action_head=ActionHeadConfig(
            dit=DiTConfig(num_layers=16, num_heads=32, head_dim=48, output_dim=1024, dropout=0.2),
            hidden_size=1024,
            max_seq_len=1024,
            num_inference_timesteps=4,
        ),
    )


_PRESETS = {"tiny": _tiny, "n1-2b": _n1_2b}


def preset_names() -> list[str]:
    """Names of the model presets (``presets.MODEL_PRESETS``)."""
    return sorted(MODEL_PRESETS)


def model_preset(name: str) -> ModelConfig:
    """The ModelConfig of preset `name`.

    Raises:
        ValueError: for an unknown name, listing the known presets.
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(_PRESETS)}")
    return _PRESETS[name]()
