"""Per-embodiment normalisation of states and actions, kept as persistent model buffers.

Modes, per dim (GR00T's names; `y` is the normalised value):
    min_max   y = 2 (x - min) / (max - min) - 1            max == min -> y = 0
    q99       y = clip(2 (x - q01) / (q99 - q01) - 1, -1, 1)  q99 == q01 -> y = 0
    mean_std  y = (x - mean) / std                          std == 0 -> y = 0
    binary    y = +1 if x > 0.5 else -1;  inverse: x = 1 if y > 0 else 0
For every kind (state, action) the model holds buffers `<kind>_<stat>` (slots, D) float for
the stats min, max, q01, q99, mean, std, `<kind>_mode` (slots, D) long (index in NORM_MODES)
and `<kind>_dim` (slots,) long (real dims; 0 = no statistics registered). Unregistered slots
pass values through (min_max with min -1, max 1).
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from fleetloop.system.embodiment import KINDS, NORM_MODES, embodiment_layout, embodiment_tag

STATS = ("min", "max", "q01", "q99", "mean", "std")
DEFAULTS = {"min": -1.0, "max": 1.0, "q01": -1.0, "q99": 1.0, "mean": 0.0, "std": 1.0}
REQUIRED = {"min_max": ("min", "max"), "q99": ("q01", "q99"), "mean_std": ("mean", "std"), "binary": ()}
"""Statistics each mode needs."""


@dataclass(frozen=True)
class Statistics:
    """Per-dim statistics of one embodiment's state or action vector (D dims) and their modes.

    modes: one mode per dim, or one for all dims; None = the embodiment layout's modes
    (min_max without a layout). Stats a mode does not need may be None.
    """

    modes: str | Sequence[str] | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def of(cls, values: np.ndarray, modes: str | Sequence[str] | None = None) -> "Statistics":
        """Every statistic of samples `values` (N, D) or (N, H, D), over all but the last axis."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1, np.shape(values)[-1])
        q01, q99 = np.quantile(flat, [0.01, 0.99], axis=0)
        return cls(modes, flat.min(0), flat.max(0), q01, q99, flat.mean(0), flat.std(0))

    def select(self, select) -> "Statistics":
        """Apply `select` (raw vector -> model vector) to every stat and per-dim mode list."""
        modes = self.modes
        if modes is not None and not isinstance(modes, str):
            modes = list(select(np.asarray(modes, dtype=object)))
        stats = {stat: select(np.asarray(getattr(self, stat))) for stat in STATS if getattr(self, stat) is not None}
        return replace(self, modes=modes, **stats)


def collapse_narrow_ranges(low: np.ndarray, high: np.ndarray, min_range: float,
                           keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) with every dim whose range is below ``min_range`` collapsed to its midpoint,
    except the dims ``keep`` marks.

    Min/max scaling maps a dim's range onto [-1, 1]; on a dim that only jitters (a joint held
    still, 1e-4 rad of simulation noise) that magnifies the noise to the full range, and a new
    episode's noise lands far outside it. A collapsed dim is constant: normalised to 0, and an
    action dim unnormalises to the midpoint. A narrow dim that differs from episode to episode
    (a target's x, placed within a centimetre) carries the task: ``varies_across_episodes``
    marks it to keep.
    """
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    narrow = (high - low) < min_range
    if keep is not None:
        narrow &= ~np.asarray(keep, bool)
    middle = (low + high) / 2
    return np.where(narrow, middle, low), np.where(narrow, middle, high)


def varies_across_episodes(mean_min: np.ndarray, mean_max: np.ndarray, within_max: np.ndarray,
                           min_range: float) -> np.ndarray:
    """bool per dim: the per-episode means spread wider than any one episode's own range and than
    1 % of ``min_range``: the dim tells episodes apart (a goal's coordinate), it does not jitter."""
    spread = np.asarray(mean_max, np.float64) - np.asarray(mean_min, np.float64)
    return (spread > np.asarray(within_max, np.float64)) & (spread > 0.01 * min_range)


def statistics_buffers(slots: int, max_dims: dict[str, int]) -> dict[str, torch.Tensor]:
    """Default (pass-through) statistics buffers, name -> tensor, for kinds with max dims `max_dims`."""
    buffers = {}
    for kind, max_dim in max_dims.items():
        for stat in STATS:
            buffers[f"{kind}_{stat}"] = torch.full((slots, max_dim), DEFAULTS[stat])
        buffers[f"{kind}_mode"] = torch.zeros(slots, max_dim, dtype=torch.long)
        buffers[f"{kind}_dim"] = torch.zeros(slots, dtype=torch.long)
    return buffers


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, 0 where den == 0."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


def normalize(x: torch.Tensor, stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """Raw x -> normalised; `stats` holds the STATS and "mode", each broadcastable to x."""
    mode = stats["mode"]
    min_max = 2 * _ratio(x - stats["min"], stats["max"] - stats["min"]) - 1
    min_max = torch.where(stats["max"] == stats["min"], torch.zeros_like(x), min_max)
    q99 = 2 * _ratio(x - stats["q01"], stats["q99"] - stats["q01"]) - 1
    q99 = torch.where(stats["q99"] == stats["q01"], torch.zeros_like(x), q99.clamp(-1, 1))
    mean_std = _ratio(x - stats["mean"], stats["std"])
    binary = torch.where(x > 0.5, 1.0, -1.0).to(x.dtype)
    return _pick(mode, (min_max, q99, mean_std, binary))


def unnormalize(y: torch.Tensor, stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of normalize (constant dims return min, q01 or mean; q99 clips y to [-1, 1])."""
    mode = stats["mode"]
    min_max = (y + 1) / 2 * (stats["max"] - stats["min"]) + stats["min"]
    q99 = (y.clamp(-1, 1) + 1) / 2 * (stats["q99"] - stats["q01"]) + stats["q01"]
    mean_std = y * stats["std"] + stats["mean"]
    binary = (y > 0).to(y.dtype)
    return _pick(mode, (min_max, q99, mean_std, binary))


def _pick(mode: torch.Tensor, candidates: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Per element, the candidate whose index in NORM_MODES is `mode`."""
    out = candidates[0]
    for code, candidate in enumerate(candidates[1:], start=1):
        out = torch.where(mode == code, candidate, out)
    return out


class NormalizationMixin(nn.Module):
    """Statistics buffers and their use; mixed into DualSystemPolicy (buffers stay top-level names)."""

    def _register_statistics(self, slots: int, max_state_dim: int, max_action_dim: int) -> None:
        for name, tensor in statistics_buffers(slots, {"state": max_state_dim, "action": max_action_dim}).items():
            self.register_buffer(name, tensor)

    def set_normalization(
        self,
        embodiment_id: int,
        state_min: np.ndarray | torch.Tensor,
        state_max: np.ndarray | torch.Tensor,
        action_min: np.ndarray | torch.Tensor,
        action_max: np.ndarray | torch.Tensor,
    ) -> None:
        """Register min/max statistics (mode min_max) of one embodiment; see set_statistics."""
        self.set_statistics(
            embodiment_id,
            state=Statistics("min_max", min=state_min, max=state_max),
            action=Statistics("min_max", min=action_min, max=action_max),
        )

    def set_statistics(self, embodiment_id: int, state: Statistics, action: Statistics) -> None:
        """Register the statistics and modes of one embodiment's real state and action dims.

        Vectors may cover the raw layout (then the layout's model keys are selected) or the
        model's dims. Also records the real dims (`state_dim[id]`, `action_dim[id]`), which
        `unnormalize_action` uses to zero padded dims and `Policy.act` to slice its output.

        Raises:
            ValueError: naming the stat, for an out-of-range id, wrong dims, a missing stat a
            mode needs, non-finite values, min > max, q01 > q99, std < 0 or an unknown mode.
        """
        slots = self.state_min.shape[0]
        if not 0 <= embodiment_id < slots:
            raise ValueError(f"embodiment_id: expected 0..{slots - 1}, got {embodiment_id}")
        rows = {kind: self._statistics_rows(embodiment_id, kind, stats) for kind, stats in zip(KINDS, (state, action))}
        with torch.no_grad():
            for kind, (dim, values) in rows.items():
                for name, row in values.items():
                    buffer = getattr(self, f"{kind}_{name}")
                    buffer[embodiment_id] = 0 if name == "mode" else DEFAULTS[name]
                    buffer[embodiment_id, :dim] = row
                getattr(self, f"{kind}_dim")[embodiment_id] = dim

    def _statistics_rows(self, slot: int, kind: str, stats: Statistics) -> tuple[int, dict[str, torch.Tensor]]:
        """Validated (dim, {stat or "mode": row}) of `stats` for the model's `kind` vector."""
        max_dim = getattr(self, f"{kind}_min").shape[1]
        layout = embodiment_layout(slot)
        given = [np.shape(getattr(stats, s)) for s in STATS if getattr(stats, s) is not None]
        if layout is not None and given and given[0] == (layout.raw_dim(kind),):
            stats = stats.select(lambda raw: layout.select(kind, raw))
        rows = {}
        for stat in STATS:
            value = getattr(stats, stat)
            if value is not None:
                rows[stat] = _as_vector(f"{kind}_{stat}", value, max_dim)
        if not rows:
            raise ValueError(f"{kind}: no statistics given (at least one of {STATS} fixes the dims)")
        dim = next(iter(rows.values())).shape[0]
        for stat, row in rows.items():
            if row.shape[0] != dim:
                raise ValueError(f"{kind}_{next(iter(rows))} has {dim} dims but {kind}_{stat} has {row.shape[0]}")
        if layout is not None and dim != layout.model_dim(kind):
            raise ValueError(
                f"{kind} statistics: expected {layout.model_dim(kind)} (model) or {layout.raw_dim(kind)} (raw) "
                f"dims for embodiment {embodiment_tag(slot)!r}, got {dim}"
            )
        modes = stats.modes if stats.modes is not None else (layout.dim_modes(kind) if layout else "min_max")
        modes = [modes] * dim if isinstance(modes, str) else list(modes)
        unknown = sorted({m for m in modes if m not in NORM_MODES})
        if len(modes) != dim or unknown:
            raise ValueError(f"{kind} modes: expected {dim} modes from {NORM_MODES}, got {modes}")
        for mode in set(modes):
            missing = [f"{kind}_{s}" for s in REQUIRED[mode] if s not in rows]
            if missing:
                raise ValueError(f"{kind}: mode {mode!r} needs {missing}")
        for low, high in (("min", "max"), ("q01", "q99")):
            if low in rows and high in rows and (rows[low] > rows[high]).any():
                dims = torch.nonzero(rows[low] > rows[high]).flatten().tolist()
                raise ValueError(f"{kind}_{low} exceeds {kind}_{high} at dims {dims}")
        if "std" in rows and (rows["std"] < 0).any():
            raise ValueError(f"{kind}_std: must be >= 0, got {rows['std'].tolist()}")
        rows["mode"] = torch.tensor([NORM_MODES.index(m) for m in modes], dtype=torch.long)
        return dim, rows

    def _stats(self, kind: str, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """{stat or "mode": (B, D)} of `kind` for embodiment ids (B,)."""
        return {name: getattr(self, f"{kind}_{name}")[ids] for name in (*STATS, "mode")}

    def normalize_state(self, state: torch.Tensor, state_mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Raw state (B, S) -> normalised, padded dims zeroed."""
        return normalize(state, self._stats("state", ids)) * state_mask

    def normalize_action(self, action: torch.Tensor, action_mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Raw action (B, H, A) -> normalised, padded dims zeroed."""
        stats = {name: value[:, None] for name, value in self._stats("action", ids).items()}
        return normalize(action, stats) * action_mask

    def unnormalize_action(self, action: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Normalised action (B, H, A) -> raw units, dims beyond the registered action_dim zeroed."""
        stats = {name: value[:, None] for name, value in self._stats("action", ids).items()}
        raw = unnormalize(action, stats)
        dims = self.action_dim[ids]
        real = torch.arange(raw.shape[-1], device=raw.device)[None, :] < dims[:, None]
        real = real | (dims == 0)[:, None]
        return raw * real[:, None, :]


def _as_vector(name: str, value: np.ndarray | torch.Tensor, max_dim: int) -> torch.Tensor:
    """A finite 1-D float32 tensor of at most max_dim entries, or ValueError naming `name`."""
    vector = torch.as_tensor(np.asarray(value, dtype=np.float32))
    if vector.ndim != 1 or not 0 < vector.shape[0] <= max_dim:
        raise ValueError(f"{name}: expected a vector of 1..{max_dim} dims, got shape {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        raise ValueError(f"{name}: values must be finite, got {vector.tolist()}")
    return vector
