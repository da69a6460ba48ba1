"""Embodiments: the registry of tags, slot ids and state/action layouts.

An *embodiment* is a robot body with its own state and action layout. Each one owns a
slot id (< max_num_embodiments), numbered as GR00T's `EMBODIMENT_TAG_MAPPING` so released
weights keep their meaning. A *layout* names slices of the raw state and action vectors,
as GR00T's `meta/modality.json` does, picks the keys the model consumes (their slices are
concatenated in layout order, then zero-padded to max dims) and a normalisation mode per key.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

NormMode = Literal["min_max", "q99", "mean_std", "binary"]
NORM_MODES: tuple[str, ...] = ("min_max", "q99", "mean_std", "binary")
"""Normalisation modes; a mode's index is its code in the model's `*_mode` buffers."""
KINDS = ("state", "action")

EMBODIMENT_TAGS: dict[str, int] = {
    "gr1": 24,
    "gr1_pose": 29,
    "sim_arm": 30,
    "new_embodiment": 31,
}
"""Embodiment tag -> slot id; "gr1" and "new_embodiment" as numbered by GR00T N1; "gr1_pose" is
the simulated GR-1 whose state also carries the named object's pose (a free slot)."""


@dataclass(frozen=True)
class EmbodimentLayout:
    """Named slices of one embodiment's raw state and action vectors.

    Attributes:
        tag: registry tag, e.g. "gr1".
        state, action: key -> (start, end), covering 0..D of the raw vector without gaps.
        state_keys, action_keys: keys the model consumes, in layout order; empty = all.
        modes: "state.<key>" / "action.<key>" -> normalisation mode; default "min_max".
    """

    tag: str
    state: Mapping[str, tuple[int, int]]
    action: Mapping[str, tuple[int, int]]
    state_keys: tuple[str, ...] = ()
    action_keys: tuple[str, ...] = ()
    modes: Mapping[str, NormMode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in KINDS:
            slices = sorted(self.slices(kind).values())
            ends = [0] + [end for _, end in slices]
            if not slices or any(start != end or start >= stop for (start, stop), end in zip(slices, ends)):
                raise ValueError(f"{self.tag}: {kind} slices must cover 0..D without gaps or overlaps, got {slices}")
            unknown = [key for key in getattr(self, f"{kind}_keys") if key not in self.slices(kind)]
            if unknown:
                raise ValueError(f"{self.tag}: {kind}_keys {unknown} are not {kind} keys {list(self.slices(kind))}")
        for name, mode in self.modes.items():
            kind, _, key = name.partition(".")
            if kind not in KINDS or key not in self.slices(kind) or mode not in NORM_MODES:
                raise ValueError(
                    f"{self.tag}: modes[{name!r}]={mode!r}: expected a '<state|action>.<key>' name "
                    f"and a mode in {NORM_MODES}"
                )

    def slices(self, kind: str) -> Mapping[str, tuple[int, int]]:
        """key -> (start, end) of the raw `kind` vector."""
        return self.state if kind == "state" else self.action

    def raw_dim(self, kind: str) -> int:
        """Length of the raw `kind` vector."""
        return max(end for _, end in self.slices(kind).values())

    def model_keys(self, kind: str) -> tuple[str, ...]:
        """Keys the model consumes, in layout order."""
        chosen = getattr(self, f"{kind}_keys") or tuple(self.slices(kind))
        return tuple(sorted(chosen, key=lambda key: self.slices(kind)[key][0]))

    def model_dim(self, kind: str) -> int:
        """Length of the model's `kind` vector (the consumed keys, concatenated)."""
        return sum(end - start for start, end in (self.slices(kind)[key] for key in self.model_keys(kind)))

    def select(self, kind: str, raw: np.ndarray) -> np.ndarray:
        """Raw (..., raw_dim) -> model (..., model_dim): the consumed keys' slices, concatenated."""
        parts = [raw[..., start:end] for start, end in (self.slices(kind)[key] for key in self.model_keys(kind))]
        return np.concatenate(parts, axis=-1)

    def split(self, kind: str, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Model (..., model_dim) -> {key: (..., key width)} for the consumed keys."""
        out, offset = {}, 0
        for key in self.model_keys(kind):
            start, end = self.slices(kind)[key]
            out[key] = vector[..., offset : offset + end - start]
            offset += end - start
        return out

    def scatter(self, kind: str, vector: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Model (..., model_dim) -> raw (..., raw_dim): a copy of ``base`` with the consumed
        keys' slices taken from ``vector`` (the inverse of ``select`` on those keys)."""
        raw = np.array(np.broadcast_to(base, (*vector.shape[:-1], self.raw_dim(kind))), dtype=vector.dtype)
        for key, part in self.split(kind, vector).items():
            start, end = self.slices(kind)[key]
            raw[..., start:end] = part
        return raw

    def dim_modes(self, kind: str) -> tuple[str, ...]:
        """Normalisation mode of every model dim of `kind`."""
        modes = []
        for key in self.model_keys(kind):
            start, end = self.slices(kind)[key]
            modes += [self.modes.get(f"{kind}.{key}", "min_max")] * (end - start)
        return tuple(modes)


_GR1_PARTS = {
    "left_arm": (0, 7),
    "left_hand": (7, 13),
    "left_leg": (13, 19),
    "neck": (19, 22),
    "right_arm": (22, 29),
    "right_hand": (29, 35),
    "right_leg": (35, 41),
    "waist": (41, 44),
}

_LAYOUTS: dict[str, EmbodimentLayout] = {
    "gr1": EmbodimentLayout(
        tag="gr1",
        state=_GR1_PARTS,
        action=_GR1_PARTS,
        action_keys=("left_arm", "left_hand", "right_arm", "right_hand"),
    ),
    "gr1_pose": EmbodimentLayout(
        tag="gr1_pose",
        state={**_GR1_PARTS, "object_pose": (44, 50)},
        action=_GR1_PARTS,
        action_keys=("left_arm", "left_hand", "right_arm", "right_hand"),
    ),
    "sim_arm": EmbodimentLayout(
        tag="sim_arm",
        state={"joint_position": (0, 2), "joint_velocity": (2, 4)},
        action={"joint_target": (0, 2)},
    ),
}
"""Layouts by tag. gr1's model actions are its arms and hands (26 dims), as GR00T's
`fourier_gr1_arms_only` data config; all 44 actions do not fit max_action_dim = 32. gr1_pose
is gr1 with ``object_pose`` appended to the state: the named object's xyz and its goal point's
xyz in the pelvis frame (GR1PickPlaceEnv(state_includes_object_pose=True))."""


def embodiment_id(tag: str) -> int:
    """Slot id of embodiment `tag`.

    Raises:
        ValueError: if `tag` is not registered, listing the known tags.
    """
    if tag not in EMBODIMENT_TAGS:
        raise ValueError(f"unknown embodiment tag {tag!r}; known tags: {sorted(EMBODIMENT_TAGS)}")
    return EMBODIMENT_TAGS[tag]


def embodiment_tag(slot: int) -> str | None:
    """Tag registered for slot id `slot`, or None."""
    return next((tag for tag, value in EMBODIMENT_TAGS.items() if value == slot), None)


def embodiment_layout(embodiment: str | int) -> EmbodimentLayout | None:
    """Layout of an embodiment given by tag or slot id; None when it has none (e.g. new_embodiment).

    Raises:
        ValueError: for an unknown tag.
    """
    tag = embodiment if isinstance(embodiment, str) else embodiment_tag(embodiment)
    if isinstance(embodiment, str):
        embodiment_id(tag)
    return _LAYOUTS.get(tag) if tag is not None else None


def register_embodiment(tag: str, slot: int, layout: EmbodimentLayout | None = None) -> None:
    """Add embodiment `tag` at slot id `slot`, optionally with a layout.

    Raises:
        ValueError: if the tag or slot is taken by another embodiment, or the layout's tag differs.
    """
    owner = embodiment_tag(slot)
    if EMBODIMENT_TAGS.get(tag, slot) != slot or owner not in (None, tag):
        raise ValueError(
            f"embodiment {tag!r} at slot {slot} clashes with the registry: {tag!r} -> {EMBODIMENT_TAGS.get(tag)}, "
            f"slot {slot} -> {owner!r}"
        )
    if layout is not None and layout.tag != tag:
        raise ValueError(f"layout.tag={layout.tag!r} differs from tag={tag!r}")
    EMBODIMENT_TAGS[tag] = slot
    if layout is not None:
        _LAYOUTS[tag] = layout
