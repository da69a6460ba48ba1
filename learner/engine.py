"""DeepSpeed set-up for the learner: process group, parameter groups, engine."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from fleetloop.ports import free_port

log = logging.getLogger(__name__)


def _own_extension_cache() -> None:
    """Give this Python environment its own cache of JIT-built ops (TORCH_EXTENSIONS_DIR, unless
    set). DeepSpeed builds its CPU communication op on first use; in the shared default cache two
    environments (two checkouts, a CI clone) rebuild it in turn, each waiting on the other's lock
    for minutes on a loaded machine. Left alone where the environment is read-only (an image)."""
    if "TORCH_EXTENSIONS_DIR" not in os.environ and os.access(sys.prefix, os.W_OK):
        os.environ["TORCH_EXTENSIONS_DIR"] = str(Path(sys.prefix) / "torch_extensions")


def init_distributed() -> None:
    """Join (or create) the torch.distributed group DeepSpeed runs in.

    Ray Train creates the group before the learner starts; the ``deepspeed`` launcher sets
    RANK/WORLD_SIZE/MASTER_* for it. Otherwise (a world of one) the learner becomes rank 0 on a
    fresh local port, whatever a parent process left in the environment. Without CUDA,
    DeepSpeed's CPU accelerator and the gloo backend are used.
    """
    _own_extension_cache()
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if torch.distributed.is_initialized():
        return
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


NO_DECAY_SUFFIXES = ("bias", ".b")
"""Parameter names that are biases: nn.Linear's ``bias`` and the per-embodiment ``b`` [slots, out]."""


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters: no weight decay on biases (including the
    2-D per-embodiment ``b``), norms and other 1-D parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            ndim = len(getattr(param, "ds_shape", param.shape))  # a ZeRO-3 parameter holds an empty placeholder
            (no_decay if ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float,
                  restart_every: int = 0) -> Callable[[int], float]:
    """Learning-rate multiplier per optimizer step: linear warm-up to 1 over ``warmup_steps``,
    then a cosine decay to ``min_ratio`` at ``total_steps`` (held there afterwards). With
    ``restart_every`` > 0 the schedule starts again every that many steps (warm restarts)."""

    def factor(step: int) -> float:
        if restart_every:
            step %= restart_every
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def deepspeed_config(batch_size: int, grad_clip: float, zero_stage: int, grad_accum_steps: int = 1) -> dict[str, Any]:
    """The DeepSpeed JSON config derived from fleetloop's learner section (one rank).

    bf16 autocast is on where the accelerator supports it (CUDA with bf16); fp32 elsewhere.
    """
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


class _HfZero3:
    """What Hugging Face's ZeRO-3 integration asks of the DeepSpeed config it is told about."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def is_zero3(self) -> bool:
        return True


def build_model(build: Callable[[], torch.nn.Module], config: dict[str, Any]) -> torch.nn.Module:
    """``build()``; when ``config`` (``deepspeed_config``) is ZeRO-3, inside ``deepspeed.zero.Init``,
    so every parameter is partitioned across the ranks as it is created and no rank ever holds the
    whole model.

    Hugging Face's modules (the backbone's SigLIP and Llama, built with ``_from_config``) initialise
    their weights after construction, when under ``zero.Init`` the parameters are already empty
    shards; told about the config (its ZeRO-3 integration), they build without initialising and then
    initialise module by module on gathered parameters (rank 0's values broadcast to every rank).
    """
    if config["zero_optimization"]["stage"] != 3:
        return build()
    import deepspeed
    from transformers.integrations import deepspeed as hf_deepspeed

    init_distributed()
    told = _HfZero3(config)
    hf_deepspeed.set_hf_deepspeed_config(told)
    try:
        with deepspeed.zero.Init(config_dict_or_path=config):
            return build()
    finally:
        hf_deepspeed.unset_hf_deepspeed_config()


def gathered(model: torch.nn.Module, zero_stage: int):
    """A context in which ``model``'s parameters are whole on every rank (ZeRO-3 gathers them and
    scatters rank 0's changes on exit); a no-op below stage 3."""
    if zero_stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0)


def build_engine(model: torch.nn.Module, config: dict[str, Any], *, lr: float, weight_decay: float,
                 warmup_steps: int = 0, total_steps: int = 1, min_lr_ratio: float = 1.0, restart_every: int = 0):
    """Wrap ``model`` in a DeepSpeed engine of ``config`` (``deepspeed_config``, the one the model was
    built with by ``build_model``) with a torch AdamW optimizer and a warm-up + cosine schedule
    (``warmup_cosine``) that DeepSpeed steps at every optimizer step.

    Returns:
        The DeepSpeed engine (``engine.module`` is the model).
    """
    import deepspeed

    init_distributed()
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps, min_lr_ratio,
                                                                           restart_every))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=config)
    log.info("DeepSpeed engine ready: ZeRO stage %d, accelerator %s", config["zero_optimization"]["stage"],
             os.environ.get("DS_ACCELERATOR", "auto"))
    return engine
