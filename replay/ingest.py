"""Ingest a LeRobot v2.0/v2.1 dataset in GR00T's layout into a replay table.

Two passes: the first reads every parquet file and decodes every video, checking
everything (nothing is kept but states, actions and labels), so a bad dataset raises
:class:`DatasetError` before the replay is touched; the second decodes the videos again and
writes one :class:`Episode` per dataset episode. Memory stays at one episode's frames, which
the limits below bound: a dataset is untrusted input.
"""

import hashlib
import logging
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fleetloop.limits import check_file, read_limited

from . import keys
from .client import ReplayClient, translate_errors
from .episode import Episode
from .errors import InvalidEpisodeError
from .lerobot import (
    ACTION_KEY,
    EPISODES_PATH,
    INFO_PATH,
    MAX_META_FILE_BYTES,
    MODALITY_PATH,
    REWARD_KEY,
    STATE_KEY,
    STATS_PATH,
    SUCCESS_KEY,
    TASK_DESCRIPTION_KEY,
    TASK_INDEX_KEY,
    TASKS_PATH,
    DatasetError,
    DatasetMeta,
    Modality,
    compute_stats,
)

logger = logging.getLogger(__name__)

_IDENTITY_FILES = (INFO_PATH, EPISODES_PATH, TASKS_PATH, MODALITY_PATH)
"""Meta files whose bytes identify a dataset (so a moved or copied dataset keeps its ids)."""

MAX_EPISODE_STEPS = 100_000
"""Most rows (= video frames) an episode may have: 83 minutes at 20 fps; the GR-1 episodes have
~400. Checked from the parquet footer before reading rows, and while decoding a video."""
MAX_PARQUET_BYTES = 1 << 30
"""Largest episode parquet file (1 GiB); a 100k-step episode of 64-dim float64 state and action
takes ~100 MB (the GR-1 files: ~200 KB)."""
MAX_PARQUET_DECODED_BYTES = 2 << 30
"""Largest decoded size of an episode parquet file (2 GiB), as its footer declares it: a small file
of highly compressed columns must not decode into more memory than this."""
MAX_VIDEO_BYTES = 2 << 30
"""Largest episode video file (2 GiB); a 100k-frame 256x256 H.264 episode is ~300 MB (GR-1: ~1 MB)."""
MAX_FRAME_PIXELS = 1 << 24
"""Largest video frame (16.8M pixels, e.g. 4096x4096): twice a 4K frame; the GR-1 streams are
256x256 and 800x1280. Checked from the stream header before decoding, and on every frame."""
MAX_EPISODE_FRAME_BYTES = 4 << 30
"""Largest decoded frames of one episode (steps x height x width x 3), which the second pass holds
in memory while writing it: 4 GiB is 21k 256x256 frames, a sixth of a 24 GiB machine."""


@dataclass(frozen=True)
class IngestReport:
    """What :func:`ingest_dataset` read and wrote."""

    dataset: str
    """Dataset name (its directory name); episodes carry ``source="dataset:<name>"``."""
    path: Path
    table: str
    embodiment: str
    camera: str
    """Video key stored as the episodes' frames."""
    fps: float
    episode_ids: tuple[str, ...]
    """Replay ids in dataset episode order."""
    written: int
    """Episodes newly stored."""
    skipped: int
    """Episodes already stored (by id), left as they were."""
    steps: int
    """Total steps (parquet rows = video frames) of all episodes."""
    modality: Modality
    stats: dict[str, dict[str, np.ndarray]]
    """Feature -> mean/std/min/max/q01/q99 arrays, from stats.json or computed."""
    stats_source: str
    """``"meta/stats.json"`` or ``"computed"`` (observation.state and action only)."""
    ignored_videos: tuple[str, ...]
    """Video streams declared in info.json without any file."""


def dataset_id(root: Path) -> str:
    """Stable id prefix of a dataset: sanitised directory name + hash of its meta files."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(root).resolve().name)[:80] or "dataset"
    digest = hashlib.sha256()
    for relative in _IDENTITY_FILES:
        path = Path(root) / relative
        data = read_limited(path, MAX_META_FILE_BYTES, DatasetError) if path.is_file() else b""
        digest.update(relative.encode() + b"\0" + data)
    return f"{name}-{digest.hexdigest()[:12]}"


def ingest_dataset(
    client: ReplayClient,
    path: Path,
    embodiment: str,
    table: str = "pretrain",
    *,
    known_embodiments: Collection[str],
    camera: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Store every episode of the dataset at ``path`` in ``table``.

    Episode ids are ``<dataset_id(path)>-<episode index:06d>``: ingesting the same dataset
    again stores nothing. Each video frame becomes a stored frame (frame i = parquet row i).

    Args:
        embodiment: embodiment tag stored on every episode; must be in known_embodiments.
        camera: video key to store; None picks the only stream that has files.
        progress: called as ``progress(done, total)`` after each episode is checked and
            after each is written (``total`` = 2 x episodes).

    Raises:
        DatasetError: the dataset is unreadable or inconsistent, or the embodiment is
            unknown (the message names the file); nothing was written.
        ValueError: invalid table name.
        ReplayError: the replay failed while writing; episodes written before stay stored
            and a retry completes the ingest.
    """
    root = Path(path)
    if embodiment not in known_embodiments:
        raise DatasetError(
            f"{root}: unknown embodiment tag {embodiment!r}; known: {sorted(known_embodiments)}"
        )
    keys.check_table(table)
    meta = DatasetMeta.load(root)
    camera, ignored = _pick_camera(meta, camera)
    prefix, name = dataset_id(root), root.resolve().name
    total = 2 * len(meta.episodes)
    checked: list[tuple[int, Episode]] = []
    dims = None
    for done, row in enumerate(meta.episodes, 1):
        index = row["episode_index"]
        template = Episode(
            **_read_rows(meta, row),
            frames={},
            embodiment=embodiment,
            source=f"dataset:{name}",
            policy_version=0,
            actor_id="ingest",
            episode_id=f"{prefix}-{index:06d}",
        )
        found = (template.states.shape[1], template.actions.shape[1])
        if dims not in (None, found):
            raise DatasetError(
                f"{meta.data_path(index)}: (state, action) dims {found} differ from the "
                f"first episode's {dims}"
            )
        dims = found
        _check_video(meta.video_path(camera, index), template)
        checked.append((index, template))
        _report(progress, done, total)
    episodes = [template for _, template in checked]
    stats, stats_source = _stats(meta, episodes)
    stored = _stored_ids(client, [ep.episode_id for ep in episodes])
    for done, (index, template) in enumerate(checked, len(checked) + 1):
        if template.episode_id not in stored:
            frames = _decode_frames(meta.video_path(camera, index))
            client.write_episode(table, replace(template, frames=frames))
        _report(progress, done, total)
    logger.info(
        "ingested %s into %r: %d episodes written, %d already stored",
        root, table, len(episodes) - len(stored), len(stored),
    )
    return IngestReport(
        dataset=name, path=root, table=table, embodiment=embodiment, camera=camera,
        fps=meta.fps, episode_ids=tuple(ep.episode_id for ep in episodes),
        written=len(episodes) - len(stored), skipped=len(stored),
        steps=sum(ep.length for ep in episodes), modality=meta.modality, stats=stats,
        stats_source=stats_source, ignored_videos=ignored,
    )


def _report(progress: Callable[[int, int], None] | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _pick_camera(meta: DatasetMeta, camera: str | None) -> tuple[str, tuple[str, ...]]:
    """The camera to store and the declared streams ignored for having no files at all."""
    present, ignored = [], []
    for key in meta.video_keys():
        paths = (meta.video_path(key, row["episode_index"]) for row in meta.episodes)
        (present if any(_is_file(p) for p in paths) else ignored).append(key)
    for key in ignored:
        logger.warning("%s: video stream %r has no files; ignoring it", meta.root / INFO_PATH, key)
    if camera is None and len(present) == 1:
        return present[0], tuple(ignored)
    if camera is not None and camera in present:
        return camera, tuple(ignored)
    problem = f"camera {camera!r} is not" if camera else "pass camera= to pick one of"
    raise DatasetError(
        f"{meta.root / INFO_PATH}: {problem} the video streams with files: {present}"
    )


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False also for a path the OS refuses (e.g. a file name too long)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _read_parquet(path: Path) -> pa.Table:
    """The table of an episode's parquet file, after checking its size, rows and decoded size.

    Raises:
        DatasetError: naming the file and the limit it exceeds, or why it cannot be read.
    """
    check_file(path, MAX_PARQUET_BYTES, DatasetError)
    try:
        footer = pq.ParquetFile(path).metadata
        decoded = sum(footer.row_group(i).total_byte_size for i in range(footer.num_row_groups))
        if footer.num_rows > MAX_EPISODE_STEPS:
            raise DatasetError(f"{path}: {footer.num_rows} rows exceed the limit of {MAX_EPISODE_STEPS} steps "
                               "per episode")
        if decoded > MAX_PARQUET_DECODED_BYTES:
            raise DatasetError(f"{path}: decodes to {decoded} bytes, above the limit of "
                               f"{MAX_PARQUET_DECODED_BYTES} bytes")
        data = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: cannot read parquet: {exc}") from exc
    repeated = sorted({name for name in data.column_names if data.column_names.count(name) > 1})
    if repeated:
        raise DatasetError(f"{path}: columns {repeated} appear more than once")
    return data


def _read_rows(meta: DatasetMeta, row: dict) -> dict:
    """Checked per-step arrays and labels of one episode's parquet file, as Episode fields."""
    path = meta.data_path(row["episode_index"])
    data = _read_parquet(path)
    if data.num_rows == 0:
        raise DatasetError(f"{path}: has no rows")
    if "frame_index" in data.column_names:
        frame_index = _column(data, "frame_index", path, pa.types.is_integer)
        order = np.argsort(frame_index, kind="stable")
        if not np.array_equal(frame_index[order], np.arange(data.num_rows)):
            raise DatasetError(
                f"{path}: frame_index is not a permutation of 0..{data.num_rows - 1}"
            )
        data = data.take(order)
    if isinstance(row.get("length"), int) and row["length"] != data.num_rows:
        logger.warning(
            "%s: episodes.jsonl says length %d, the file has %d rows; using the rows",
            path, row["length"], data.num_rows,
        )
    states = _vectors(data, STATE_KEY, path)
    actions = _vectors(data, ACTION_KEY, path)
    meta.modality.check(states.shape[1], actions.shape[1], str(meta.root / MODALITY_PATH))
    if REWARD_KEY in data.column_names:
        with np.errstate(over="ignore"):  # beyond float32 range becomes inf, reported by _finite
            rewards = _column(data, REWARD_KEY, path, _is_number).astype(np.float32)
        rewards = _finite(rewards, REWARD_KEY, path)
    else:
        rewards = np.zeros(data.num_rows, np.float32)
    success = True
    if SUCCESS_KEY in data.column_names:
        success = bool(_column(data, SUCCESS_KEY, path, _is_flag).any())
    return dict(
        states=states,
        actions=actions,
        instruction=_instruction(data, meta, row, path),
        intervened=np.zeros(data.num_rows, bool),
        rewards=rewards,
        success=success,
    )


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _is_flag(kind: pa.DataType) -> bool:
    return pa.types.is_boolean(kind) or pa.types.is_integer(kind)


def _column(data: pa.Table, name: str, path: Path, accepts: Callable[[pa.DataType], bool]) -> np.ndarray:
    """A scalar column as numpy, if its type ``accepts`` and it has no nulls."""
    column = data.column(name)
    if not accepts(column.type):
        raise DatasetError(f"{path}: column {name!r} has type {column.type}")
    if column.null_count:
        raise DatasetError(f"{path}: column {name!r} has {column.null_count} null values")
    return column.to_numpy()


def _vectors(data: pa.Table, name: str, path: Path) -> np.ndarray:
    """A list-of-numbers column as float32 (rows, dim)."""
    if name not in data.column_names:
        raise DatasetError(f"{path}: has no {name!r} column")
    column = data.column(name).combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
            or pa.types.is_fixed_size_list(column.type)) or not _is_number(column.type.value_type):
        raise DatasetError(f"{path}: column {name!r} has type {column.type}, expected a list of numbers")
    if column.null_count:
        raise DatasetError(f"{path}: column {name!r} has {column.null_count} null rows")
    lengths = np.unique(pc.list_value_length(column).to_numpy(zero_copy_only=False))
    if len(lengths) != 1 or lengths[0] == 0:
        raise DatasetError(f"{path}: column {name!r} has rows of lengths {lengths.tolist()}")
    values = column.flatten().to_numpy(zero_copy_only=False)  # nulls inside become NaN
    rows = np.asarray(values, dtype=np.float64).reshape(len(column), int(lengths[0]))
    with np.errstate(over="ignore"):  # beyond float32 range becomes inf, reported below
        return _finite(rows.astype(np.float32), name, path)


def _finite(values: np.ndarray, name: str, path: Path) -> np.ndarray:
    """``values`` (already float32, so float64 overflow shows as inf) if all are finite."""
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        where = ", dim ".join(str(int(i)) for i in bad[0])
        raise DatasetError(
            f"{path}: column {name!r} has {len(bad)} non-finite values (NaN/inf, or beyond "
            f"float32 range), first at row {where}"
        )
    return values


def _instruction(data: pa.Table, meta: DatasetMeta, row: dict, path: Path) -> str:
    """The task text indexed by the first row's task description (else task_index)."""
    for name in (TASK_DESCRIPTION_KEY, TASK_INDEX_KEY):
        if name not in data.column_names:
            continue
        indices = _column(data, name, path, pa.types.is_integer)
        index = int(indices[0])
        if index not in meta.tasks:
            raise DatasetError(
                f"{path}: column {name!r} refers to task {index}, not in {meta.root / TASKS_PATH}"
            )
        if (indices != index).any():
            logger.warning("%s: %r changes within the episode; using row 0's task", path, name)
        return meta.tasks[index]
    tasks = row.get("tasks") or [""]
    return str(tasks[0])


def _iter_video(path: Path) -> Iterator[av.VideoFrame]:
    """Decoded frames of a video file in presentation order (frame i = parquet row i), within
    MAX_VIDEO_BYTES, MAX_FRAME_PIXELS and MAX_EPISODE_STEPS frames."""
    check_file(path, MAX_VIDEO_BYTES, DatasetError)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            _check_pixels(path, stream.codec_context.width, stream.codec_context.height)
            stream.thread_type = "AUTO"
            for count, frame in enumerate(container.decode(stream), 1):
                if count > MAX_EPISODE_STEPS:
                    raise DatasetError(f"{path}: more than the limit of {MAX_EPISODE_STEPS} frames per episode")
                _check_pixels(path, frame.width, frame.height)
                yield frame
    except av.FFmpegError as exc:
        raise DatasetError(f"{path}: cannot decode video (truncated or corrupt?): {exc}") from exc


def _check_pixels(path: Path, width: int, height: int) -> None:
    if width * height > MAX_FRAME_PIXELS:
        raise DatasetError(f"{path}: {height}x{width} frames exceed the limit of {MAX_FRAME_PIXELS} pixels")


def _decode_frames(path: Path) -> dict[int, np.ndarray]:
    return {i: frame.to_ndarray(format="rgb24") for i, frame in enumerate(_iter_video(path))}


def _check_video(path: Path, template: Episode) -> None:
    """Decode the whole video: frame count = rows, one frame size, episode fields valid."""
    count, first = 0, None
    for count, frame in enumerate(_iter_video(path), 1):
        if first is None:
            decoded = template.length * frame.height * frame.width * 3
            if decoded > MAX_EPISODE_FRAME_BYTES:
                raise DatasetError(f"{path}: {template.length} frames of {frame.height}x{frame.width} decode to "
                                   f"{decoded} bytes, above the limit of {MAX_EPISODE_FRAME_BYTES} per episode")
            first = frame.to_ndarray(format="rgb24")
        elif (frame.height, frame.width) != first.shape[:2]:
            raise DatasetError(
                f"{path}: frame {count - 1} is {frame.height}x{frame.width}, frame 0 is "
                f"{first.shape[0]}x{first.shape[1]}"
            )
    if count != template.length:
        raise DatasetError(
            f"{path}: decodes to {count} frames but its parquet file has {template.length} rows"
        )
    try:
        replace(template, frames={0: first}).validate()
    except InvalidEpisodeError as exc:
        raise DatasetError(f"{path.parent}: {exc}") from exc


def _stats(
    meta: DatasetMeta, episodes: list[Episode]
) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    if meta.stats is not None:
        return meta.stats, STATS_PATH
    return {
        STATE_KEY: compute_stats(np.concatenate([ep.states for ep in episodes])),
        ACTION_KEY: compute_stats(np.concatenate([ep.actions for ep in episodes])),
    }, "computed"


def _stored_ids(client: ReplayClient, ids: list[str]) -> set[str]:
    """The ids among ``ids`` already stored (in any table)."""
    with translate_errors(client.url, "check stored episodes"):
        pipe = client.redis.pipeline(transaction=False)
        for eid in ids:
            pipe.exists(keys.episode_key(eid, "meta"))
        return {eid for eid, found in zip(ids, pipe.execute(), strict=True) if found}
