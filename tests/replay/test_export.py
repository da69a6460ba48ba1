"""export_table against a real Valkey: layout, sparse frames, round trips and refusals."""

import json

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from fleetloop.replay import EmptyReplayError
from fleetloop.replay.export import export_table
from fleetloop.replay.ingest import ingest_dataset
from fleetloop.replay.lerobot import DatasetError, Modality

KNOWN = ("gr1", "so100")
COLUMNS = {
    "observation.state", "action", "timestamp", "frame_index", "episode_index", "index",
    "task_index", "annotation.human.action.task_description", "next.reward", "next.done",
    "next.success",
}


def _decode(path):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _flat_frames(length, steps, shape):
    """Frames of one flat colour per stored step (codec-friendly, easy to tell apart)."""
    return {
        step: np.full((*shape, 3), (40 * i + 20, 255 - 40 * i, 128), np.uint8)
        for i, step in enumerate(steps)
    }


def test_round_trip_of_the_shared_dataset(client, copy_dataset, tmp_path):
    source = copy_dataset((3, 4))  # two episodes, two tasks: the full set costs ~40 s
    first = ingest_dataset(client, source, "gr1", known_embodiments=KNOWN)
    report = export_table(client, "pretrain", tmp_path / "out", modality=first.modality)
    assert report.episode_ids == first.episode_ids and report.steps == 412 + 328
    assert report.codec == "libx264"
    modality = json.loads((tmp_path / "out/meta/modality.json").read_text())
    assert modality["state"]["right_hand"] == {"start": 29, "end": 35}
    assert modality["video"] == {"ego_view": {"original_key": "observation.images.ego_view"}}

    second = ingest_dataset(client, tmp_path / "out", "gr1", "rollouts", known_embodiments=KNOWN)
    assert second.modality == first.modality and second.written == 2
    assert second.stats_source == "meta/stats.json"
    for before_id, after_id in zip(first.episode_ids, second.episode_ids, strict=True):
        before, after = client.read_episode(before_id), client.read_episode(after_id)
        np.testing.assert_array_equal(after.states, before.states)
        np.testing.assert_array_equal(after.actions, before.actions)
        np.testing.assert_array_equal(after.rewards, before.rewards)
        assert after.instruction == before.instruction and after.success == before.success
        assert sorted(after.frames) == sorted(before.frames)
        error = np.mean([
            np.abs(after.frames[s].astype(int) - before.frames[s]).mean() for s in before.frames
        ])
        assert error < 3.0, f"mean absolute codec error {error:.2f} per pixel"


@pytest.mark.parametrize("shape", [(16, 24), (9, 11)], ids=["even", "odd"])
def test_sparse_frames_repeat_the_latest_frame(client, make_episode, tmp_path, shape):
    steps = (0, 3, 5)
    episodes = [
        make_episode(length=7, frame_steps=(), frames=_flat_frames(7, steps, shape),
                     instruction="stack", success=False),
        make_episode(length=4, frame_steps=(), frames=_flat_frames(4, (0,), shape),
                     instruction="wipe"),
        make_episode(length=5, frame_steps=(), frames=_flat_frames(5, (0, 1), shape),
                     instruction="stack"),
    ]
    for episode in episodes:
        client.write_episode("rollouts", episode)
    calls = []
    out = tmp_path / "out"
    report = export_table(client, "rollouts", out, progress=lambda *a: calls.append(a), fps=10)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert report.tasks == ("stack", "wipe") and report.steps == 16

    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["fps"] == 10.0
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 16, 2)
    assert info["robot_type"] == "so100"
    assert info["features"]["observation.images.ego_view"]["shape"] == [*shape, 3]
    assert info["features"]["observation.state"]["names"] == ["state_0", "state_1", "state_2"]
    modality = json.loads((out / "meta/modality.json").read_text())
    assert modality["state"] == {"state": {"start": 0, "end": 3}}
    assert modality["action"] == {"action": {"start": 0, "end": 2}}
    tasks = [json.loads(line) for line in (out / "meta/tasks.jsonl").read_text().splitlines()]
    assert tasks == [{"task_index": 0, "task": "stack"}, {"task_index": 1, "task": "wipe"}]
    listing = [json.loads(line) for line in (out / "meta/episodes.jsonl").read_text().splitlines()]
    assert [row["length"] for row in listing] == [7, 4, 5]
    stats = json.loads((out / "meta/stats.json").read_text())
    assert sorted(stats["action"]) == ["max", "mean", "min", "q01", "q99", "std"]
    per_episode = (out / "meta/episodes_stats.jsonl").read_text().splitlines()
    assert json.loads(per_episode[2])["stats"]["observation.state"]["count"] == [5]

    table = pq.read_table(out / "data/chunk-000/episode_000000.parquet")
    assert set(table.column_names) == COLUMNS
    assert table.column("frame_index").to_pylist() == list(range(7))
    assert table.column("index").to_pylist() == list(range(7))
    np.testing.assert_allclose(table.column("timestamp").to_numpy(), np.arange(7) / 10)
    assert not any(table.column("next.success").to_pylist())
    np.testing.assert_array_equal(
        np.stack(table.column("action").to_numpy(zero_copy_only=False)), episodes[0].actions
    )
    assert pq.read_table(out / "data/chunk-000/episode_000001.parquet").column(
        "index").to_pylist() == [7, 8, 9, 10]

    video = _decode(out / "videos/chunk-000/observation.images.ego_view/episode_000000.mp4")
    latest = [0, 0, 0, 3, 3, 5, 5]
    assert len(video) == 7
    for step, frame in enumerate(video):
        expected = episodes[0].frames[latest[step]]
        assert np.abs(frame.astype(int) - expected).mean() < 4.0, step

    back = ingest_dataset(client, out, "so100", "pretrain", known_embodiments=KNOWN)
    for original, episode_id in zip(episodes, back.episode_ids, strict=True):
        episode = client.read_episode(episode_id)
        np.testing.assert_array_equal(episode.states, original.states)
        np.testing.assert_array_equal(episode.rewards, original.rewards)
        assert (episode.instruction, episode.success) == (original.instruction, original.success)
        assert sorted(episode.frames) == list(range(original.length))


def test_refusals(client, make_episode, tmp_path):
    with pytest.raises(EmptyReplayError, match="'rollouts'.* has no episode"):
        export_table(client, "rollouts", tmp_path / "out")
    client.write_episode("rollouts", make_episode())
    client.write_episode("rollouts", make_episode(embodiment="gr1"))
    with pytest.raises(ValueError, match=r"mixes episodes of embodiment \['gr1', 'so100'\]"):
        export_table(client, "rollouts", tmp_path / "out")
    with pytest.raises(DatasetError, match="export modality: state.arm slice 0:9 does not fit"):
        export_table(client, "rollouts", tmp_path / "out", embodiment="gr1",
                     modality=Modality(state={"arm": (0, 9)}, action={"a": (0, 2)}))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").touch()
    with pytest.raises(ValueError, match="busy exists and is not an empty directory"):
        export_table(client, "rollouts", tmp_path / "busy", embodiment="gr1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "replay"]


def test_failed_export_leaves_nothing(client, make_episode, tmp_path, monkeypatch):
    for _ in range(2):
        client.write_episode("rollouts", make_episode())
    read = client.read_episode
    calls = []

    def flaky(episode_id):
        calls.append(episode_id)
        if len(calls) == 2:
            raise RuntimeError("replay went away")
        return read(episode_id)

    monkeypatch.setattr(client, "read_episode", flaky)
    (tmp_path / "exports").mkdir()
    with pytest.raises(RuntimeError, match="replay went away"):
        export_table(client, "rollouts", tmp_path / "exports" / "out")
    assert list((tmp_path / "exports").iterdir()) == []
