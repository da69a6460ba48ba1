"""Fixtures of the replay tests (the Valkey server, client and make_episode come from tests/conftest.py)."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest



@pytest.fixture
def copy_dataset(tmp_path: Path, shared_dataset: Path) -> Callable[..., Path]:
    """Factory copying the shared dataset's meta files and the given episodes into
    tmp_path (writable copies; episodes.jsonl lists only those episodes)."""

    def copy(episodes: tuple[int, ...] = (4,), name: str = "gr1_copy") -> Path:
        root = tmp_path / name
        (root / "meta").mkdir(parents=True)
        for src in (shared_dataset / "meta").iterdir():
            shutil.copyfile(src, root / "meta" / src.name)
        listing = root / "meta/episodes.jsonl"
        rows = [json.loads(line) for line in listing.read_text().splitlines()]
        listing.write_text(
            "".join(json.dumps(row) + "\n" for row in rows if row["episode_index"] in episodes)
        )
        for index in episodes:
            for src in (
                shared_dataset / f"data/chunk-000/episode_{index:06d}.parquet",
                *shared_dataset.glob(f"videos/chunk-000/*/episode_{index:06d}.mp4"),
            ):
                dest = root / src.relative_to(shared_dataset)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
        return root

    return copy
