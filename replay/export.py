"""Export a replay table as a LeRobot v2.1 dataset in GR00T's layout.

Rules (see docs/datasets.md):

- Sparse frames: the replay stores a frame only at some steps; the video repeats the
  latest stored frame at every step in between, so video frames = parquet rows.
- Codec: H.264 (``libx264``, yuv420p, CRF 18, GOP 2 for cheap seeking) when the PyAV wheel
  has it, else MPEG-4 part 2; frames with an odd width or height use yuv444p (H.264 only).
- The dataset is built in a sibling temporary directory and renamed into place at the end,
  so a failed export leaves no half-written dataset.
- Labelled episodes (DAgger corrections) export their executed actions; the expert's chunk
  labels have no place in LeRobot v2.1 and are left out, with a warning.
"""

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .client import ReplayClient
from .episode import Episode, EpisodeInfo
from .errors import EmptyReplayError
from .lerobot import (
    ACTION_KEY,
    CODEBASE_VERSION,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DATA_PATH,
    DEFAULT_VIDEO_PATH,
    DONE_KEY,
    EPISODES_PATH,
    EPISODES_STATS_PATH,
    INFO_PATH,
    MODALITY_PATH,
    REWARD_KEY,
    STATE_KEY,
    STATS_PATH,
    SUCCESS_KEY,
    TASK_DESCRIPTION_KEY,
    TASK_INDEX_KEY,
    TASKS_PATH,
    Modality,
    compute_stats,
    episode_file,
    stats_to_json,
    write_json,
    write_jsonlines,
    write_stats,
)

logger = logging.getLogger(__name__)

DEFAULT_CAMERA = "observation.images.ego_view"
"""Video key of exported frames (the replay does not record camera names)."""
_X264_OPTIONS = {"crf": "18", "g": "2"}
_MPEG4_OPTIONS = {"qscale": "2", "g": "2"}


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_table` wrote."""

    out_dir: Path
    table: str
    embodiment: str
    """Embodiment of every exported episode; written as info.json ``robot_type``."""
    episode_ids: tuple[str, ...]
    """Replay ids in dataset episode order (dataset episode i = episode_ids[i])."""
    steps: int
    tasks: tuple[str, ...]
    """Distinct instructions in task_index order."""
    camera: str
    fps: float
    codec: str
    """FFmpeg encoder used: ``libx264`` or ``mpeg4``."""


def export_table(
    client: ReplayClient,
    table: str,
    out_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    *,
    fps: float = 20.0,
    embodiment: str | None = None,
    modality: Modality | None = None,
    camera: str = DEFAULT_CAMERA,
) -> ExportReport:
    """Write the episodes of ``table`` (in insertion order) as a dataset at ``out_dir``.

    Args:
        out_dir: must not exist or be an empty directory.
        progress: called as ``progress(done, total)`` after each episode.
        fps: frame rate of the videos and timestamps.
        embodiment: export only episodes of this embodiment (needed when the table mixes
            several).
        modality: state/action layout for modality.json (e.g. ``IngestReport.modality``);
            None writes one part ``state`` / ``action`` covering the whole vector.
        camera: video key of the frames.

    Raises:
        EmptyReplayError: no episode to export.
        ValueError: mixed embodiments, state/action dims or frame shapes, a modality that
            does not fit, a bad fps, or a non-empty ``out_dir``.
    """
    out_dir = Path(out_dir)
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"export target {out_dir} exists and is not an empty directory")
    infos = [i for i in client.episode_infos(table) if embodiment in (None, i.embodiment)]
    if not infos:
        raise EmptyReplayError(
            f"table {table!r} at {client.url} has no episode"
            + (f" of embodiment {embodiment!r}" if embodiment else "")
        )
    embodiment, state_dim, action_dim, frame_shape = _uniform(infos, table)
    modality = modality or Modality.whole(state_dim, action_dim)
    modality.check(state_dim, action_dim, "export modality")
    video = _Video.for_frames(camera, fps, frame_shape)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tasks, steps = _write_dataset(client, infos, work, video, progress)
        features = {
            camera: video.feature(frame_shape),
            **_row_features(modality, state_dim, action_dim),
        }
        write_json(_info(embodiment, len(infos), steps, len(tasks), fps, features),
                   work / INFO_PATH)
        write_json(modality.to_json(camera), work / MODALITY_PATH)
        work.chmod(0o755)
        if out_dir.exists():
            out_dir.rmdir()
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("exported %d episodes of %r to %s (%s)", len(infos), table, out_dir, video.codec)
    return ExportReport(
        out_dir=out_dir, table=table, embodiment=embodiment,
        episode_ids=tuple(i.episode_id for i in infos), steps=steps, tasks=tuple(tasks),
        camera=camera, fps=float(fps), codec=video.codec,
    )


@dataclass(frozen=True)
class _Video:
    """How episode videos are encoded."""

    camera: str
    fps: float
    codec: str
    pix_fmt: str

    @classmethod
    def for_frames(cls, camera: str, fps: float, frame_shape: tuple[int, ...]) -> "_Video":
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        even = frame_shape[0] % 2 == 0 and frame_shape[1] % 2 == 0
        return cls(camera, fps, codec, "yuv420p" if even else "yuv444p")

    def encode(self, frames: Iterator[np.ndarray], path: Path) -> None:
        """Write ``frames`` (uint8 (h, w, 3) RGB) as an mp4, frame i at time i / fps."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w") as container:
            rate = Fraction(self.fps).limit_denominator(1001)
            stream = container.add_stream(self.codec, rate=rate)
            stream.pix_fmt = self.pix_fmt
            stream.options = _X264_OPTIONS if self.codec == "libx264" else _MPEG4_OPTIONS
            for pts, array in enumerate(frames):
                if pts == 0:
                    stream.height, stream.width = array.shape[:2]
                frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                frame.pts = pts
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))

    def feature(self, frame_shape: tuple[int, ...]) -> dict:
        """The camera's info.json feature."""
        return {
            "dtype": "video",
            "shape": list(frame_shape),
            "names": ["height", "width", "channel"],
            "video_info": {
                "video.fps": float(self.fps),
                "video.codec": "h264" if self.codec == "libx264" else self.codec,
                "video.pix_fmt": self.pix_fmt,
                "video.is_depth_map": False,
                "has_audio": False,
            },
        }


def _write_dataset(
    client: ReplayClient,
    infos: list[EpisodeInfo],
    root: Path,
    video: _Video,
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[str, int], int]:
    """Write every episode's parquet and video, then the episode/task/stats meta files.

    Returns:
        instruction -> task_index, and the total number of steps.
    """
    tasks: dict[str, int] = {}
    episodes, episodes_stats, states, actions = [], [], [], []
    steps = 0
    labelled = sum(info.label_horizon > 0 for info in infos)
    if labelled:
        logger.warning("%d of the %d episodes carry expert chunk labels; LeRobot v2.1 has no place for them, "
                       "so their executed actions are exported and the labels are not", labelled, len(infos))
    for index, info in enumerate(infos):
        episode = client.read_episode(info.episode_id)
        task = tasks.setdefault(episode.instruction, len(tasks))
        _write_parquet(episode, index, steps, task, video.fps,
                       episode_file(root, DEFAULT_DATA_PATH, index, DEFAULT_CHUNK_SIZE))
        video.encode(
            _dense_frames(episode),
            episode_file(root, DEFAULT_VIDEO_PATH, index, DEFAULT_CHUNK_SIZE, video.camera),
        )
        episodes.append(
            {"episode_index": index, "tasks": [episode.instruction], "length": episode.length}
        )
        episodes_stats.append({"episode_index": index, "stats": stats_to_json({
            key: {**compute_stats(rows), "count": np.array([len(rows)])}
            for key, rows in ((STATE_KEY, episode.states), (ACTION_KEY, episode.actions))
        })})
        states.append(episode.states)
        actions.append(episode.actions)
        steps += episode.length
        if progress is not None:
            progress(index + 1, len(infos))
    write_jsonlines(episodes, root / EPISODES_PATH)
    write_jsonlines([{"task_index": i, "task": t} for t, i in tasks.items()], root / TASKS_PATH)
    write_jsonlines(episodes_stats, root / EPISODES_STATS_PATH)
    write_stats({STATE_KEY: compute_stats(np.concatenate(states)),
                 ACTION_KEY: compute_stats(np.concatenate(actions))}, root / STATS_PATH)
    return tasks, steps


def _uniform(infos: list[EpisodeInfo], table: str) -> tuple[str, int, int, tuple[int, ...]]:
    """The one (embodiment, state_dim, action_dim, frame_shape) shared by all episodes."""
    found = {}
    for name in ("embodiment", "state_dim", "action_dim", "frame_shape"):
        values = {getattr(info, name) for info in infos}
        if len(values) > 1:
            raise ValueError(
                f"table {table!r} mixes episodes of {name} {sorted(values)}; a dataset has one"
                + ("; pass embodiment= to export one" if name == "embodiment" else "")
            )
        found[name] = values.pop()
    return found["embodiment"], found["state_dim"], found["action_dim"], found["frame_shape"]


def _dense_frames(episode: Episode) -> Iterator[np.ndarray]:
    """One frame per step: the latest stored frame at or before it."""
    frame = episode.frames[0]
    for step in range(episode.length):
        frame = episode.frames.get(step, frame)
        yield frame


def _write_parquet(
    episode: Episode, index: int, first_index: int, task: int, fps: float, path: Path
) -> None:
    length = episode.length
    steps = np.arange(length)
    done = steps == length - 1
    columns = {
        STATE_KEY: _vector_array(episode.states),
        ACTION_KEY: _vector_array(episode.actions),
        "timestamp": pa.array((steps / fps).astype(np.float32)),
        "frame_index": pa.array(steps, pa.int64()),
        "episode_index": pa.array(np.full(length, index), pa.int64()),
        "index": pa.array(first_index + steps, pa.int64()),
        TASK_INDEX_KEY: pa.array(np.full(length, task), pa.int64()),
        TASK_DESCRIPTION_KEY: pa.array(np.full(length, task), pa.int64()),
        REWARD_KEY: pa.array(episode.rewards.astype(np.float32)),
        DONE_KEY: pa.array(done),
        SUCCESS_KEY: pa.array(done & bool(episode.success)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def _vector_array(rows: np.ndarray) -> pa.FixedSizeListArray:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), rows.shape[1])


def _row_features(modality: Modality, state_dim: int, action_dim: int) -> dict:
    """info.json features of the parquet columns; vector dims are named after modality parts."""
    def vector(parts: dict[str, tuple[int, int]], dim: int) -> dict:
        names = [f"dim_{k}" for k in range(dim)]
        for part, (start, end) in parts.items():
            names[start:end] = [f"{part}_{k}" for k in range(end - start)]
        return {"dtype": "float32", "shape": [dim], "names": names}

    def scalar(dtype: str) -> dict:
        return {"dtype": dtype, "shape": [1], "names": None}

    return {
        STATE_KEY: vector(modality.state, state_dim),
        ACTION_KEY: vector(modality.action, action_dim),
        "timestamp": scalar("float32"),
        "frame_index": scalar("int64"),
        "episode_index": scalar("int64"),
        "index": scalar("int64"),
        TASK_INDEX_KEY: scalar("int64"),
        TASK_DESCRIPTION_KEY: scalar("int64"),
        REWARD_KEY: scalar("float32"),
        DONE_KEY: scalar("bool"),
        SUCCESS_KEY: scalar("bool"),
    }


def _info(
    embodiment: str, episodes: int, frames: int, tasks: int, fps: float, features: dict
) -> dict:
    chunks = -(-episodes // DEFAULT_CHUNK_SIZE)
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": embodiment,
        "total_episodes": episodes,
        "total_frames": frames,
        "total_tasks": tasks,
        "total_videos": episodes,
        "total_chunks": chunks,
        "chunks_size": DEFAULT_CHUNK_SIZE,
        "fps": float(fps),
        "splits": {"train": f"0:{episodes}"},
        "data_path": DEFAULT_DATA_PATH,
        "video_path": DEFAULT_VIDEO_PATH,
        "features": features,
    }
