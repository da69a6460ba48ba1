"""Processor: raw numpy samples -> the model's batch of tensors.

A sample is a dict with:
    image          (h, w, 3) uint8, any size (resized to the model's image_size)
    state          (S,) float, S <= max_state_dim
    action         (H, A) float, A <= max_action_dim (optional: absent at inference)
    action_is_pad  (H,) bool, True on steps padded past the episode's end (optional): they
                   are left out of ``action_mask`` and so out of the loss
    weight         float >= 0, the sample's weight in the loss (optional, with actions: all
                   samples or none)
    instruction    str
    embodiment_id  int slot id, or a registered embodiment tag (str)
For an embodiment with a layout (`fleetloop.system.embodiment`), state and action are its
raw vectors (S and A exactly the layout's raw dims) and the layout's model keys are
selected. The batch keys are listed in `fleetloop.system.policy`.
"""

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fleetloop.system.config import ModelConfig
from fleetloop.system.embodiment import embodiment_id, embodiment_layout
from fleetloop.system.tokenizer import load_tokenizer

REQUIRED_KEYS = {
    "image": "(h, w, 3) uint8",
    "state": "(S,) float",
    "instruction": "str",
    "embodiment_id": "int or tag",
}
"""Keys every sample must have, with what they hold; "action" is optional but must be in all samples or none."""


class Processor:
    """Validates, pads, tokenises and stacks samples for a model of `config`."""

    def __init__(self, config: ModelConfig, tokenizer_dir: str | os.PathLike | None = None):
        """Args:
        config: the model's config.
        tokenizer_dir: local directory of the pretrained tokenizer (llm.tokenizer "pretrained").
        """
        self.config = config
        self.tokenizer = load_tokenizer(config.llm, tokenizer_dir)

    def image_to_tensor(self, image: np.ndarray) -> torch.Tensor:
        """(h, w, 3) uint8 -> (3, S, S) float in [-1, 1] (SigLIP normalisation), bilinear resize."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            raise ValueError(f"image: expected an (h, w, 3) uint8 array, got {type(image).__name__} {shape}")
        side = self.config.vision.image_size
        pixels = torch.tensor(image).permute(2, 0, 1).float().unsqueeze(0)  # a copy: frames may be read-only
        if pixels.shape[-2:] != (side, side):
            pixels = F.interpolate(pixels, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            pixels = pixels.clamp(0, 255)
        return (pixels[0] / 127.5) - 1.0

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Stack samples into a batch; action and action_mask only when samples carry actions.

        Raises:
            ValueError: naming the key, for a missing key, NaN/inf values, a state above
            max_state_dim, an action above max_action_dim or with the wrong horizon, a
            malformed action_is_pad, or an out-of-range embodiment_id.
        """
        if not samples:
            raise ValueError("samples: expected at least one sample, got none")
        head = self.config.action_head
        with_action = "action" in samples[0]
        if any(("action" in s) != with_action for s in samples):
            raise ValueError("action: present in some samples but not in others")
        batch_size = len(samples)
        state = torch.zeros(batch_size, head.max_state_dim)
        state_mask = torch.zeros(batch_size, head.max_state_dim, dtype=torch.bool)
        action = torch.zeros(batch_size, head.action_horizon, head.max_action_dim)
        action_mask = torch.zeros(batch_size, head.action_horizon, head.max_action_dim, dtype=torch.bool)
        ids = torch.zeros(batch_size, dtype=torch.long)
        images = []
        for row, sample in enumerate(samples):
            missing = {key: what for key, what in REQUIRED_KEYS.items() if key not in sample}
            if missing:
                raise ValueError(f"sample {row} is missing keys {list(missing)}; expected {missing}")
            ids[row] = _embodiment(sample["embodiment_id"], head.max_num_embodiments)
            layout = embodiment_layout(int(ids[row]))
            images.append(self.image_to_tensor(sample["image"]))
            vector = _finite_array("state", sample["state"], ndim=1)
            if layout is not None:
                _check_dim("state", vector.shape, layout.raw_dim("state"), layout.tag)
                vector = layout.select("state", vector)
            if vector.shape[0] > head.max_state_dim:
                raise ValueError(f"state: {vector.shape[0]} dims exceed max_state_dim={head.max_state_dim}")
            state[row, : vector.shape[0]] = torch.from_numpy(vector)
            state_mask[row, : vector.shape[0]] = True
            if with_action:
                chunk = _finite_array("action", sample["action"], ndim=2)
                if chunk.shape[0] != head.action_horizon:
                    raise ValueError(f"action: expected horizon {head.action_horizon}, got {chunk.shape[0]} steps")
                if layout is not None:
                    _check_dim("action", chunk.shape, layout.raw_dim("action"), layout.tag)
                    chunk = layout.select("action", chunk)
                if chunk.shape[1] > head.max_action_dim:
                    raise ValueError(f"action: {chunk.shape[1]} dims exceed max_action_dim={head.max_action_dim}")
                action[row, :, : chunk.shape[1]] = torch.from_numpy(chunk)
                action_mask[row, :, : chunk.shape[1]] = True
                if "action_is_pad" in sample:
                    action_mask[row, _is_pad(sample["action_is_pad"], head.action_horizon)] = False
        weighted = with_action and "weight" in samples[0]
        if with_action and any(("weight" in s) != weighted for s in samples):
            raise ValueError("weight: present in some samples but not in others")
        instructions = [s["instruction"] for s in samples]
        if not all(isinstance(text, str) for text in instructions):
            raise ValueError(f"instruction: expected str, got {[type(t).__name__ for t in instructions]}")
        input_ids, attention_mask = self.tokenizer(instructions)
        batch = {
            "pixel_values": torch.stack(images),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "state": state,
            "state_mask": state_mask,
            "embodiment_id": ids,
        }
        if with_action:
            batch["action"] = action
            batch["action_mask"] = action_mask
        if weighted:
            weights = torch.tensor([float(s["weight"]) for s in samples])
            if not (torch.isfinite(weights).all() and (weights >= 0).all()):
                raise ValueError(f"weight: expected finite weights >= 0, got {weights.tolist()}")
            batch["sample_weight"] = weights
        return batch


def _finite_array(key: str, value: Any, ndim: int) -> np.ndarray:
    """`value` as a finite float32 array of `ndim` dims, or ValueError naming `key`."""
    array = np.asarray(value, dtype=np.float32)
    if array.ndim != ndim:
        raise ValueError(f"{key}: expected {ndim} dims, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{key}: contains NaN or inf values")
    return array


def _is_pad(value: Any, horizon: int) -> torch.Tensor:
    """`value` as a bool (horizon,) tensor whose first step is real, or ValueError."""
    array = np.asarray(value)
    if array.dtype != np.bool_ or array.shape != (horizon,):
        raise ValueError(f"action_is_pad: expected a bool array of shape ({horizon},), got {array.dtype} {array.shape}")
    if array[0]:
        raise ValueError("action_is_pad: the first step of a window must be real")
    return torch.from_numpy(array.copy())


def _check_dim(key: str, shape: tuple[int, ...], expected: int, tag: str) -> None:
    """ValueError naming `key` unless the last dim of `shape` is the layout's raw dim."""
    if shape[-1] != expected:
        wanted = (*shape[:-1], expected)
        raise ValueError(f"{key}: expected shape {wanted} for embodiment {tag!r}, got {shape}")


def _embodiment(value: Any, count: int) -> int:
    """`value` (slot id or registered tag) as an embodiment id in [0, count), or ValueError."""
    if isinstance(value, str):
        value = embodiment_id(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < count:
        raise ValueError(f"embodiment_id: expected an int in [0, {count}), got {value!r}")
    return int(value)
