"""Fixtures shared by every suite: a real embedded Valkey server and a replay client."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# MuJoCo picks its GL backend at import: render offscreen with EGL (Mesa's software driver on CPU).
os.environ.setdefault("MUJOCO_GL", "egl")

from fleetloop.replay import EmbeddedValkey, ReplayClient  # noqa: E402


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """A Valkey server on a free loopback port, persisting to tmp_path/replay."""
    with EmbeddedValkey(tmp_path / "replay") as server:
        yield server


@pytest.fixture
def client(valkey: EmbeddedValkey) -> Iterator[ReplayClient]:
    with ReplayClient(valkey.url, socket_timeout=5.0) as replay:
        yield replay
