"""DeepSpeed set-up for the learner: process group, parameter groups, engine."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import torch

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> None:
    """Join (or create) the torch.distributed group DeepSpeed runs in.

    Launched by the ``deepspeed`` launcher or Ray Train, RANK/WORLD_SIZE/MASTER_* are set
    already; a standalone learner becomes rank 0 of a world of one on a free local port.
    Without CUDA, DeepSpeed's CPU accelerator and the gloo backend are used.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


NO_DECAY_SUFFIXES = ("bias", ".b")
"""Parameter names that are biases: nn.Linear's ``bias`` and the per-embodiment ``b`` [slots, out]."""


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters: no weight decay on biases (including the
    2-D per-embodiment ``b``), norms and other 1-D parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def deepspeed_config(batch_size: int, grad_clip: float, zero_stage: int) -> dict[str, Any]:
    """The DeepSpeed JSON config derived from fleetloop's learner section (one rank)."""
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def build_engine(model: torch.nn.Module, *, lr: float, weight_decay: float, batch_size: int,
                 grad_clip: float, zero_stage: int):
    """Wrap ``model`` in a DeepSpeed engine with a torch AdamW optimizer.

    Returns:
        The DeepSpeed engine (``engine.module`` is the model).
    """
    import deepspeed

    init_distributed()
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95))
    config = deepspeed_config(batch_size, grad_clip, zero_stage)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    log.info("DeepSpeed engine ready: ZeRO stage %d, accelerator %s", zero_stage, os.environ.get("DS_ACCELERATOR", "auto"))
    return engine
