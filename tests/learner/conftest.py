"""Fixtures of the learner tests: expert demonstrations of the reach task in a real Valkey."""

import numpy as np
import pytest

from fleetloop.actors.dagger import DEMO, Segment
from fleetloop.actors.dagger.episodes import to_episode
from fleetloop.actors.envs import make_env
from fleetloop.actors.envs.expert import ReachExpert
from fleetloop.actors.rollout import run_episodes


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
