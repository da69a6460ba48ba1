"""The dual-system model: System 2 (vision-language backbone), System 1 (flow-matching
DiT action head), embodiment-specific layers, normalisation, the inference wrapper,
checkpoints and GR00T checkpoint conversion. Start from `model_preset("tiny")` (or
"n1-2b") and `DualSystemPolicy`."""

from fleetloop.system.action_head import ActionHeadConfig, FlowMatchingActionHead, flow_draws
from fleetloop.system.backbone import LanguageConfig, VisionConfig, VisionLanguageBackbone
from fleetloop.system.checkpoint import load_policy, save_policy
from fleetloop.system.config import ModelConfig, model_preset, preset_names
from fleetloop.system.convert_gr00t import ConversionReport, GR00TConversionError, convert_gr00t, gr00t_name_map
from fleetloop.system.dit import DiT, DiTConfig
from fleetloop.system.embodiment import (
    EMBODIMENT_TAGS,
    NORM_MODES,
    EmbodimentLayout,
    embodiment_id,
    embodiment_layout,
    embodiment_tag,
    register_embodiment,
)
from fleetloop.system.errors import CheckpointMismatchError
from fleetloop.system.inference import Policy
from fleetloop.system.normalization import Statistics
from fleetloop.system.policy import DualSystemPolicy
from fleetloop.system.processor import Processor
from fleetloop.system.tokenizer import ByteTokenizer, PretrainedTokenizer, load_tokenizer

__all__ = [
    "EMBODIMENT_TAGS",
    "NORM_MODES",
    "ActionHeadConfig",
    "ByteTokenizer",
    "CheckpointMismatchError",
    "ConversionReport",
    "DiT",
    "DiTConfig",
    "DualSystemPolicy",
    "EmbodimentLayout",
    "FlowMatchingActionHead",
    "GR00TConversionError",
    "LanguageConfig",
    "ModelConfig",
    "Policy",
    "PretrainedTokenizer",
    "Processor",
    "Statistics",
    "VisionConfig",
    "VisionLanguageBackbone",
    "convert_gr00t",
    "embodiment_id",
    "embodiment_layout",
    "embodiment_tag",
    "flow_draws",
    "gr00t_name_map",
    "load_policy",
    "load_tokenizer",
    "model_preset",
    "preset_names",
    "register_embodiment",
    "save_policy",
]
