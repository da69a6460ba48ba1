"""How much of what a policy gets wrong does a gate see? One policy file, watched (docs/improvement.md).

The policy (a ``bench/improvement.py --keep`` run's ``bc/`` checkpoint or an arm's final policy,
``final_policies`` in its JSON) runs on the bench's evaluation seeds with the same denoising
noise, the simulated operator watching with the gate the flags describe: every plan judged, none
taken over, so the outcomes are the policy's own (paired with the bench's figures for that
policy). At the first plan the gate fires on, the expert is asked whether it could still finish.
Reported: the bench's ``gate_flags`` (failures flagged while recoverable: ``recall``; successes
flagged: false alarms) and the outcomes, so gates can be compared on one policy without training.

    python bench/gate_watch.py --policy FILE [--settle-steps 8] [--at-once slip] [--effector-m 0.07] ...

Logs go to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import improvement as imp


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", type=Path, required=True, help="a policy-step-*.safetensors file")
    args, rest = parser.parse_known_args(argv)
    if not args.policy.is_file():
        parser.error(f"--policy {args.policy}: no such file (a --keep run's bc/learner/checkpoints/"
                     "policy-step-*.safetensors, or a path from its final_policies)")
    bench = imp.parse_args(rest)  # the gate, episode and seed flags of bench/improvement.py
    bench.policy = args.policy
    return bench


def watch(args: argparse.Namespace, root: Path) -> dict:
    cfg = imp.make_config(args, mixture={"pretrain": 1.0}, total_steps=1, init_from=str(args.policy))
    arm = imp.Arm(cfg, root)
    try:
        arm.publish()
        result = arm.evaluate(args.eval_episodes, watch=True, probe_recovery=True)
        return {"successes": result["successes"], "success_rate": result["success_rate"], "ci95": result["ci95"],
                "gate_flags": imp.gate_recall(result["gate"]),
                "outcomes": imp.outcome_string(result["outcomes"]), "eval_seconds": result["eval_seconds"]}
    finally:
        arm.close()


def main() -> None:
    args = parse_args()
    result, wall = imp.run_in_scratch(watch, args)
    print(json.dumps({"benchmark": "gate_watch", "policy": str(args.policy), "gate": imp.gate_options(args),
                      "eval_episodes": args.eval_episodes, "eval_seeds": imp.eval_seed_range(args), **result,
                      "wall_seconds": wall}))

if __name__ == "__main__":
    main()
