"""Fixtures: a real embedded Valkey server per test, in the test's tmp_path."""

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from fleetloop.replay import EmbeddedValkey, Episode, ReplayClient


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """A Valkey server on a free loopback port, persisting to tmp_path/replay."""
    with EmbeddedValkey(tmp_path / "replay") as server:
        yield server


@pytest.fixture
def client(valkey: EmbeddedValkey) -> Iterator[ReplayClient]:
    with ReplayClient(valkey.url, socket_timeout=5.0) as replay:
        yield replay


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
