"""Learner throughput: optimizer steps/s with batches from the replay vs batches already in memory.

Starts an embedded Valkey in a temporary directory and fills ``pretrain`` with expert
demonstrations of the reach task (real MuJoCo rollouts with 64x64 frames). Each rank then runs
the real ``Learner.train`` loop (DeepSpeed ZeRO-1, gloo on CPU) in two modes, interleaved in
ROUNDS slices so that background load hits both alike:

- replay: the background prefetcher samples windows from Valkey, decodes and collates them;
- memory: the same loop fed by batches collated beforehand (the DeepSpeed loop alone).

``overhead_ratio`` = memory steps/s / replay steps/s (1.0 = no overhead; goal <= 1.05), for 1
rank in this process and for 2 ranks as Ray Train workers (TorchTrainer). Logs go to stderr;
the last stdout line is one JSON object.

    python bench/learner.py [--quick]
"""

import argparse
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering of the demonstrations (before mujoco loads)

from fleetloop.actors.dagger import DEMO, Segment
from fleetloop.actors.dagger.episodes import to_episode
from fleetloop.actors.envs import make_env
from fleetloop.actors.envs.expert import ReachExpert
from fleetloop.actors.rollout import run_episodes
from fleetloop.config import FleetloopConfig, load_config
from fleetloop.replay import EmbeddedValkey, ReplayClient

logger = logging.getLogger("bench.learner")


class InMemoryBatches:
    """Stands in for the Prefetcher: cycles through batches prepared before timing starts."""

    limited_s = 0.0
    """Seconds waited on the replay's rate limiters: never."""

    def __init__(self, items: list):
        self._items = itertools.cycle(items)

    def next(self, timeout: float = 0.0):
        return next(self._items)

    def close(self) -> None:
        pass


def fill_replay(url: str, episodes: int) -> None:
    env = make_env("reach", max_steps=64)
    expert = ReachExpert(env)
    rng = np.random.default_rng(0)
    with ReplayClient(url) as client:
        for seed in range(episodes):
            traj = run_episodes(env, expert, None, horizon=16, execute_steps=8, frame_every=4, rng=rng, seed=seed)["arm_0"]
            client.write_episode("pretrain", to_episode(traj, Segment.whole("pretrain", DEMO, len(traj.states)),
                                                        embodiment=env.embodiment, policy_version=0, actor_id="bench"))
    env.close()


def measure_rank(cfg: FleetloopConfig, run_dir: str, url: str, steps: int, rounds: int) -> dict:
    """Steps/s of this rank's Learner in both modes (rank 0's figures are the ones reported)."""
    from fleetloop.learner.learner import Learner
    from fleetloop.learner.settings import LearnerSettings

    learner = Learner(LearnerSettings.of(cfg), run_dir, ReplayClient(url))
    try:
        learner.fit_mixture_normalization()
        learner.train(3)  # warm-up: first steps allocate and fill the prefetch queue
        replay_prefetch = learner.prefetch
        memory = InMemoryBatches([learner._next_item() for _ in range(8)])
        seconds = {"replay": 0.0, "memory": 0.0}
        for _ in range(rounds):
            for mode, source in (("replay", replay_prefetch), ("memory", memory)):
                learner.prefetch = source
                learner.any_rank(False)  # ranks start each slice together
                start = time.perf_counter()
                learner.train(steps)
                seconds[mode] += time.perf_counter() - start
        learner.prefetch = replay_prefetch  # closed with the learner
        total = steps * rounds
        return {"replay_steps_per_s": total / seconds["replay"], "memory_steps_per_s": total / seconds["memory"],
                "rank": learner.rank, "world_size": learner.world_size}
    finally:
        learner.close()


def _ray_worker(config: dict) -> dict:
    return measure_rank(config["cfg"], config["run_dir"], config["url"], config["steps"], config["rounds"])


def measure_two_ranks(cfg: FleetloopConfig, run_dir: str, url: str, steps: int, rounds: int) -> dict:
    """Rank 0's figures of 2 ranks run as Ray Train workers."""
    from fleetloop.learner.ray_train import fit_ray_trainer

    return fit_ray_trainer(_ray_worker, {"cfg": cfg, "run_dir": run_dir, "url": url, "steps": steps,
                                         "rounds": rounds}, ranks=2, run_dir=run_dir)


def summarise(result: dict) -> dict:
    return {"replay_steps_per_s": round(result["replay_steps_per_s"], 3),
            "memory_steps_per_s": round(result["memory_steps_per_s"], 3),
            "overhead_ratio": round(result["memory_steps_per_s"] / result["replay_steps_per_s"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, under two minutes")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per micro-batch per rank (default: 16)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    steps, rounds, episodes = (5, 2, 8) if args.quick else (20, 4, 32)
    cfg = load_config("smoke", [f"learner.batch_size={args.batch_size}", "learner.publish_every=1000",
                                "learner.steps_per_round=1000", "learner.checkpoint_every=0",
                                "learner.torch_threads=1"])
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedValkey(Path(tmp) / "replay") as server:
        fill_replay(server.url, episodes)
        logger.info("replay filled with %d demonstrations; timing 1 rank", episodes)
        one = summarise(measure_rank(cfg, str(Path(tmp) / "one"), server.url, steps, rounds))
        logger.info("1 rank: %s; timing 2 ranks (Ray Train)", one)
        two = summarise(measure_two_ranks(cfg, str(Path(tmp) / "two"), server.url, steps, rounds))
        logger.info("2 ranks: %s", two)
    print(json.dumps({
        "benchmark": "learner",
        "quick": args.quick,
        "batch_size_per_rank": args.batch_size,
        "steps_per_slice": steps,
        "slices": rounds,
        "overhead_ratio": one["overhead_ratio"],
        "overhead_ratio_2_ranks": two["overhead_ratio"],
        "one_rank": one,
        "two_ranks": two,
        "wall_seconds": round(time.time() - start, 1),
    }))


if __name__ == "__main__":
    main()
