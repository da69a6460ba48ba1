"""ingest_dataset against a real Valkey: the shared GR-1 dataset, quirks and bad input."""

import json
import logging
import shutil

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fleetloop.replay.ingest import dataset_id, ingest_dataset
from fleetloop.replay.keys import EPISODE_ID_RE
from fleetloop.replay.lerobot import DatasetError, Modality

KNOWN = ("gr1", "so100")
CAMERA = "observation.images.ego_view"
LENGTHS = [416, 470, 470, 412, 328]


def _parquet(root, index):
    return pq.read_table(root / f"data/chunk-000/episode_{index:06d}.parquet")


def _video(root, index):
    return root / f"videos/chunk-000/{CAMERA}/episode_{index:06d}.mp4"


def _rewrite_parquet(root, index, edit):
    """Replace one episode's parquet file by ``edit(table)``."""
    path = root / f"data/chunk-000/episode_{index:06d}.parquet"
    pq.write_table(edit(pq.read_table(path)), path)


def _set_vector(table, column, row, dim, value):
    rows = np.array(table.column(column).to_pylist())
    rows[row, dim] = value
    position = table.column_names.index(column)
    return table.set_column(position, column, pa.array(rows.tolist()))


def _edit_json(path, edit):
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_ingests_the_shared_dataset_exactly_and_once(client, shared_dataset, caplog):
    calls = []
    with caplog.at_level(logging.WARNING, logger="fleetloop.replay.ingest"):
        report = ingest_dataset(
            client, shared_dataset, "gr1", known_embodiments=KNOWN,
            progress=lambda done, total: calls.append((done, total)),
        )
    assert "observation.images.egoview" in caplog.text
    assert report.ignored_videos == ("observation.images.egoview",)
    assert (report.written, report.skipped, report.steps) == (5, 0, 2096)
    assert report.camera == CAMERA and report.fps == 20.0
    assert report.stats_source == "meta/stats.json"
    assert report.stats["observation.state"]["q99"].shape == (44,)
    assert report.modality.state["left_arm"] == (0, 7)
    assert report.modality.action["waist"] == (41, 44)
    assert calls == [(i, 10) for i in range(1, 11)]
    assert client.episode_ids("pretrain") == list(report.episode_ids)
    tasks = {
        row["task_index"]: row["task"]
        for row in map(json.loads, (shared_dataset / "meta/tasks.jsonl").read_text().splitlines())
    }
    for index, episode_id in enumerate(report.episode_ids):
        assert EPISODE_ID_RE.fullmatch(episode_id) and episode_id.endswith(f"-{index:06d}")
        episode = client.read_episode(episode_id)
        table = _parquet(shared_dataset, index)
        assert episode.length == LENGTHS[index] == table.num_rows
        for name, column in (("states", "observation.state"), ("actions", "action")):
            got = getattr(episode, name)
            assert got.dtype == np.float32 and got.shape == (table.num_rows, 44)
            np.testing.assert_array_equal(
                got, np.array(table.column(column).to_pylist(), dtype=np.float32)
            )
        task = table.column("annotation.human.action.task_description")[0].as_py()
        assert episode.instruction == tasks[task]
        np.testing.assert_array_equal(
            episode.rewards, table.column("next.reward").to_numpy().astype(np.float32)
        )
        assert (episode.embodiment, episode.source, episode.actor_id) == (
            "gr1", "dataset:gr1_pick_place", "ingest")
        assert episode.policy_version == 0 and episode.success and not episode.intervened.any()
        with av.open(str(_video(shared_dataset, index))) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert sorted(episode.frames) == list(range(len(decoded)))
        for step, frame in enumerate(decoded):
            np.testing.assert_array_equal(episode.frames[step], frame)

    keys_before = client.redis.dbsize()
    again = ingest_dataset(client, shared_dataset, "gr1", known_embodiments=KNOWN)
    assert again.episode_ids == report.episode_ids
    assert (again.written, again.skipped) == (0, 5)
    assert client.redis.dbsize() == keys_before
    assert client.table_stats()["pretrain"]["episodes"] == 5


def test_ids_depend_on_metadata_not_location(copy_dataset):
    first, second = copy_dataset((4,), "a"), copy_dataset((4,), "a_moved")
    assert dataset_id(first).split("-")[1] == dataset_id(second).split("-")[1]
    (second / "meta/tasks.jsonl").write_text('{"task_index": 0, "task": "other"}\n')
    assert dataset_id(first).split("-")[1] != dataset_id(second).split("-")[1]
    assert dataset_id(copy_dataset((4,), "odd name!")).startswith("odd_name_-")


def test_computes_stats_without_stats_json(client, copy_dataset):
    root = copy_dataset((4,))
    (root / "meta/stats.json").unlink()
    report = ingest_dataset(client, root, "gr1", known_embodiments=KNOWN)
    assert report.stats_source == "computed"
    states = np.array(_parquet(root, 4).column("observation.state").to_pylist(), np.float32)
    stats = report.stats["observation.state"]
    assert sorted(stats) == ["max", "mean", "min", "q01", "q99", "std"]
    np.testing.assert_allclose(stats["mean"], states.mean(axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats["q99"], np.quantile(states, 0.99, axis=0), rtol=1e-6)
    np.testing.assert_array_equal(stats["max"], states.max(axis=0))


def test_orders_rows_by_frame_index_and_falls_back_to_task_index(client, copy_dataset):
    root = copy_dataset((4,))
    original = _parquet(root, 4)

    def shuffle(table):
        table = table.append_column("frame_index", pa.array(np.arange(table.num_rows)))
        table = table.drop_columns(["annotation.human.action.task_description"])
        return table.take(np.random.default_rng(0).permutation(table.num_rows))

    _rewrite_parquet(root, 4, shuffle)
    report = ingest_dataset(client, root, "gr1", known_embodiments=KNOWN)
    episode = client.read_episode(report.episode_ids[0])
    np.testing.assert_array_equal(
        episode.states, np.array(original.column("observation.state").to_pylist(), np.float32)
    )
    assert episode.instruction == "pick the cupcake from the counter and place it in the plate"


def _drop_modality(root):
    (root / "meta/modality.json").unlink()


def _widen_modality(root):
    _edit_json(root / "meta/modality.json", lambda doc: doc["action"]["waist"].update(end=46))


def _drop_last_row(root):
    _rewrite_parquet(root, 4, lambda table: table.slice(0, table.num_rows - 1))


def _truncate_video(root):
    path = _video(root, 4)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _delete_video(root):
    _video(root, 4).unlink()


def _nan_state(root):
    _rewrite_parquet(root, 4, lambda t: _set_vector(t, "observation.state", 7, 3, float("nan")))


def _huge_action(root):
    _rewrite_parquet(root, 4, lambda t: _set_vector(t, "action", 0, 0, 1e300))


def _drop_task_5(root):
    path = root / "meta/tasks.jsonl"
    lines = [line for line in path.read_text().splitlines() if json.loads(line)["task_index"] != 5]
    path.write_text("\n".join(lines) + "\n")


def _old_version(root):
    _edit_json(root / "meta/info.json", lambda info: info.update(codebase_version="v1.6"))


def _repeat_episode(root):
    path = root / "meta/episodes.jsonl"
    path.write_text(path.read_text() * 2)


def _two_cameras(root):
    side = "observation.images.side"
    shutil.copytree(root / f"videos/chunk-000/{CAMERA}", root / f"videos/chunk-000/{side}")
    _edit_json(root / "meta/info.json",
               lambda info: info["features"].update({side: info["features"][CAMERA]}))


EP4 = r"data/chunk-000/episode_000004\.parquet"
MP4 = rf"videos/chunk-000/{CAMERA}/episode_000004\.mp4"
BAD_INPUT = {
    "missing_modality": (_drop_modality, r"meta/modality\.json: file is missing"),
    "modality_slice_beyond_vector": (
        _widen_modality,
        r"meta/modality\.json: action\.waist slice 41:46 does not fit the 44-dim action"),
    "rows_differ_from_video_frames": (
        _drop_last_row, rf"{MP4}: decodes to 328 frames but its parquet file has 327 rows"),
    "truncated_mp4": (_truncate_video, rf"{MP4}: cannot decode video"),
    "missing_mp4": (_delete_video, rf"{MP4}: file is missing"),
    "nan_state": (
        _nan_state,
        rf"{EP4}: column 'observation\.state' has 1 non-finite .* first at row 7, dim 3"),
    "infinite_action": (_huge_action, rf"{EP4}: column 'action' has 1 non-finite"),
    "unknown_task": (
        _drop_task_5, rf"{EP4}: column 'annotation.*' refers to task 5, not in .*tasks\.jsonl"),
    "old_codebase_version": (_old_version, r"info\.json: codebase_version 'v1\.6' is not one of"),
    "repeated_episode": (_repeat_episode, r"episodes\.jsonl: episode_index 3 is listed twice"),
    "ambiguous_camera": (_two_cameras, r"info\.json: pass camera= to pick one of the video"),
}


@pytest.mark.parametrize("breakage, message", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_dataset_raises_and_writes_nothing(client, copy_dataset, breakage, message):
    root = copy_dataset((3, 4))  # episode 3 is fine: nothing may be written before 4 fails
    breakage(root)
    keys_before = client.redis.dbsize()
    with pytest.raises(DatasetError, match=message):
        ingest_dataset(client, root, "gr1", known_embodiments=KNOWN)
    assert client.redis.dbsize() == keys_before


@pytest.mark.parametrize("path", ["empty_dir", "missing"])
def test_not_a_dataset(client, tmp_path, path):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DatasetError, match=rf"{path}: not a LeRobot dataset \(meta/info\.json"):
        ingest_dataset(client, tmp_path / path, "gr1", known_embodiments=KNOWN)


def test_unknown_embodiment_lists_known_ones(client, shared_dataset):
    keys_before = client.redis.dbsize()
    message = rf"{shared_dataset}: unknown embodiment tag 'h1'; known: \['gr1', 'so100'\]"
    with pytest.raises(DatasetError, match=message):
        ingest_dataset(client, shared_dataset, "h1", known_embodiments=KNOWN)
    assert client.redis.dbsize() == keys_before


def test_modality_check_names_part_and_slice():
    with pytest.raises(DatasetError, match=r"where: state\.arm slice 3:2 does not fit"):
        Modality(state={"arm": (3, 2)}, action={"a": (0, 1)}).check(4, 1, "where")
