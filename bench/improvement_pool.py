"""Pool replicate runs of bench/improvement.py into one paired comparison.

One run evaluates every arm on 100 paired seeds, so its Wilson interval is about +-10 points and
a McNemar test cannot tell a gap of a few points from zero. Runs of the same configuration from
different behaviour-cloning checkpoints (``--seed``) are independent replicates: their paired
outcomes (``outcomes_by_arm``) concatenate into one paired sample. This script refuses runs of
different configurations and runs that share a checkpoint (identical C1 outcomes).

    python bench/improvement_pool.py RUN.json [RUN.json ...]

Each file holds the bench's output (its last line is the JSON object). The last stdout line is
one JSON object: per arm the pooled successes, rate and Wilson 95 % interval; D minus each
control in points with the exact McNemar p-value over all pairs; the per-run figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from improvement import ARMS

from fleetloop.stats import mcnemar_exact, wilson

CONFIG_KEYS = ("mode", "state_includes_object_pose", "n_demos", "bc_steps", "steps_per_round", "rounds",
               "dagger_episodes_per_round", "batch_size", "lr", "lr_restart", "refit_normalization", "gate",
               "takeover_cap", "hand_back", "takeover_labels", "pre_intervention_chunks", "beta_start",
               "beta_decay", "relabel", "correction_share", "robot_share", "distance_weights", "expert_ratio",
               "c2_last_demo_cut", "max_steps", "execute_steps", "eval_seeds")
"""Parameters that must agree for runs to be replicates of one configuration."""
LATER_KEYS = {"hand_back": ["subgoal", "agreement"], "beta_start": 0.5, "beta_decay": 0.5, "relabel": "every",
              "distance_weights": 0.0, "c2_last_demo_cut": False}
"""Parameters the bench reports since a later version, with the value runs before it used."""


class PoolError(ValueError):
    """The runs cannot be pooled; the message names the file and what to do."""


def load_run(path: Path) -> dict[str, Any]:
    """The JSON object on the last non-empty line of ``path``."""
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        run = json.loads(lines[-1])
    except (OSError, IndexError, json.JSONDecodeError) as exc:
        raise PoolError(f"{path}: no bench/improvement.py JSON line ({exc}); give the file its stdout went to") \
            from None
    if "outcomes_by_arm" not in run:
        raise PoolError(f"{path}: no outcomes_by_arm (a run from before they were reported); rerun it")
    if run.get("quick"):
        raise PoolError(f"{path}: a --quick run; pool full runs only")
    return run


def parameter(run: dict[str, Any], key: str) -> Any:
    """A run's parameter ``key``, or what it was before the bench reported it; ``correction_share``
    as one share per round (a run may give one share, or fewer than its rounds: the last repeats)."""
    value = run.get(key, LATER_KEYS.get(key))
    if key == "correction_share" and value is not None:
        shares = value if isinstance(value, list) else [value]
        value = shares + shares[-1:] * (run.get("rounds", len(shares)) - len(shares))
    return value


def check_replicates(paths: list[Path], runs: list[dict[str, Any]]) -> None:
    """Raise PoolError unless the runs share one configuration and come from different checkpoints."""
    first = runs[0]
    for path, run in zip(paths[1:], runs[1:]):
        differ = [key for key in CONFIG_KEYS if parameter(run, key) != parameter(first, key)]
        if differ:
            raise PoolError(f"{path} differs from {paths[0]} in {', '.join(differ)}: pool runs of one "
                            "configuration (different --seed only)")
    seen: dict[str, Path] = {}
    for path, run in zip(paths, runs):
        c1 = run["outcomes_by_arm"]["equal_steps"]
        if c1 in seen:
            raise PoolError(f"{path} and {seen[c1]} have identical C1 outcomes, so they share a checkpoint: "
                            "they are not independent replicates; keep one")
        seen[c1] = path


def pool(paths: list[Path]) -> dict[str, Any]:
    """Pooled success per arm and D against each control over every run's paired seeds."""
    runs = [load_run(path) for path in paths]
    check_replicates(paths, runs)
    outcomes = {arm: [c == "1" for run in runs for c in run["outcomes_by_arm"][arm]] for arm in ARMS}
    n = len(outcomes["dagger"])
    arms = {arm: {"successes": sum(o), "success_rate": round(sum(o) / n, 4), "ci95": wilson(sum(o), n)}
            for arm, o in outcomes.items()}

    def versus(control: str) -> dict[str, Any]:
        return {"points": round(100 * (arms["dagger"]["success_rate"] - arms[control]["success_rate"]), 1),
                "mcnemar_p": mcnemar_exact(outcomes["dagger"], outcomes[control])}

    per_run = [{"file": str(path), "seed_outcomes": len(run["outcomes_by_arm"]["dagger"]),
                **{arm: run["outcomes_by_arm"][arm].count("1") for arm in ARMS},
                "expert_steps": run["expert_steps_by_arm"]} for path, run in zip(paths, runs)]
    return {"benchmark": "improvement_pool", "runs": len(runs), "paired_outcomes": n, "arms": arms,
            "dagger_vs_equal_steps": versus("equal_steps"), "dagger_vs_equal_expert": versus("equal_expert"),
            "expert_steps_by_arm": {arm: sum(run["expert_steps_by_arm"][arm] for run in runs) for arm in ARMS},
            "config": {key: parameter(runs[0], key) for key in CONFIG_KEYS}, "per_run": per_run}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="files holding bench/improvement.py's output")
    args = parser.parse_args(argv)
    if len(set(args.runs)) != len(args.runs):
        parser.error("a run file is given twice; give each replicate once")
    try:
        result = pool(args.runs)
    except PoolError as exc:
        parser.error(str(exc))
    for name, arm in result["arms"].items():
        print(f"{name}: {arm['successes']}/{result['paired_outcomes']} ({arm['ci95'][0]:.0%}-{arm['ci95'][1]:.0%})",
              file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
