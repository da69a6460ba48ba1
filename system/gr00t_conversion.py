"""Convert a released GR00T-N1 checkpoint (e.g. GR00T-N1-2B) into a fleetloop checkpoint.

Source: a directory of safetensors files, either one `model.safetensors` or shards listed
in `model.safetensors.index.json` (its `weight_map`), tensors in any float dtype (the
release is bfloat16). Names are GR00T's, e.g. `backbone.model.vision_model.vision_model.*`
(the prefix appears twice), `action_head.state_encoder.layer1.W` ([num_embodiments, in, out]).

fleetloop's module tree mirrors GR00T's, so the name map is the identity on every
parameter (`gr00t_name_map`); the converter still checks every name and shape. Tensors the
source holds but the model does not use (the release's `action_head.decode_layer.*`) are
reported in `ConversionReport.unused`, never dropped silently. The output is a fleetloop
checkpoint (`fleetloop.system.checkpoint`): the converted weights in `dtype`, the preset's
config and pass-through normalisation statistics, to be set per embodiment before acting.
"""

import json
import logging
import os
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from fleetloop.limits import InputError, read_limited
from fleetloop.system.checkpoint import save_tensors, shape_problems
from fleetloop.system.config import ModelConfig, model_preset
from fleetloop.system.errors import CheckpointMismatchError
from fleetloop.system.normalization import statistics_buffers
from fleetloop.system.policy import DualSystemPolicy

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
MAX_INDEX_BYTES = 64 << 20
"""Largest index file read: GR00T-N1-2B's (802 tensors, one line each) is about 90 KB."""


class GR00TConversionError(CheckpointMismatchError):
    """The GR00T checkpoint lacks tensors the model needs, or holds them in another shape."""


@dataclass
class ConversionReport:
    """What `convert_gr00t` did.

    Attributes:
        out_path: the fleetloop checkpoint written.
        preset: the model preset converted to.
        mapped: number of GR00T tensors mapped onto model parameters.
        unused: GR00T tensor names the model does not use (sorted).
        source_dtypes: dtype name -> number of source tensors.
        output_dtype: dtype of the written parameters.
    """

    out_path: Path
    preset: str
    mapped: int
    unused: list[str] = field(default_factory=list)
    source_dtypes: dict[str, int] = field(default_factory=dict)
    output_dtype: str = "float32"

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        dtypes = ", ".join(f"{name} x{count}" for name, count in sorted(self.source_dtypes.items()))
        lines = [
            f"wrote {self.out_path} (preset {self.preset})",
            f"mapped {self.mapped} tensors; source dtypes: {dtypes}; written as {self.output_dtype}",
            f"unused source tensors ({len(self.unused)}): {', '.join(self.unused) or 'none'}",
        ]
        return "\n".join(lines)


def _meta_model(config: ModelConfig) -> DualSystemPolicy:
    """The model of `config` on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return DualSystemPolicy(config)


def gr00t_name_map(config: ModelConfig) -> dict[str, str]:
    """GR00T tensor name -> fleetloop parameter name, for every parameter of a model of `config`.

    The identity (fleetloop mirrors GR00T's module tree); normalisation buffers are not
    GR00T tensors and are not listed.
    """
    return {name: name for name, _ in _meta_model(config).named_parameters()}


def gr00t_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """GR00T tensor name -> shape the model expects, for every mapped name."""
    params = dict(_meta_model(config).named_parameters())
    return {gr00t: tuple(params[ours].shape) for gr00t, ours in gr00t_name_map(config).items()}


def _indexed_shards(index: Path) -> set[str]:
    """The shard file names the index's ``weight_map`` lists (plain names in its directory)."""
    try:
        data = json.loads(read_limited(index, MAX_INDEX_BYTES))
    except ValueError as exc:  # also UnicodeDecodeError
        raise InputError(f"{index}: not valid JSON: {exc}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"{index}: 'weight_map' must map tensor names to shard file names")
    outside = sorted(name for name in set(weight_map.values()) if Path(name).name != name or name in ("", ".", ".."))
    if outside:
        raise InputError(f"{index}: shard names must be file names in its directory, got {outside[:5]}")
    return set(weight_map.values())


def source_files(src_dir: Path) -> list[Path]:
    """The safetensors files of checkpoint directory `src_dir` (shards from the index if present).

    Raises:
        FileNotFoundError: if the directory, an indexed shard or any safetensors file is missing.
        fleetloop.limits.InputError (a ValueError): the index is not a regular file, exceeds
            MAX_INDEX_BYTES, is not JSON with a ``weight_map`` of tensor name -> shard file name, or
            names a shard outside the directory.
    """
    if not src_dir.is_dir():
        raise FileNotFoundError(f"{src_dir}: not a directory")
    index = src_dir / INDEX_FILE
    if index.exists():
        files = [src_dir / name for name in sorted(_indexed_shards(index))]
        absent = [str(f) for f in files if not f.exists()]
        if absent:
            raise FileNotFoundError(f"{index} lists shards that do not exist: {absent}")
        return files
    files = sorted(src_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{src_dir}: no *.safetensors files and no {INDEX_FILE}")
    return files


def convert_gr00t(
    src_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    preset: str = "n1-2b",
    dtype: torch.dtype = torch.float32,
) -> ConversionReport:
    """Convert the GR00T checkpoint in `src_dir` into the fleetloop checkpoint `out_path`.

    Args:
        src_dir: directory of GR00T safetensors (sharded with an index, or not).
        out_path: the safetensors file to write.
        preset: fleetloop model preset whose architecture the checkpoint has.
        dtype: dtype of the written parameters (the model computes in float32).

    Returns:
        The ConversionReport (mapped count, unused names, dtypes).

    Raises:
        GR00TConversionError (a ValueError): naming every tensor the model needs that the
        source lacks or holds in another shape, with expected and actual shapes.
        FileNotFoundError: for a missing directory or shard.
        fleetloop.limits.InputError (a ValueError): the shard index exceeds MAX_INDEX_BYTES.
    """
    src_dir, out_path = Path(src_dir), Path(out_path)
    config = model_preset(preset)
    names = gr00t_name_map(config)
    expected = gr00t_shapes(config)
    with ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(path), framework="pt")) for path in source_files(src_dir)]
        where = {name: handle for handle in handles for name in handle.keys()}
        actual = {name: tuple(handle.get_slice(name).get_shape()) for name, handle in where.items()}
        problems = [p for p in shape_problems(expected, actual) if not p.startswith("unexpected:")]
        if problems:
            raise GR00TConversionError(str(src_dir), problems)
        dtypes = Counter(str(where[name].get_slice(name).get_dtype()) for name in where)
        tensors = {names[name]: where[name].get_tensor(name).to(dtype) for name in expected}
    head = config.action_head
    max_dims = {"state": head.max_state_dim, "action": head.max_action_dim}
    tensors |= statistics_buffers(head.max_num_embodiments, max_dims)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, config, out_path)
    report = ConversionReport(
        out_path=out_path,
        preset=preset,
        mapped=len(expected),
        unused=sorted(set(actual) - set(expected)),
        source_dtypes=dict(dtypes),
        output_dtype=str(dtype).removeprefix("torch."),
    )
    if report.unused:
        logger.warning("GR00T tensors not used by the model: %s", report.unused)
    logger.info("converted %s -> %s: %d tensors", src_dir, out_path, report.mapped)
    return report
