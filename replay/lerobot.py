"""The LeRobot v2.0/v2.1 dataset layout in Isaac-GR00T's flavour, as path templates and
paired ``load_*``/``write_*`` helpers.

A dataset is a directory::

    meta/info.json               fps, features, path templates, codebase_version
    meta/episodes.jsonl          {"episode_index", "tasks", "length"} per episode
    meta/tasks.jsonl             {"task_index", "task"}: language instructions
    meta/modality.json           GR00T: named slices of the state/action vectors
    meta/stats.json              optional: per-feature mean/std/min/max/q01/q99
    meta/episodes_stats.jsonl    optional (v2.1): per-episode statistics
    data/chunk-XXX/episode_XXXXXX.parquet
    videos/chunk-XXX/<camera key>/episode_XXXXXX.mp4

Totals in ``info.json`` (``total_videos``, ``total_chunks``, ``splits``, ...) are
informational: readers derive everything from the files and ``episodes.jsonl``.

Readers treat a dataset as untrusted input: every file is read only if it is a regular file
within its size limit, path templates may name only files inside the dataset, and anything
malformed raises :class:`DatasetError` naming the file.
"""

import json
import logging
import math
import re
import string
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from fleetloop.limits import read_limited

logger = logging.getLogger(__name__)

CODEBASE_VERSION = "v2.1"
"""Version written by export."""
READABLE_VERSIONS: tuple[str, ...] = ("v2.0", "v2.1")
"""Versions ingest accepts (``info.json`` ``codebase_version``)."""

INFO_PATH = "meta/info.json"
EPISODES_PATH = "meta/episodes.jsonl"
TASKS_PATH = "meta/tasks.jsonl"
MODALITY_PATH = "meta/modality.json"
STATS_PATH = "meta/stats.json"
EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"
DEFAULT_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
DEFAULT_VIDEO_PATH = (
    "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
)
DEFAULT_CHUNK_SIZE = 1000

MAX_META_FILE_BYTES = 64 << 20
"""Largest ``meta/`` file read. ``episodes.jsonl`` grows by ~150 bytes an episode: room for ~400k
episodes (the GR-1 dataset's meta files are 16 KB in all); parsing a file costs ~10x its size."""
MAX_EPISODE_INDEX = 99_999_999
"""Largest ``episode_index``: 8 digits, 100x the 6-digit file names LeRobot writes; keeps file
names and replay ids (``<name>-<hash>-<index>``, at most 128 characters) short."""
TEMPLATE_FIELDS = ("episode_chunk", "episode_index", "video_key")
"""Fields a ``data_path``/``video_path`` template may use."""
_TEMPLATE_SPEC = re.compile(r"0?\d{0,2}d?")
"""Format specs a template field may carry: an optional zero-padded width below 100, e.g. ``06d``."""

STATE_KEY = "observation.state"
ACTION_KEY = "action"
TASK_DESCRIPTION_KEY = "annotation.human.action.task_description"
"""Column holding, per row, an index into ``meta/tasks.jsonl`` (GR00T's annotation)."""
TASK_INDEX_KEY = "task_index"
REWARD_KEY = "next.reward"
DONE_KEY = "next.done"
SUCCESS_KEY = "next.success"


class DatasetError(ValueError):
    """A dataset cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class Modality:
    """GR00T's ``modality.json`` state/action layout: part name -> (start, end) slice of
    the ``observation.state`` / ``action`` vector, in file order."""

    state: dict[str, tuple[int, int]]
    action: dict[str, tuple[int, int]]

    @classmethod
    def whole(cls, state_dim: int, action_dim: int) -> "Modality":
        """One part ``state`` / ``action`` covering the whole vector."""
        return cls(state={"state": (0, state_dim)}, action={"action": (0, action_dim)})

    def check(self, state_dim: int, action_dim: int, where: str) -> None:
        """Check every slice is non-empty and inside its vector.

        Raises:
            DatasetError: naming ``where``, the part and the slice.
        """
        for group, parts, dim, key in (
            ("state", self.state, state_dim, STATE_KEY),
            ("action", self.action, action_dim, ACTION_KEY),
        ):
            for name, (start, end) in parts.items():
                if not 0 <= start < end <= dim:
                    raise DatasetError(
                        f"{where}: {group}.{name} slice {start}:{end} does not fit the "
                        f"{dim}-dim {key} vector"
                    )

    def to_json(self, camera: str) -> dict[str, Any]:
        """The ``modality.json`` document for this layout, one camera and the task
        description annotation."""
        return {
            "state": {n: {"start": s, "end": e} for n, (s, e) in self.state.items()},
            "action": {n: {"start": s, "end": e} for n, (s, e) in self.action.items()},
            "video": {camera.rsplit(".", 1)[-1]: {"original_key": camera}},
            "annotation": {TASK_DESCRIPTION_KEY.removeprefix("annotation."): {}},
        }


def episode_file(
    root: Path, template: str, episode_index: int, chunks_size: int, video_key: str = ""
) -> Path:
    """Path of one episode's parquet or video file from an info.json path template; the
    chunk is ``episode_index // chunks_size`` (``total_chunks`` is not trusted)."""
    return root / template.format(
        episode_chunk=episode_index // chunks_size,
        episode_index=episode_index,
        video_key=video_key,
    )


@dataclass(frozen=True)
class DatasetMeta:
    """The ``meta/`` files of a dataset on disk, loaded and checked by :meth:`load`."""

    root: Path
    info: dict[str, Any]
    episodes: list[dict[str, Any]]
    """``episodes.jsonl`` rows sorted by episode_index."""
    tasks: dict[int, str]
    modality: Modality
    stats: dict[str, dict[str, np.ndarray]] | None
    """``stats.json`` if present."""

    @classmethod
    def load(cls, root: Path) -> "DatasetMeta":
        """Load and check every meta file ingest needs.

        Raises:
            DatasetError: ``root`` is not a dataset, or a meta file is missing/malformed.
        """
        root = Path(root)
        info = load_info(root)
        for key in ("data_path", "video_path"):
            if info.get(key) is not None:
                check_template(info[key], f"{root / INFO_PATH}: {key}")
        return cls(
            root=root,
            info=info,
            episodes=load_episodes(root),
            tasks=load_tasks(root),
            modality=load_modality(root),
            stats=load_stats(root),
        )

    @property
    def fps(self) -> float:
        return float(self.info["fps"])

    @property
    def chunks_size(self) -> int:
        size = self.info.get("chunks_size")
        return size if isinstance(size, int) and size > 0 else DEFAULT_CHUNK_SIZE

    def data_path(self, episode_index: int) -> Path:
        template = self.info.get("data_path") or DEFAULT_DATA_PATH
        return episode_file(self.root, template, episode_index, self.chunks_size)

    def video_path(self, video_key: str, episode_index: int) -> Path:
        template = self.info.get("video_path") or DEFAULT_VIDEO_PATH
        return episode_file(self.root, template, episode_index, self.chunks_size, video_key)

    def video_keys(self) -> list[str]:
        """Features declared with dtype ``video`` in info.json, in file order."""
        return [
            key for key, feature in self.info["features"].items()
            if isinstance(feature, dict) and feature.get("dtype") == "video"
        ]


def check_template(template: Any, where: str) -> None:
    """Check an info.json path template: a relative path inside the dataset using only
    TEMPLATE_FIELDS (``episode_index`` among them), plainly formatted.

    Raises:
        DatasetError: naming ``where`` and the problem.
    """
    if not isinstance(template, str) or not template:
        raise DatasetError(f"{where} {template!r} is not a path template string")
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as exc:
        raise DatasetError(f"{where} {template!r} is not a valid path template: {exc}") from None
    for name, spec, conversion in fields:
        plain = not spec if name == "video_key" else _TEMPLATE_SPEC.fullmatch(spec)
        if name not in TEMPLATE_FIELDS or conversion or not plain:
            raise DatasetError(f"{where} {template!r}: field {{{name}}} is not one of {list(TEMPLATE_FIELDS)} "
                               "(the numbers with an optional width such as :06d)")
    if "episode_index" not in (name for name, _, _ in fields):
        raise DatasetError(f"{where} {template!r} does not use {{episode_index}}")
    path = PurePosixPath(template)
    if path.is_absolute() or ".." in path.parts:
        raise DatasetError(f"{where} {template!r} leads outside the dataset")


def _parse_json(text: str | bytes) -> Any:
    """``json.loads``; deep nesting and over-long integers raise ValueError like bad syntax does."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def load_json(path: Path) -> Any:
    """Parse a JSON file of at most MAX_META_FILE_BYTES.

    Raises:
        DatasetError: the file is missing, too large or not valid JSON.
    """
    try:
        return _parse_json(read_limited(path, MAX_META_FILE_BYTES, DatasetError))
    except ValueError as exc:  # also UnicodeDecodeError, and integers past Python's digit limit
        raise DatasetError(f"{path}: cannot read JSON: {exc}") from exc


def load_jsonlines(path: Path) -> list[dict[str, Any]]:
    """Parse a JSON-lines file of at most MAX_META_FILE_BYTES (blank lines skipped).

    Raises:
        DatasetError: the file is missing or too large, or a line is not a JSON object.
    """
    try:
        lines = read_limited(path, MAX_META_FILE_BYTES, DatasetError).decode().splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = _parse_json(line)
        except ValueError as exc:
            raise DatasetError(f"{path}:{number}: not valid JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{number}: expected a JSON object")
        rows.append(row)
    return rows


def write_json(data: Any, path: Path) -> None:
    """Write ``data`` as indented JSON, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4) + "\n")


def write_jsonlines(rows: list[dict[str, Any]], path: Path) -> None:
    """Write one JSON object per line, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def load_info(root: Path) -> dict[str, Any]:
    """Read ``meta/info.json`` and check its codebase version and fps.

    Raises:
        DatasetError: ``root`` is not a dataset, or the version/fps is unsupported.
    """
    path = root / INFO_PATH
    if not path.is_file():
        raise DatasetError(f"{root}: not a LeRobot dataset ({INFO_PATH} is missing)")
    info = load_json(path)
    version = info.get("codebase_version") if isinstance(info, dict) else None
    if version not in READABLE_VERSIONS:
        raise DatasetError(
            f"{path}: codebase_version {version!r} is not one of {list(READABLE_VERSIONS)}"
        )
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf:
        raise DatasetError(f"{path}: fps {fps!r} is not a positive finite number")
    if not isinstance(info.get("features"), dict):
        raise DatasetError(f"{path}: has no 'features' mapping")
    return info


def load_tasks(root: Path) -> dict[int, str]:
    """Read ``meta/tasks.jsonl`` as task_index -> text.

    Raises:
        DatasetError: missing file or a malformed row.
    """
    path = root / TASKS_PATH
    tasks = {}
    for row in load_jsonlines(path):
        index, text = row.get("task_index"), row.get("task")
        if not isinstance(index, int) or not isinstance(text, str):
            raise DatasetError(f"{path}: row {row} lacks an int task_index and a str task")
        tasks[index] = text
    return tasks


def load_episodes(root: Path) -> list[dict[str, Any]]:
    """Read ``meta/episodes.jsonl`` sorted by episode_index.

    Raises:
        DatasetError: missing file, no episodes, a missing, negative, too large or repeated
            episode_index, or ``tasks`` that are not a list of strings.
    """
    path = root / EPISODES_PATH
    rows = load_jsonlines(path)
    if not rows:
        raise DatasetError(f"{path}: lists no episodes")
    seen = set()
    for row in rows:
        index = row.get("episode_index")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_EPISODE_INDEX:
            raise DatasetError(
                f"{path}: row {row} lacks an int episode_index in 0..{MAX_EPISODE_INDEX} (the limit)"
            )
        tasks = row.get("tasks", [])
        if not isinstance(tasks, list) or not all(isinstance(task, str) for task in tasks):
            raise DatasetError(f"{path}: episode {index}: tasks {tasks!r} is not a list of strings")
        if index in seen:
            raise DatasetError(f"{path}: episode_index {index} is listed twice")
        seen.add(index)
    return sorted(rows, key=lambda row: row["episode_index"])


def load_modality(root: Path) -> Modality:
    """Read the state/action slices of ``meta/modality.json``.

    Raises:
        DatasetError: the file is missing, or a slice is malformed or read from a column
            other than observation.state / action.
    """
    path = root / MODALITY_PATH
    if not path.is_file():
        raise DatasetError(
            f"{path}: file is missing; GR00T-layout datasets need it to split state and action"
        )
    doc = load_json(path)
    groups = {}
    for group, column in (("state", STATE_KEY), ("action", ACTION_KEY)):
        parts = doc.get(group) if isinstance(doc, dict) else None
        if not isinstance(parts, dict) or not parts:
            raise DatasetError(f"{path}: has no '{group}' parts")
        groups[group] = {}
        for name, spec in parts.items():
            start, end = (spec.get(k) if isinstance(spec, dict) else None for k in ("start", "end"))
            if not isinstance(start, int) or not isinstance(end, int):
                raise DatasetError(f"{path}: {group}.{name} lacks int 'start' and 'end'")
            original = spec.get("original_key", column)
            if original != column:
                raise DatasetError(
                    f"{path}: {group}.{name} reads column {original!r}; only {column!r} "
                    "is supported"
                )
            groups[group][name] = (start, end)
    return Modality(state=groups["state"], action=groups["action"])


def load_stats(root: Path) -> dict[str, dict[str, np.ndarray]] | None:
    """Read ``meta/stats.json`` as feature -> stat name -> float64 array, or None if absent.

    Raises:
        DatasetError: the file exists but is malformed.
    """
    path = root / STATS_PATH
    if not path.is_file():
        return None
    doc = load_json(path)
    try:
        return {
            key: {name: np.asarray(value, dtype=np.float64) for name, value in stats.items()}
            for key, stats in doc.items()
        }
    except (AttributeError, TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: not a mapping of feature -> stat -> numbers: {exc}") from exc


def write_stats(stats: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """Write statistics (arrays become lists) as ``stats.json``."""
    write_json(stats_to_json(stats), path)


def stats_to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Statistics with arrays turned into (nested) lists."""
    return {
        key: {name: np.asarray(value).tolist() for name, value in values.items()}
        for key, values in stats.items()
    }


def compute_stats(rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per-dimension ``mean, std, min, max, q01, q99`` (float64) of (N, D) rows."""
    rows = np.asarray(rows, dtype=np.float64)
    q01, q99 = np.quantile(rows, [0.01, 0.99], axis=0)
    return {
        "mean": rows.mean(axis=0),
        "std": rows.std(axis=0),
        "min": rows.min(axis=0),
        "max": rows.max(axis=0),
        "q01": q01,
        "q99": q99,
    }
