"""The dual-system model: System 2 (vision-language backbone), System 1 (flow-matching
DiT action head), embodiment-specific layers, normalisation, the inference wrapper and
checkpoints. Start from `model_preset("tiny")` and `DualSystemPolicy`."""

from fleetloop.system.action_head import ActionHeadConfig, FlowMatchingActionHead
from fleetloop.system.backbone import LanguageConfig, VisionConfig, VisionLanguageBackbone
from fleetloop.system.checkpoint import load_policy, save_policy
from fleetloop.system.config import ModelConfig, model_preset
from fleetloop.system.dit import DiT, DiTConfig
from fleetloop.system.embodiment import EMBODIMENT_TAGS, embodiment_id
from fleetloop.system.inference import Policy
from fleetloop.system.policy import DualSystemPolicy
from fleetloop.system.processor import Processor
from fleetloop.system.tokenizer import ByteTokenizer

__all__ = [
    "EMBODIMENT_TAGS",
    "ActionHeadConfig",
    "ByteTokenizer",
    "DiT",
    "DiTConfig",
    "DualSystemPolicy",
    "FlowMatchingActionHead",
    "LanguageConfig",
    "ModelConfig",
    "Policy",
    "Processor",
    "VisionConfig",
    "VisionLanguageBackbone",
    "embodiment_id",
    "load_policy",
    "model_preset",
    "save_policy",
]
