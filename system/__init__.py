"""The dual-system model: System 2 (vision-language backbone), System 1 (flow-matching
DiT action head), embodiment-specific layers, normalisation, the inference wrapper,
checkpoints and GR00T checkpoint conversion. Start from `model_preset("tiny")` (or
"n1-2b") and `DualSystemPolicy`.

Names are imported on first use (PEP 562), so that light users (the CLI's config checks, the
replay's embodiment layouts) do not pay for torch and transformers."""

import importlib

_EXPORTS = {
    "ActionHeadConfig": "action_head",
    "ByteTokenizer": "tokenizer",
    "CheckpointMismatchError": "errors",
    "ConversionReport": "gr00t_conversion",
    "DiT": "dit",
    "DiTConfig": "dit",
    "DualSystemPolicy": "policy",
    "EMBODIMENT_TAGS": "embodiment",
    "EmbodimentLayout": "embodiment",
    "FlowMatchingActionHead": "action_head",
    "GR00TConversionError": "gr00t_conversion",
    "LanguageConfig": "backbone",
    "ModelConfig": "config",
    "NORM_MODES": "embodiment",
    "Policy": "inference",
    "PretrainedTokenizer": "tokenizer",
    "Processor": "processor",
    "Statistics": "normalization",
    "VisionConfig": "backbone",
    "VisionLanguageBackbone": "backbone",
    "convert_gr00t": "gr00t_conversion",
    "embodiment_id": "embodiment",
    "embodiment_layout": "embodiment",
    "embodiment_tag": "embodiment",
    "flow_draws": "action_head",
    "gr00t_name_map": "gr00t_conversion",
    "load_policy": "checkpoint",
    "load_tokenizer": "tokenizer",
    "model_preset": "config",
    "preset_names": "config",
    "register_embodiment": "embodiment",
    "save_policy": "checkpoint",
}
"""Exported name -> the submodule that defines it."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
