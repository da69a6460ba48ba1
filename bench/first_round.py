"""D's first round alone, to find what in the corrections helps or harms (docs/improvement.md).

From a behaviour-cloning policy file of a ``bench/improvement.py --keep`` run: the same N
demonstrations, the same round-0 DAgger episodes on the same scenes (skipped when the mixture
leaves corrections out), T optimizer steps on ``--mixture`` with ``--class-weights``, then the
evaluation seeds with fixed noise. Rows of one checkpoint are paired: run it once per variant
and compare the ``outcomes`` with ``bench/improvement_pool.py``'s McNemar test, or by eye.

    python bench/first_round.py --bc-policy FILE --mixture '{"pretrain": 0.5, "corrections": 0.5}'
        [--class-weights '{"intervention": 0}'] [--lr 3e-4] [--set KEY=VALUE ...]

Logs go to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import improvement as imp

from fleetloop.config import DEFAULT_CLASS_WEIGHTS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bc-policy", type=Path, required=True, help="policy file of a --keep run's bc/ folder")
    parser.add_argument("--mixture", type=json.loads, default={"pretrain": 0.5, "corrections": 0.5},
                        help="replay.mixture of the round, JSON (default: corrections half of every batch)")
    parser.add_argument("--class-weights", type=json.loads, default={},
                        help="learner.class_weights overrides, JSON (e.g. '{\"intervention\": 0}')")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any further config override (e.g. replay.tables.corrections.sample_by=episode)")
    args, rest = parser.parse_known_args(argv)
    bench = imp.parse_args(["--bc-policy", str(args.bc_policy), *rest])
    unknown = set(args.class_weights) - set(DEFAULT_CLASS_WEIGHTS)
    if unknown:
        parser.error(f"--class-weights names {sorted(unknown)}; classes: {sorted(DEFAULT_CLASS_WEIGHTS)}")
    bench.mixture, bench.overrides = args.mixture, [
        f"learner.class_weights={json.dumps({**DEFAULT_CLASS_WEIGHTS, **args.class_weights})}", *args.set]
    return bench


def first_round(args: argparse.Namespace, root: Path) -> dict:
    cfg = imp.make_config(args, mixture=args.mixture, total_steps=args.rounds * args.round_steps,
                          init_from=str(args.bc_policy), extra=args.overrides)
    arm = imp.Arm(cfg, root)
    try:
        arm.actor.collect_demos(args.demos, [imp.DEMO_SEED_BASE + i for i in range(args.demos)])
        arm.publish()
        collected = {}
        if args.mixture.get("corrections", 0) > 0:
            seeds = [imp.DAGGER_SEED_BASE + i for i in range(args.dagger_episodes)]
            collected = arm.actor.dagger_episodes(0, seeds)
        trained = arm.train(args.round_steps)
        return {**trained, **arm.evaluate(args.eval_episodes), "takeovers": collected.get("takeovers"),
                "expert_label_rows": collected.get("expert_label_rows"), "episodes": arm.episodes()}
    finally:
        arm.close()


def main() -> None:
    args = parse_args()
    result, wall = imp.run_in_scratch(first_round, args)
    print(json.dumps({"benchmark": "first_round", "bc_policy": str(args.bc_policy), "mixture": args.mixture,
                      "overrides": args.overrides, "lr": args.lr, "round_steps": args.round_steps,
                      **result, "wall_seconds": wall}))

if __name__ == "__main__":
    main()
