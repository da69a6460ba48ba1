"""Fixtures of the actor tests: a real WeightService to follow and weights to publish on it."""

import numpy as np
import prometheus_client as prom
import pytest
import torch

from fleetloop.learner.publisher import WeightPublisher
from fleetloop.system import DualSystemPolicy, embodiment_id, model_preset

SMALL = ["actors.max_steps=16", "actors.dagger_episodes_per_round=1", "actors.eval_episodes_per_round=1"]
"""A reach actor with short episodes and one DAgger and one evaluation episode per round."""


def counted(name: str, **labels: str) -> float:
    """A counter's value now in this process's registry (0 before its first increment): counters
    live as long as the process, so a test asserts what it added to them, not their total."""
    return prom.REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(body: str, name: str, **labels: str) -> float | None:
    """The value of ``name`` with ``labels`` in Prometheus text ``body`` (None when absent)."""
    sample = name + "{" + ",".join(f'{key}="{value}"' for key, value in sorted(labels.items())) + "}"
    for line in body.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def policy_weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = DualSystemPolicy(model_preset("tiny"))
    model.set_normalization(embodiment_id("sim_arm"), state_min=np.full(4, -3.0), state_max=np.full(4, 3.0),
                            action_min=np.array([-2.0, -2.5]), action_max=np.array([2.0, 2.5]))
    return model.state_dict()


@pytest.fixture
def publisher():
    publisher = WeightPublisher(port=0)
    port = publisher.start()
    yield publisher, f"127.0.0.1:{port}"
    publisher.stop(grace=0.5)


def out_of_reach(env, after_step: int = 0) -> None:
    """Put the named object of a GR-1 pick-and-place env 1.2 m in front of its robot, out of the
    expert's reach, once ``after_step`` steps have run (0: at reset)."""
    place, step = env._place_items, env.step

    def far():
        env.scene.place_object(env.goal("gr1_0")[0], (1.2, -0.2), 0.0)

    def placed():
        place()
        if after_step == 0:
            far()

    def stepped(actions):
        result = step(actions)
        if env._steps == after_step:
            far()
        return result

    env._place_items, env.step = placed, stepped
