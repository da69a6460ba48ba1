"""Fuzzing the LeRobot/GR00T dataset reader: mutated copies of the shared GR-1 dataset are ingested
into a real Valkey.

Each example copies a pristine, trimmed copy of two shared episodes (their first frames: the original
H.264 packets remuxed, the parquet rows sliced to match, the meta files as shipped), damages one file
(truncation, random bytes, wrong types, huge numbers, NaN, missing keys, wrong shapes, deep nesting,
path templates that escape the dataset) and ingests it. The ingest must either succeed, storing
exactly what it reports, or raise DatasetError naming a file of the dataset, with the replay left
exactly as it was; never another exception, never a hang. The size limits of the reader get their
own tests.
"""

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fleetloop.replay import ingest, lerobot
from fleetloop.replay.ingest import ingest_dataset
from fleetloop.replay.lerobot import DatasetError
from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz.conftest import edit_bytes, fuzz_settings

pytestmark = pytest.mark.timeout(300)

KNOWN = ("gr1",)
CAMERA = "observation.images.ego_view"
EPISODES = (3, 4)
FRAMES = 24
"""Frames kept per episode: enough for every code path, small enough to ingest in ~0.1 s."""
NAME = "gr1_fuzz"


def _data(root: Path, index: int) -> Path:
    return root / f"data/chunk-000/episode_{index:06d}.parquet"


def _video(root: Path, index: int) -> Path:
    return root / f"videos/chunk-000/{CAMERA}/episode_{index:06d}.mp4"


def _remux(source: Path, target: Path, packets: int) -> int:
    """Copy the first ``packets`` video packets of ``source`` (no re-encoding); returns the frames
    the copy decodes to."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for count, packet in enumerate(p for p in inp.demux(inp.streams.video[0]) if p.dts is not None):
            if count == packets:
                break
            packet.stream = stream
            out.mux(packet)
    with av.open(str(target)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, shared_dataset: Path) -> Path:
    """The shared dataset's meta files and episodes 3 and 4, each cut to its first FRAMES frames."""
    root = tmp_path_factory.mktemp("pristine") / NAME
    shutil.copytree(shared_dataset / "meta", root / "meta")
    rows = [json.loads(line) for line in (root / "meta/episodes.jsonl").read_text().splitlines()]
    kept = []
    for row in rows:
        if row["episode_index"] in EPISODES:
            frames = _remux(_video(shared_dataset, row["episode_index"]), _video(root, row["episode_index"]), FRAMES)
            table = pq.read_table(_data(shared_dataset, row["episode_index"])).slice(0, frames)
            _data(root, row["episode_index"]).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, _data(root, row["episode_index"]))
            kept.append({**row, "length": frames})
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps(row) + "\n" for row in kept))
    for path in root.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)  # the shared copy is read-only
    return root


# ---- mutations ------------------------------------------------------------------------------------------

RAW_LITERALS = {
    "<huge int>": "1" + "0" * 5000,  # beyond Python's int <-> str conversion limit (4300 digits)
    "<deep>": "[" * 100_000 + "]" * 100_000,  # nested beyond Python's recursion limit
}
"""Sentinels written as raw JSON text (the json module can neither build nor dump them)."""
EDGE_VALUES = st.sampled_from([
    None, True, False, 0, -1, 2**31, 2**64, 10**30, 1e308, 1e-310, float("nan"), float("inf"), float("-inf"),
    "", "x" * 300, [], {}, [1, 2], [[0.5] * 3] * 2, {"start": 0}, "{episode_index.__class__}",
    "{episode_index:0100000000d}", "{0}", "../../../../etc/passwd{episode_index}", "/dev/zero{episode_index}",
    "data/{episode_index}", "v2.1", "video", *RAW_LITERALS,
])


def _paths(doc, prefix=()) -> list[tuple]:
    """Every key path into a JSON document (dict keys and list indices), the root excluded."""
    found = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        found.append((*prefix, key))
        if len(prefix) < 3:
            found += _paths(value, (*prefix, key))
    return found


def _dump(doc) -> str:
    """JSON text of ``doc`` with the RAW_LITERALS sentinels replaced by their raw text."""
    text = json.dumps(doc)
    for sentinel, raw in RAW_LITERALS.items():
        text = text.replace(json.dumps(sentinel), raw)
    return text


@st.composite
def _json_edit(draw, doc):
    """``doc`` with one value replaced, one key removed or one value nested deeply."""
    paths = _paths(doc)
    if not paths:
        return draw(EDGE_VALUES)
    *parent_path, key = draw(st.sampled_from(paths))
    parent = doc
    for part in parent_path:
        parent = parent[part]
    kind = draw(st.sampled_from(["value", "value", "value", "delete", "nest"]))
    if kind == "delete":
        del parent[key]
    elif kind == "nest":
        parent[key] = "<deep>" if draw(st.booleans()) else {"a": parent[key]}
    else:
        parent[key] = draw(EDGE_VALUES)
    return doc


@st.composite
def _bytes_edit(draw, data: bytes) -> bytes:
    """``data`` with a few bytes overwritten, inserted or cut off."""
    data = bytearray(data)
    edit_bytes(draw, data, max_insert=16, overwrite_run=8)
    return bytes(data)


def _edit_json_file(draw, path: Path) -> str:
    kind = draw(st.sampled_from(["structure", "structure", "bytes", "delete", "replace"]), label="json edit")
    if kind == "structure":
        path.write_text(_dump(draw(_json_edit(json.loads(path.read_text())))))
    elif kind == "bytes":
        path.write_bytes(draw(_bytes_edit(path.read_bytes())))
    elif kind == "delete":
        path.unlink()
    else:
        replacement = draw(st.sampled_from(["", "\udcff", "NaN", "null", *RAW_LITERALS]), label="replacement")
        path.write_bytes(RAW_LITERALS.get(replacement, replacement).encode(errors="surrogateescape"))
    return kind


def _edit_jsonl_file(draw, path: Path) -> str:
    lines = path.read_text().splitlines()
    kind = draw(st.sampled_from(["structure", "structure", "bytes", "duplicate", "drop", "delete", "blank"]),
                label="jsonl edit")
    at = draw(st.integers(0, len(lines) - 1))
    if kind == "structure":
        lines[at] = _dump(draw(_json_edit(json.loads(lines[at]))))
    elif kind == "bytes":
        path.write_bytes(draw(_bytes_edit(path.read_bytes())))
        return kind
    elif kind == "duplicate":
        lines.insert(at, lines[at])
    elif kind == "drop":
        del lines[at]
    elif kind == "blank":
        lines = [""] * len(lines)
    else:
        path.unlink()
        return kind
    path.write_text("\n".join(lines) + "\n")
    return kind


def _column_edit(draw, table: pa.Table) -> tuple[pa.Table, str]:
    """One column of ``table`` dropped, retyped, nulled, reshaped or given extreme values."""
    rows = table.num_rows
    name = draw(st.sampled_from([*table.column_names, "frame_index"]), label="column")
    kind = draw(st.sampled_from(["drop", "strings", "ints", "nulls", "extreme", "ragged", "width", "nested",
                                 "empty_table", "permute", "repeat"]), label="column edit")
    if kind == "empty_table":
        return table.slice(0, 0), kind
    if kind == "repeat" and name in table.column_names:
        return table.append_column(name, table.column(name)), kind
    if kind == "drop":
        return (table.drop_columns([name]) if name in table.column_names else table), kind
    if kind == "strings":
        column = pa.array([str(i) for i in range(rows)])
    elif kind == "ints":
        column = pa.array(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=rows, max_size=rows)), pa.int64())
    elif kind == "nulls":
        column = pa.array([None] * rows, pa.float64())
    elif kind == "nested":
        column = pa.array([[[0.0, 1.0]]] * rows)
    elif kind == "permute":
        column = pa.array(draw(st.permutations(list(range(rows)))) if draw(st.booleans())
                          else draw(st.lists(st.integers(-5, rows + 5), min_size=rows, max_size=rows)), pa.int64())
    else:
        width = draw(st.sampled_from([0, 1, 43, 45, 1000])) if kind == "width" else 44
        values = np.zeros((rows, width)).tolist()
        if kind == "extreme" and width:
            values[draw(st.integers(0, rows - 1))][draw(st.integers(0, width - 1))] = draw(
                st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e39, 3.4e38]))
        if kind == "ragged":
            values[draw(st.integers(0, rows - 1))] = values[0][:draw(st.integers(0, 43))]
        column = pa.array(values)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column), kind
    return table.append_column(name, column), kind


def _edit_parquet(draw, path: Path) -> str:
    kind = draw(st.sampled_from(["column", "column", "column", "bytes", "delete", "garbage"]), label="parquet edit")
    if kind == "column":
        table, kind = _column_edit(draw, pq.read_table(path))
        pq.write_table(table, path)
    elif kind == "bytes":
        path.write_bytes(draw(_bytes_edit(path.read_bytes())))
    elif kind == "delete":
        path.unlink()
    else:
        path.write_bytes(draw(st.sampled_from([b"", b"PAR1", b"PAR1" + b"\0" * 64 + b"PAR1", b"\x00" * 4096])))
    return kind


def _edit_video(draw, path: Path, other: Path) -> str:
    kind = draw(st.sampled_from(["bytes", "bytes", "truncate", "delete", "other", "garbage"]), label="video edit")
    data = path.read_bytes()
    if kind == "bytes":
        path.write_bytes(draw(_bytes_edit(data)))
    elif kind == "truncate":
        path.write_bytes(data[:draw(st.integers(0, len(data) - 1))])
    elif kind == "delete":
        path.unlink()
    elif kind == "other":
        path.write_bytes(other.read_bytes())
    else:
        path.write_bytes(draw(st.sampled_from([b"", b"\x00\x00\x00\x18ftypisom", b"\x00" * 4096])))
    return kind


TARGETS = ["meta/info.json", "meta/modality.json", "meta/stats.json", "meta/episodes.jsonl", "meta/tasks.jsonl",
           "parquet", "parquet", "video"]


def _mutate(draw, root: Path) -> str:
    """Damage one file of the dataset at ``root``; returns a label of what was done."""
    target = draw(st.sampled_from(TARGETS), label="target")
    index = draw(st.sampled_from(EPISODES), label="episode")
    if target.endswith(".jsonl"):
        return f"{target}: {_edit_jsonl_file(draw, root / target)}"
    if target.endswith(".json"):
        return f"{target}: {_edit_json_file(draw, root / target)}"
    if target == "parquet":
        return f"parquet: {_edit_parquet(draw, _data(root, index))}"
    return f"video: {_edit_video(draw, _video(root, index), _video(root, 7 - index))}"


# ---- the fuzz test ------------------------------------------------------------------------------------


def _replay_state(client) -> tuple:
    return client.table_stats(), client.redis.dbsize()


def _ingest_or_refuse(client, root: Path) -> str:
    """Ingest ``root``: success storing what it reports, or DatasetError naming a file of the dataset
    with the replay untouched. Returns a label of the outcome."""
    tables, keys = _replay_state(client)
    try:
        report = ingest_dataset(client, root, "gr1", known_embodiments=KNOWN)
    except DatasetError as exc:
        message = str(exc)
        assert message.startswith((f"{root}/", f"{root}:")), f"the error does not name a file of the dataset: {message}"
        assert _replay_state(client) == (tables, keys), f"a refused ingest changed the replay: {message}"
        return "refused: " + message.removeprefix(f"{root}/").split(":")[0][:40]
    stored = client.table_stats()["pretrain"]["episodes"]
    assert stored == tables.get("pretrain", {}).get("episodes", 0) + report.written
    assert report.written + report.skipped == len(report.episode_ids) == len(
        {row["episode_index"] for row in lerobot.load_episodes(root)})
    for episode_id in report.episode_ids[-report.written:] if report.written else ():
        episode = client.read_episode(episode_id)
        assert np.isfinite(episode.states).all() and np.isfinite(episode.actions).all()
        assert len(episode.frames) == episode.length
    return "ingested"


@fuzz_settings(max_examples=300, deadline_s=20)
@given(data=st.data())
def test_mutated_datasets_ingest_or_raise_dataset_error(client, pristine, tmp_path_factory, data):
    root = tmp_path_factory.mktemp("example") / NAME
    shutil.copytree(pristine, root)
    what = _mutate(data.draw, root)
    event(f"{what} -> {_ingest_or_refuse(client, root)}")
    shutil.rmtree(root.parent)


def test_pristine_copy_ingests(client, pristine):
    assert _ingest_or_refuse(client, pristine) == "ingested"
    assert client.table_stats()["pretrain"]["episodes"] == len(EPISODES)


# ---- size limits and untrusted paths ------------------------------------------------------------------


def _sparse(path: Path, size: int) -> None:
    """Make ``path`` a file of ``size`` bytes without writing them (its size is all a limit checks)."""
    with path.open("r+b" if path.exists() else "wb") as handle:
        handle.truncate(size)


def _set_info(root: Path, **fields) -> None:
    path = root / "meta/info.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _set_episode(root: Path, **fields) -> None:
    path = root / "meta/episodes.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[-1].update(fields)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _fewer_rows(root: Path) -> None:
    for index in EPISODES:
        pq.write_table(pq.read_table(_data(root, index)).slice(0, 10), _data(root, index))


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


EP4 = r"data/chunk-000/episode_000004\.parquet"
MP4 = rf"videos/chunk-000/{CAMERA}/episode_000004\.mp4"
ANY_EP = r"data/chunk-000/episode_00000[34]\.parquet"
ANY_MP4 = rf"videos/chunk-000/{CAMERA}/episode_00000[34]\.mp4"
"""For a lowered limit both episodes exceed: the first one read is named."""
LIMITS: dict[str, tuple[Callable[[Path], None], dict, str]] = {
    # id: (breakage, {module constant: lowered value}, message)
    "meta_file_bytes": (lambda r: _sparse(r / "meta/episodes.jsonl", lerobot.MAX_META_FILE_BYTES + 1), {},
                        rf"meta/episodes\.jsonl: {lerobot.MAX_META_FILE_BYTES + 1} bytes exceed the limit of "
                        rf"{lerobot.MAX_META_FILE_BYTES} bytes"),
    "episode_index": (lambda r: _set_episode(r, episode_index=lerobot.MAX_EPISODE_INDEX + 1), {},
                      rf"meta/episodes\.jsonl: .* int episode_index in 0\.\.{lerobot.MAX_EPISODE_INDEX} \(the limit\)"),
    "parquet_bytes": (lambda r: _sparse(_data(r, 4), ingest.MAX_PARQUET_BYTES + 1), {},
                      rf"{EP4}: {ingest.MAX_PARQUET_BYTES + 1} bytes exceed the limit of {ingest.MAX_PARQUET_BYTES}"),
    "parquet_rows": (lambda r: None, {"MAX_EPISODE_STEPS": 10},
                     rf"{ANY_EP}: {FRAMES} rows exceed the limit of 10 steps per episode"),
    "parquet_decoded_bytes": (lambda r: None, {"MAX_PARQUET_DECODED_BYTES": 1000},
                              rf"{ANY_EP}: decodes to \d+ bytes, above the limit of 1000 bytes"),
    "video_bytes": (lambda r: _sparse(_video(r, 4), ingest.MAX_VIDEO_BYTES + 1), {},
                    rf"{MP4}: {ingest.MAX_VIDEO_BYTES + 1} bytes exceed the limit of {ingest.MAX_VIDEO_BYTES}"),
    "video_frames": (_fewer_rows, {"MAX_EPISODE_STEPS": 12},
                     rf"{ANY_MP4}: more than the limit of 12 frames per episode"),
    "frame_pixels": (lambda r: None, {"MAX_FRAME_PIXELS": 256 * 255},
                     rf"{ANY_MP4}: 256x256 frames exceed the limit of 65280 pixels"),
    "episode_frame_bytes": (lambda r: None, {"MAX_EPISODE_FRAME_BYTES": 1 << 20},
                            rf"{ANY_MP4}: {FRAMES} frames of 256x256 decode to {FRAMES * 256 * 256 * 3} bytes, above "
                            rf"the limit of {1 << 20} per episode"),
    "parquet_fifo": (lambda r: _fifo(_data(r, 4)), {}, rf"{EP4}: not a regular file"),
    "video_device": (lambda r: (_video(r, 4).unlink(), _video(r, 4).symlink_to("/dev/zero")), {},
                     rf"{MP4}: not a regular file"),
    "infinite_fps": (lambda r: _set_info(r, fps=float("inf")), {}, r"info\.json: fps inf is not a positive finite"),
    "tasks_not_a_list": (lambda r: _set_episode(r, tasks=7), {}, r"episodes\.jsonl: episode 4: tasks 7 is not a list"),
}


@pytest.mark.parametrize(("breakage", "lowered", "message"), LIMITS.values(), ids=LIMITS.keys())
def test_limit_refuses_oversized_input_and_stores_nothing(client, pristine, tmp_path, monkeypatch, breakage, lowered,
                                                          message):
    root = tmp_path / NAME
    shutil.copytree(pristine, root)
    breakage(root)
    for name, value in lowered.items():
        monkeypatch.setattr(ingest, name, value)
    before = _replay_state(client)
    with pytest.raises(DatasetError, match=message):
        ingest_dataset(client, root, "gr1", known_embodiments=KNOWN)
    assert _replay_state(client) == before


TEMPLATES = {
    "traversal": ("../../outside/{episode_index}.parquet", "leads outside the dataset"),
    "absolute": ("/etc/{episode_index}", "leads outside the dataset"),
    "attribute": ("data/{episode_index.__class__}.parquet", r"field \{episode_index\.__class__\} is not one of"),
    "index": ("data/{video_key[0]}/{episode_index}.parquet", r"field \{video_key\[0\]\} is not one of"),
    "width_bomb": ("data/{episode_index:0100000000d}.parquet", r"field \{episode_index\} is not one of"),
    "spec_on_key": ("data/{video_key:06d}/{episode_index}.parquet", r"field \{video_key\} is not one of"),
    "conversion": ("data/{episode_index!r}.parquet", r"field \{episode_index\} is not one of"),
    "positional": ("data/{0}/{episode_index}.parquet", r"field \{0\} is not one of"),
    "no_index": ("data/episode.parquet", r"does not use \{episode_index\}"),
    "unbalanced": ("data/{episode_index.parquet", "is not a valid path template"),
    "not_a_string": (7, "is not a path template string"),
}


@pytest.mark.parametrize(("template", "message"), TEMPLATES.values(), ids=TEMPLATES.keys())
@pytest.mark.parametrize("key", ["data_path", "video_path"])
def test_path_templates_stay_inside_the_dataset(client, pristine, tmp_path, key, template, message):
    root = tmp_path / NAME
    shutil.copytree(pristine, root)
    _set_info(root, **{key: template})
    before = _replay_state(client)
    with pytest.raises(DatasetError, match=rf"meta/info\.json: {key} .*{message}"):
        ingest_dataset(client, root, "gr1", known_embodiments=KNOWN)
    assert _replay_state(client) == before
