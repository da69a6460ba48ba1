"""Policy checkpoints: one safetensors file holding every tensor and the config.

Layout: tensors named as in `DualSystemPolicy.state_dict()` (normalisation buffers
included), and metadata {FORMAT_KEY: FORMAT_VERSION, CONFIG_KEY: ModelConfig JSON}.
"""

import logging
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fleetloop.system.config import ModelConfig
from fleetloop.system.policy import DualSystemPolicy

logger = logging.getLogger(__name__)

FORMAT_KEY = "fleetloop.format"
FORMAT_VERSION = "fleetloop.system/1"
CONFIG_KEY = "fleetloop.config"


def save_policy(model: DualSystemPolicy, path: str | os.PathLike) -> None:
    """Write `model`'s state_dict and config to the safetensors file `path`."""
    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    metadata = {FORMAT_KEY: FORMAT_VERSION, CONFIG_KEY: model.config.model_dump_json()}
    save_file(tensors, os.fspath(path), metadata=metadata)
    logger.info("saved policy checkpoint %s (%d tensors)", path, len(tensors))


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu") -> DualSystemPolicy:
    """Build a DualSystemPolicy from the checkpoint `path`, exactly as saved.

    Raises:
        ValueError: if the file is not a fleetloop checkpoint, or its tensors do not match
        the config (missing, unexpected and mis-shaped names are listed).
    """
    path = os.fspath(path)
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get(FORMAT_KEY) != FORMAT_VERSION or CONFIG_KEY not in metadata:
        raise ValueError(
            f"{path}: not a {FORMAT_VERSION} checkpoint (metadata {FORMAT_KEY}={metadata.get(FORMAT_KEY)!r})"
        )
    model = DualSystemPolicy(ModelConfig.model_validate_json(metadata[CONFIG_KEY]))
    tensors = load_file(path)
    check_tensors(model, tensors, source=path)
    model.load_state_dict(tensors, strict=True)
    logger.info("loaded policy checkpoint %s", path)
    return model.to(device)


def check_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise ValueError listing names of `tensors` missing from, unexpected in or mis-shaped for `model`."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshaped = sorted(
        f"{name} {tuple(tensors[name].shape)} != {tuple(expected[name].shape)}"
        for name in set(expected) & set(tensors)
        if tensors[name].shape != expected[name].shape
    )
    found = {"missing": missing, "unexpected": unexpected, "mis-shaped": misshaped}
    problems = [f"{label}: {names}" for label, names in found.items() if names]
    if problems:
        raise ValueError(f"{source}: tensors do not match the config; " + "; ".join(problems))
