"""Episode: the item stored in a replay table; EpisodeInfo, its stored summary; and the
codecs between them and their stored form (PNG frames, float32 rows, the meta hash)."""

import io
import json
import uuid
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np
from PIL import Image

from fleetloop import limits

from . import keys
from .errors import InvalidEpisodeError
from .keys import EPISODE_ID_RE

PNG_COMPRESS_LEVEL = 1
"""zlib level for frame PNGs: fast to encode on actors, still lossless."""


def _new_episode_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Episode:
    """One trajectory of one actor, stored as one replay item.

    Camera renders are sparse (e.g. once per action chunk), so ``frames`` maps the steps
    that have a frame to that frame; step 0 always has one.
    """

    states: np.ndarray
    """float32 (T, S) proprioceptive state per step."""
    actions: np.ndarray
    """float32 (T, A) action applied at each step."""
    frames: dict[int, np.ndarray]
    """step -> uint8 (h, w, 3) RGB frame; all frames of an episode share one shape."""
    instruction: str
    """Language instruction the episode was collected under (may be empty)."""
    embodiment: str
    """Embodiment tag selecting the state/action heads, e.g. ``"so100"``."""
    source: str
    """Who produced the actions; actors write their correction class (``"demo"``, ``"relabel"``,
    ``"intervention"``, ``"pre_intervention"``, ``"robot"``: actors/dagger.py)."""
    policy_version: int
    """weights_version of the policy that acted; 0 when no learned policy did."""
    actor_id: str
    """Id of the actor that wrote the episode (may be empty for imported data)."""
    intervened: np.ndarray
    """bool (T,) whether an operator/expert overrode the policy at each step."""
    rewards: np.ndarray
    """float32 (T,) reward per step."""
    success: bool
    """Whether the episode reached its goal."""
    episode_id: str = field(default_factory=_new_episode_id)
    """Unique id; ``[A-Za-z0-9_.-]{1,128}``. Reusing an id makes a write a no-op retry."""
    labels: np.ndarray | None = None
    """float32 (T, L, A) or None: the expert's L-step action chunk from each step's state (DAgger
    labels). A labelled episode has a frame at every step, and a training window at step t trains
    on ``labels[t]`` instead of the actions t..t+H-1; its steps need not be consecutive."""
    version_changes: tuple[tuple[int, int], ...] = ()
    """``(step, version)`` where the acting policy's weights changed mid-episode (an actor that
    refreshes weights between chunks), steps increasing in (0, T): step t acted with the version of
    the last change at or before t, ``policy_version`` before the first."""

    def version_at(self, step: int) -> int:
        """Weight version of the policy that acted at ``step``."""
        return version_at(self.policy_version, self.version_changes, step)

    @property
    def label_horizon(self) -> int:
        """L of ``labels`` (0 without labels)."""
        return 0 if self.labels is None else int(self.labels.shape[1])

    @property
    def length(self) -> int:
        """Number of steps T."""
        return int(np.shape(self.states)[0]) if np.ndim(self.states) else 0

    def validate(self) -> None:
        """Check types, shapes, dtypes and values.

        Raises:
            InvalidEpisodeError: naming the first offending field and the problem.
        """
        _check_array("states", self.states, np.float32, ndim=2)
        length, _ = self.states.shape
        _check_array("actions", self.actions, np.float32, ndim=2)
        if self.actions.shape[0] != length:
            _fail("actions", f"has {self.actions.shape[0]} steps, states has {length}")
        _check_array("intervened", self.intervened, np.bool_, ndim=1)
        _check_array("rewards", self.rewards, np.float32, ndim=1)
        for name, arr in (("intervened", self.intervened), ("rewards", self.rewards)):
            if arr.shape[0] != length:
                _fail(name, f"has {arr.shape[0]} steps, states has {length}")
        self._validate_frames(length)
        if self.labels is not None:
            _check_array("labels", self.labels, np.float32, ndim=3)
            if self.labels.shape[0] != length or self.labels.shape[2] != self.actions.shape[1]:
                _fail("labels", f"has shape {self.labels.shape}, expected ({length}, L, {self.actions.shape[1]})")
            unframed = sorted(set(range(length)) - {int(step) for step in self.frames})
            if unframed:
                _fail("labels", f"steps {unframed[:5]} have a label but no frame; a labelled step needs its frame")
        for name in ("instruction", "embodiment", "source", "actor_id", "episode_id"):
            if not isinstance(getattr(self, name), str):
                _fail(name, f"must be str, got {type(getattr(self, name)).__name__}")
        for name in ("embodiment", "source"):
            if not getattr(self, name):
                _fail(name, "is empty")
        if not EPISODE_ID_RE.fullmatch(self.episode_id):
            _fail("episode_id", f"{self.episode_id!r} does not match {EPISODE_ID_RE.pattern}")
        if isinstance(self.policy_version, bool) or not isinstance(
            self.policy_version, (int, np.integer)
        ):
            _fail("policy_version", f"must be int, got {type(self.policy_version).__name__}")
        if self.policy_version < 0:
            _fail("policy_version", f"must be >= 0, got {self.policy_version}")
        if not isinstance(self.success, (bool, np.bool_)):
            _fail("success", f"must be bool, got {type(self.success).__name__}")
        self._validate_version_changes(length)

    def _validate_version_changes(self, length: int) -> None:
        last_step, last_version = 0, self.policy_version
        for change in self.version_changes:
            if len(change) != 2 or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in change):
                _fail("version_changes", f"entry {change!r} is not a (step, version) pair of ints")
            step, version = change
            if not last_step < step < length:
                _fail("version_changes", f"step {step} must be in ({last_step}, {length}): increasing, inside the episode")
            if version < last_version:
                _fail("version_changes", f"version {version} at step {step} is older than {last_version} before it")
            last_step, last_version = step, version

    def _validate_frames(self, length: int) -> None:
        if not isinstance(self.frames, dict) or not self.frames:
            _fail("frames", "is empty: at least the frame at step 0 is required")
        for step in self.frames:
            if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
                _fail("frames", f"step {step!r} is not an int")
            if not 0 <= step < length:
                _fail("frames", f"step {step} out of range [0, {length})")
        shape = None
        for step, frame in sorted(self.frames.items()):
            name = f"frames[{step}]"
            _check_array(name, frame, np.uint8, ndim=3)
            if frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
                _fail(name, f"shape {frame.shape} is not (h, w, 3) RGB")
            if shape is None:
                shape = frame.shape
            elif frame.shape != shape:
                _fail(name, f"shape {frame.shape} differs from the episode's {shape}")
        if 0 not in self.frames:
            _fail("frames", "missing the frame at step 0")


@dataclass(frozen=True)
class EpisodeInfo:
    """What the replay knows about a stored episode without reading its arrays."""

    episode_id: str
    table: str
    seq: int
    """Insertion sequence number within the table (1-based, never reused)."""
    length: int
    state_dim: int
    action_dim: int
    frame_steps: tuple[int, ...]
    """Sorted steps that have a stored camera frame."""
    frame_shape: tuple[int, int, int]
    instruction: str
    embodiment: str
    source: str
    policy_version: int
    actor_id: str
    success: bool
    nbytes: int
    """Payload bytes written for the episode (arrays plus encoded frames)."""
    label_horizon: int = 0
    """L of the episode's labels (0: none; windows then train on its executed actions)."""
    version_changes: tuple[tuple[int, int], ...] = ()
    """As ``Episode.version_changes``."""

    def version_at(self, step: int) -> int:
        """Weight version of the policy that acted at ``step``."""
        return version_at(self.policy_version, self.version_changes, step)


def version_at(first: int, changes: tuple[tuple[int, int], ...], step: int) -> int:
    """The version acting at ``step``: that of the last change at or before it, else ``first``."""
    version = first
    for change_step, changed_to in changes:
        if change_step > step:
            break
        version = changed_to
    return version


def _fail(name: str, problem: str) -> NoReturn:
    raise InvalidEpisodeError(f"episode field {name}: {problem}")


def _check_array(name: str, value, dtype, ndim: int) -> None:
    if not isinstance(value, np.ndarray):
        _fail(name, f"must be a numpy array, got {type(value).__name__}")
    if value.dtype != dtype:
        _fail(name, f"dtype is {value.dtype}, expected {np.dtype(dtype)}")
    if value.ndim != ndim:
        _fail(name, f"has shape {value.shape}, expected {ndim} dimensions")
    if value.size == 0:
        _fail(name, f"is empty (shape {value.shape})")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        bad = np.argwhere(~np.isfinite(value))[0]
        _fail(name, f"has a non-finite value (NaN/inf) at index {tuple(int(i) for i in bad)}")


def encode_png(frame: np.ndarray) -> bytes:
    """Encode a uint8 (h, w, 3) frame as a lossless PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(
        buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    return buf.getvalue()


def decode_frame(blob: bytes, info: "EpisodeInfo", step: int) -> np.ndarray:
    """Decode the stored frame at ``step`` of the episode ``info`` describes into a uint8 (h, w, 3)
    array. Its PNG header is checked against ``info.frame_shape`` (and
    ``fleetloop.limits.MAX_IMAGE_PIXELS``) before any pixel is decoded.

    Raises:
        fleetloop.limits.InputError (a ValueError): naming the episode and step: the blob is not a
            PNG, or not of the episode's frame size.
    """
    return limits.decode_png(blob, f"frame {step} of episode {info.episode_id}", info.frame_shape[:2])


def decode_floats(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Stored float32 rows as a writable float32 array of ``shape``."""
    return np.frombuffer(blob, keys.FLOAT_DTYPE).astype(np.float32).reshape(shape)


def parse_info(raw: list[bytes | None]) -> EpisodeInfo:
    """EpisodeInfo from the meta hash values in keys.META_FIELDS order."""
    meta = {name: (value or b"").decode() for name, value in zip(keys.META_FIELDS, raw)}
    return EpisodeInfo(
        episode_id=meta["episode_id"],
        table=meta["table"],
        seq=int(meta["seq"]),
        length=int(meta["length"]),
        state_dim=int(meta["state_dim"]),
        action_dim=int(meta["action_dim"]),
        frame_steps=tuple(json.loads(meta["frame_steps"])),
        frame_shape=(int(meta["frame_height"]), int(meta["frame_width"]), 3),
        instruction=meta["instruction"],
        embodiment=meta["embodiment"],
        source=meta["source"],
        policy_version=int(meta["policy_version"]),
        actor_id=meta["actor_id"],
        success=meta["success"] == "1",
        nbytes=int(meta["nbytes"]),
        label_horizon=int(meta["label_horizon"] or 0),
        version_changes=tuple((int(step), int(version)) for step, version in json.loads(meta["version_changes"] or "[]")),
    )
