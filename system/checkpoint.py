"""Policy checkpoints: one safetensors file holding every tensor and the config.

Layout: tensors named as in `DualSystemPolicy.state_dict()`, normalisation statistics and
modes included (persistent buffers), saved in their own dtypes, and metadata
{FORMAT_KEY: FORMAT_VERSION, CONFIG_KEY: ModelConfig JSON}. Loading is bit-exact.
"""

import hashlib
import logging
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fleetloop.system.config import ModelConfig
from fleetloop.system.errors import CheckpointMismatchError
from fleetloop.system.policy import DualSystemPolicy

logger = logging.getLogger(__name__)

FORMAT_KEY = "fleetloop.format"
FORMAT_VERSION = "fleetloop.system/1"
CONFIG_KEY = "fleetloop.config"


def save_policy(model: DualSystemPolicy, path: str | os.PathLike) -> None:
    """Write `model`'s state_dict and config to the safetensors file `path`."""
    save_tensors(model.state_dict(), model.config, path)


def save_tensors(tensors: dict[str, torch.Tensor], config: ModelConfig, path: str | os.PathLike) -> None:
    """Write a state_dict `tensors` of a model of `config` as a checkpoint at `path`."""
    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    metadata = {FORMAT_KEY: FORMAT_VERSION, CONFIG_KEY: config.model_dump_json()}
    save_file(tensors, os.fspath(path), metadata=metadata)
    logger.info("saved policy checkpoint %s (%d tensors)", path, len(tensors))


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu") -> DualSystemPolicy:
    """Build a DualSystemPolicy from the checkpoint `path`, exactly as saved.

    Raises:
        ValueError: if the file is not a fleetloop checkpoint; CheckpointMismatchError (a
        ValueError) if its tensors do not match the config (each missing, unexpected and
        mis-shaped tensor is named with expected and actual shapes).
    """
    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a {FORMAT_VERSION} checkpoint (not a safetensors file: {exc})") from None
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


def shape_problems(expected: dict[str, tuple[int, ...]], actual: dict[str, tuple[int, ...]]) -> list[str]:
    """Lines naming tensors missing from `actual`, unexpected in it, or of another shape."""
    problems = [f"missing: {name} (expected shape {expected[name]})" for name in sorted(set(expected) - set(actual))]
    problems += [f"unexpected: {name} {actual[name]}" for name in sorted(set(actual) - set(expected))]
    problems += [
        f"mis-shaped: {name}: expected {expected[name]}, got {actual[name]}"
        for name in sorted(set(expected) & set(actual))
        if tuple(expected[name]) != tuple(actual[name])
    ]
    return problems


def check_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointMismatchError naming tensors missing from, unexpected in or mis-shaped for `model`."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    problems = shape_problems(expected, {name: tuple(t.shape) for name, t in tensors.items()})
    if problems:
        raise CheckpointMismatchError(source, problems)


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order: two state dicts
    with the same digest hold the same weights, wherever they were computed."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
