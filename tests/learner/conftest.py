"""Fixtures of the learner tests: expert demonstrations of the reach task in a real Valkey."""

import numpy as np
import pytest

from fleetloop.actors.dagger import DEMO, Segment
from fleetloop.actors.dagger.episodes import to_episode
from fleetloop.actors.envs import make_env
from fleetloop.actors.envs.expert import ReachExpert
from fleetloop.actors.rollout import run_episodes
from fleetloop.config import load_config
from fleetloop.learner.learner import Learner
from fleetloop.learner.settings import LearnerSettings
from fleetloop.replay import ReplayClient


@pytest.fixture
def demos(client):
    """Two expert demonstrations of the reach task in `pretrain`."""
    env = make_env("reach", max_steps=16)
    expert = ReachExpert(env)
    rng = np.random.default_rng(0)
    for seed in range(2):
        traj = run_episodes(env, expert, None, horizon=16, execute_steps=8, frame_every=4, rng=rng, seed=seed)["arm_0"]
        client.write_episode("pretrain", to_episode(traj, Segment.whole("pretrain", DEMO, len(traj.states)),
                                                        embodiment=env.embodiment, policy_version=0, actor_id="test"))
    env.close()
    return env.embodiment


def first_batch(redis_url: str, run_dir, overrides: list[str]) -> tuple[dict, list[dict]]:
    """The first collated batch and its windows of a smoke learner with ``overrides``, after the
    mixture's normalisation is fitted."""
    learner = Learner(LearnerSettings.of(load_config("smoke", overrides)), str(run_dir), ReplayClient(redis_url))
    try:
        learner.fit_mixture_normalization()
        batch, windows, _ = learner._next_item()
    finally:
        learner.close()
    return batch, windows
