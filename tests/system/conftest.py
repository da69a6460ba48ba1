"""Shared fixtures for the system tests: the tiny config, a seeded model, raw samples.

Helpers are exposed as fixtures (not imported) so conftest modules of other test folders
cannot shadow them.
"""

from collections.abc import Callable

import numpy as np
import pytest
import torch

from fleetloop.system import DualSystemPolicy, ModelConfig, Processor, model_preset

STATE_DIM = 7
ACTION_DIM = 5
EMBODIMENT = 31
"""new_embodiment: no fixed layout, so samples may have any state/action width."""


@pytest.fixture(scope="session")
def config() -> ModelConfig:
    return model_preset("tiny")


@pytest.fixture
def model(config: ModelConfig) -> DualSystemPolicy:
    torch.manual_seed(0)
    return DualSystemPolicy(config)


@pytest.fixture
def processor(config: ModelConfig) -> Processor:
    return Processor(config)


@pytest.fixture
def make_sample() -> Callable[..., dict]:
    """Factory of raw new_embodiment samples: 7-dim state, 5-dim actions, a 50x40 image."""

    def make(rng: np.random.Generator, horizon: int = 16, with_action: bool = True, **overrides) -> dict:
        sample = {
            "image": rng.integers(0, 256, size=(50, 40, 3), dtype=np.uint8),
            "state": rng.uniform(-3, 3, size=STATE_DIM).astype(np.float32),
            "instruction": "pick up the red cube",
            "embodiment_id": EMBODIMENT,
        }
        if with_action:
            sample["action"] = rng.uniform(-2, 2, size=(horizon, ACTION_DIM)).astype(np.float32)
        sample.update(overrides)
        return sample

    return make


@pytest.fixture
def samples(make_sample) -> list[dict]:
    rng = np.random.default_rng(0)
    return [make_sample(rng) for _ in range(4)]


@pytest.fixture
def batch(processor: Processor, samples: list[dict]) -> dict[str, torch.Tensor]:
    return processor.collate(samples)


@pytest.fixture
def register_stats() -> Callable[[DualSystemPolicy], None]:
    """Registers min/max statistics matching the sample ranges for new_embodiment (id 31)."""

    def register(model: DualSystemPolicy) -> None:
        model.set_normalization(
            EMBODIMENT,
            state_min=np.full(STATE_DIM, -3.0),
            state_max=np.full(STATE_DIM, 3.0),
            action_min=np.full(ACTION_DIM, -2.0),
            action_max=np.full(ACTION_DIM, 2.0),
        )

    return register
