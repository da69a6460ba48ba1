"""Fixtures of the replay tests (the Valkey server and client come from tests/conftest.py)."""

from collections.abc import Callable

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
