"""Fixtures shared by every suite: a real embedded Valkey server, a replay client, and the
read-only material of ../shared (beside the checkout, as in CI)."""

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# MuJoCo picks its GL backend at import: render offscreen with EGL (Mesa's software driver on CPU).
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from fleetloop.replay import EmbeddedValkey, Episode, ReplayClient  # noqa: E402


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


@pytest.fixture(scope="session")
def pki() -> dict[str, tuple[bytes, bytes]]:
    """PEM (cert, key) of a throwaway CA, a server and a client it signed, and a stranger CA."""
    from tests.pki import make_pki

    return make_pki()


SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared/ folder beside the checkout (datasets, reference data)."""
    assert SHARED_DIR.is_dir(), f"{SHARED_DIR} not found: these tests need shared/ beside the checkout, as CI has it"
    return SHARED_DIR


@pytest.fixture(scope="session")
def shared_dataset(shared_dir: Path) -> Path:
    """The shared GR-1 pick-and-place dataset (LeRobot v2.0, GR00T layout); read-only."""
    return shared_dir / "datasets" / "gr1_pick_place"


@pytest.fixture(scope="session")
def gr00t_reference(shared_dir: Path) -> dict[str, list]:
    """Names -> [shape, dtype] of the released GR00T-N1-2B state dict."""
    return json.loads((shared_dir / "reference" / "gr00t_n1_2b_state_dict.json").read_text())["params"]
