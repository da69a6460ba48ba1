"""Shape checks shared by the model stages: wrong shapes fail early with a ValueError."""

from collections.abc import Sequence

import torch


def check_shape(name: str, tensor: torch.Tensor, expected: Sequence[int | None]) -> None:
    """Raise ValueError unless `tensor` has shape `expected` (None matches any size).

    Raises:
        ValueError: naming `name` and stating expected and actual shapes.
    """
    shape = tuple(tensor.shape)
    if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
        shown = ", ".join("*" if e is None else str(e) for e in expected)
        shown = f"({shown},)" if len(expected) == 1 else f"({shown})"
        raise ValueError(f"{name}: expected shape {shown}, got {shape}")


def check_ids(name: str, ids: torch.Tensor, count: int) -> None:
    """Raise ValueError unless every value of `ids` lies in [0, count)."""
    if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < count):
        raise ValueError(f"{name}: values must be in [0, {count}), got {ids.tolist()}")
