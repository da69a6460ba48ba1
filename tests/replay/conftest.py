"""Fixtures of the replay tests (the Valkey server and client come from tests/conftest.py)."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fleetloop.replay import Episode


@pytest.fixture
def make_episode() -> Callable[..., Episode]:
    """Factory of valid random episodes; keyword arguments override fields."""
    rng = np.random.default_rng(0)

    def make(
        length: int = 6,
        state_dim: int = 3,
        action_dim: int = 2,
        frame_steps: tuple[int, ...] = (0,),
        frame_shape: tuple[int, int] = (8, 10),
        **overrides,
    ) -> Episode:
        fields = dict(
            states=rng.normal(size=(length, state_dim)).astype(np.float32),
            actions=rng.normal(size=(length, action_dim)).astype(np.float32),
            frames={
                s: rng.integers(0, 256, size=(*frame_shape, 3), dtype=np.uint8)
                for s in frame_steps
            },
            instruction="pick up the red cube",
            embodiment="so100",
            source="expert_demo",
            policy_version=0,
            actor_id="actor-0",
            intervened=rng.random(length) < 0.3,
            rewards=rng.normal(size=length).astype(np.float32),
            success=True,
        )
        fields.update(overrides)
        return Episode(**fields)

    return make


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
