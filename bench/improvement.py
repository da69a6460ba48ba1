"""DAgger improvement: success on GR-1 pick-and-place before and after DAgger rounds.

The loop's own parts, in one process: an embedded Valkey replay, the DeepSpeed ``Learner``
(its weights reach the actor over the gRPC WeightService) and an ``EnvActor`` rolling out
MuJoCo episodes with the scripted expert as the operator.

1. The actor writes N expert demonstrations to ``pretrain``; the learner fits the
   normalisation on them and trains T0 steps (round 0: demonstrations only).
2. Every round r = 0..k: the actor runs ``EnvActor.run_round`` with round r's policy: M DAgger
   episodes on the same M scenes every round (``actors.dagger_seed_base``; ``hg-dagger``: the gate
   lets the expert take over and only the takeovers become ``corrections``; ``dagger``:
   beta-mixture rollouts, every visited state relabelled), then
   E policy-only evaluation episodes on fixed seeds (``actors.eval_seed_base``: the same env
   seeds and denoising noise in every round). Before round r + 1 the learner trains T more
   steps on the mixture pretrain + corrections (``--correction-share`` of each batch).
3. Control (unless --no-control): a fresh learner with the same seed and learning-rate
   schedule trains the same total steps (T0 + k T) on the demonstrations alone and is
   evaluated on the same seeds, so the gain is not just "more training".

Success rates carry Wilson 95 % intervals. ``intervention_rate_by_round[r]`` is the fraction
of steps the expert drove in round r's DAgger episodes (those that feed round r + 1; the final
round's are measured, not trained on). Logs go to stderr; the last stdout line is one JSON
object.

    python bench/improvement.py [--quick] [--mode hg-dagger|dagger] [--images-only]
"""

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering (before mujoco loads)
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch

from fleetloop.actors.env_actor import EnvActor
from fleetloop.config import FleetloopConfig, load_config
from fleetloop.learner.learner import Learner
from fleetloop.learner.role import fit_pretrain_normalization
from fleetloop.replay import EmbeddedValkey

logger = logging.getLogger("bench.improvement")

EVAL_SEED_BASE = 900_000
"""Evaluation episode i resets the env (and seeds the policy's noise) from EVAL_SEED_BASE + i."""
DAGGER_SEED_BASE = 800_000
"""DAgger episode i of every round likewise from DAGGER_SEED_BASE + i: the same scenes each round."""

FULL = dict(demos=4, pretrain_steps=1500, round_steps=500, rounds=3, dagger_episodes=40, eval_episodes=50)
QUICK = dict(demos=2, pretrain_steps=10, round_steps=5, rounds=2, dagger_episodes=1, eval_episodes=3)


def wilson(successes: int, n: int, z: float = 1.959964) -> list[float]:
    """Wilson score 95 % interval [low, high] of a binomial rate."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def make_config(args: argparse.Namespace, mixture: dict[str, float], dagger_episodes: int) -> FleetloopConfig:
    """The run's config: one actor on gr1_pick_place with fixed evaluation seeds; one learning-rate
    schedule over all T0 + k T steps (published by the bench at round ends)."""
    total = args.pretrain_steps + args.rounds * args.round_steps
    return load_config("default", [
        "model.preset=tiny", "actors.env=gr1_pick_place", "actors.num_actors=1", f"actors.max_steps={args.max_steps}",
        f"actors.execute_steps={args.execute_steps}", f"actors.dagger.mode={args.mode}",
        f"actors.state_includes_object_pose={not args.images_only}", f"actors.eval_seed_base={EVAL_SEED_BASE}",
        f"actors.dagger_seed_base={DAGGER_SEED_BASE}",
        f"actors.eval_episodes_per_round={args.eval_episodes}", f"actors.dagger_episodes_per_round={dagger_episodes}",
        f"actors.dagger.gate_threshold={args.gate_threshold}", "actors.torch_threads=1",
        f"learner.batch_size={args.batch_size}", f"learner.lr={args.lr}", f"run.seed={args.seed}",
        "run.rounds=1", f"learner.steps_per_round={total}", f"learner.publish_every={total}",
        f"learner.warmup_steps={min(50, total // 10)}", "learner.checkpoint_every=0", "learner.torch_threads=1",
        f"learner.tune_llm={args.images_only}", f"learner.tune_visual={args.images_only}",
        f"replay.mixture={json.dumps(mixture)}", "weights.port=0", "metrics.learner_port=0",
        "metrics.actor_base_port=0",
    ])


class Run:
    """One learner and the actor following its weights (the actor's audit in ``root``)."""

    def __init__(self, cfg: FleetloopConfig, url: str, root: Path):
        self.learner = Learner(cfg, str(root / "learner"), url)
        self.actor = EnvActor(0, cfg, url, self.learner.endpoints()["weights"], str(root / "audit"))

    def train(self, steps: int) -> dict:
        """Train ``steps`` steps and publish; the version the actor must run next."""
        start = time.time()
        loss = self.learner.train(steps)["loss"]
        return {"steps": steps, "loss": round(loss, 4), "train_seconds": round(time.time() - start, 1),
                "version": self.learner.publish()}

    def round(self, index: int, version: int) -> dict:
        """``run_round`` of the actor on ``version``: its DAgger episodes, then the evaluation."""
        start = time.time()
        result = self.actor.run_round(index, min_version=version, timeout_s=300)
        ci = wilson(result["eval_successes"], result["eval_episodes"])
        logger.info("round %d (version %d): success %d/%d %s, intervention rate %.3f", index, version,
                    result["eval_successes"], result["eval_episodes"], ci, result["intervention_rate"])
        return {"successes": result["eval_successes"], "success_rate": result["success_rate"], "ci95": ci,
                "intervention_rate": round(result["intervention_rate"], 4), "discarded": result["discarded"],
                "rollout_seconds": round(time.time() - start, 1)}

    def close(self) -> None:
        self.actor.close()
        self.learner.close()


def run_dagger(args: argparse.Namespace, url: str, root: Path) -> tuple[list[dict], int]:
    """Demonstrations, then rounds 0..k; one record per round and the demos that succeeded."""
    mixture = {"pretrain": 1.0 - args.correction_share, "corrections": args.correction_share}
    run = Run(make_config(args, mixture, args.dagger_episodes), url, root)
    try:
        start = time.time()
        demo_successes = run.actor.collect_demos(args.demos)
        logger.info("%d/%d expert demonstrations succeeded (%.0f s)", demo_successes, args.demos, time.time() - start)
        fit_pretrain_normalization(run.learner)
        records = []
        for r in range(args.rounds + 1):
            trained = run.train(args.round_steps if r else args.pretrain_steps)
            before = len(run.actor.status()["written"].get("corrections", []))
            record = {"round": r, **trained, **run.round(r, trained["version"])}
            record["correction_episodes"] = len(run.actor.status()["written"].get("corrections", [])) - before
            records.append(record)
        return records, demo_successes
    finally:
        run.close()


def run_control(args: argparse.Namespace, url: str, root: Path) -> dict:
    """A fresh learner (same seed and schedule) trained T0 + k T steps on the demonstrations alone."""
    run = Run(make_config(args, {"pretrain": 1.0}, dagger_episodes=0), url, root)
    try:
        fit_pretrain_normalization(run.learner)
        trained = run.train(args.pretrain_steps + args.rounds * args.round_steps)
        return {**trained, **run.round(0, trained["version"])}
    finally:
        run.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI: check the mechanics in a few minutes")
    parser.add_argument("--mode", choices=("hg-dagger", "dagger"), default="hg-dagger")
    parser.add_argument("--images-only", action="store_true",
                        help="no object pose in the state (System 2 then trains too)")
    parser.add_argument("--no-control", action="store_true", help="skip the demos-only control at equal steps")
    parser.add_argument("--seed", type=int, default=0)
    for name, default in FULL.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"default {default} ({QUICK[name]} with --quick)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--gate-threshold", type=float, default=0.3, help="hg-dagger gate (rad)")
    parser.add_argument("--correction-share", type=float, default=0.2,
                        help="share of each batch drawn from corrections after round 0 (the rest: pretrain)")
    parser.add_argument("--max-steps", type=int, default=96, help="control steps per episode")
    parser.add_argument("--execute-steps", type=int, default=8, help="steps of a chunk executed before re-planning")
    args = parser.parse_args()
    for name, default in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.quick:
        args.no_control = True
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedValkey(Path(tmp) / "replay") as server:
        rounds, demo_successes = run_dagger(args, server.url, Path(tmp) / "dagger")
        control = None if args.no_control else run_control(args, server.url, Path(tmp) / "control")
    success = [r["success_rate"] for r in rounds]
    ci = [r["ci95"] for r in rounds]
    print(json.dumps({
        "benchmark": "improvement",
        "quick": args.quick,
        "task": "gr1_pick_place",
        "mode": args.mode,
        "success_by_round": success,
        "ci95_by_round": ci,
        "gain_points": round(100 * (success[-1] - success[0]), 1),
        "intervals_overlap": ci[-1][0] <= ci[0][1],
        "intervention_rate_by_round": [r["intervention_rate"] for r in rounds],
        "eval_episodes_per_round": args.eval_episodes,
        "control_same_total_steps": control,
        "state_includes_object_pose": not args.images_only,
        "n_demos": args.demos,
        "demo_successes": demo_successes,
        "pretrain_steps": args.pretrain_steps,
        "steps_per_round": args.round_steps,
        "rounds": args.rounds,
        "dagger_episodes_per_round": args.dagger_episodes,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "gate_threshold": args.gate_threshold,
        "correction_share": args.correction_share,
        "max_steps": args.max_steps,
        "execute_steps": args.execute_steps,
        "eval_seeds": [EVAL_SEED_BASE, EVAL_SEED_BASE + args.eval_episodes - 1],
        "dagger_seeds": [DAGGER_SEED_BASE, DAGGER_SEED_BASE + args.dagger_episodes - 1],
        "per_round": rounds,
        "wall_seconds": round(time.time() - start, 1),
    }))


if __name__ == "__main__":
    main()
