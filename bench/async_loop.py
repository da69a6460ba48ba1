"""Sync against async: the same `fleetloop up` under the same wall-clock budget, one after the other.

Each configuration is a real `fleetloop up` (embedded Valkey, local Ray, the DeepSpeed learner, env
actors, the evaluator on fixed seeds) on the task's defaults with ``run.duration_s`` set to the
budget and no step bound, so each mode does what it can in that time. For every run: the learner's
and the actors' busy fractions, episodes and learner steps per minute, the policy lag's p95 and the
evaluator's success against the loop's wall-clock (the minute each evaluated version came out).
``wall_to_sync_final_success_ratio``: the minute async first reaches the sync run's final success,
over the sync run's minutes (None: it never did within the budget); ``..._by_run`` the same for
every configuration beside sync.

Configurations: sync and async with ``--actors`` actors, and (not with ``--quick``) async with one
actor fewer (what an actor adds), async with 2 learner ranks (``learner.ranks=2``, Ray Train
workers inside the loop), async with the promotion gate (``weights.promotion=evaluated``: the
fleet runs only versions the evaluator scored no worse than its own, within the margin) and async
with the actors at the lowest CPU priority (``actors.niceness=19``: on shared cores the learner
trains first, the actors take what it leaves). ``--runs`` picks some of them (sync and async always run).
``learner_ranks`` compares the async runs with 1 and 2 ranks: optimizer steps and training windows
per minute (a rank draws learner.batch_size windows a step), busy fraction and the final success.
``promotion`` compares async with and without the gate: the share of the fleet's DAgger steps the
expert drove (``fleet_intervention_rate``), the success of the versions the fleet ran against the
minute it started running them, and the versions promoted.

``--init-from FILE`` starts every run from one policy file (``learner.init_from``): the
continual-improvement case, a fleet improving a pretrained policy, e.g. the behaviour-cloning
checkpoint of ``bench/improvement.py --keep DIR`` on GR-1 (trained with the same task settings).

Logs go to stderr; the last stdout line is one JSON object.

    python bench/async_loop.py [--quick] [--task reach|gr1_pick_place] [--budget-s S] [--actors N]
                               [--init-from FILE] [--runs NAME,...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("bench.async_loop")

FLEETLOOP = str(Path(sys.executable).parent / "fleetloop")
FULL = {"budget_s": 600, "actors": 2, "evaluator_episodes": 20}
QUICK = {"budget_s": 25, "actors": 2, "evaluator_episodes": 2}
TASKS = {
    "reach": [],
    "gr1_pick_place": ["actors.env=gr1_pick_place", "actors.max_steps=96", "actors.state_includes_object_pose=true",
                       "actors.dagger.mode=hg-dagger", "actors.demos_per_actor=8", "learner.tune_llm=false",
                       "learner.tune_visual=false"],
}
"""Settings over the preset per task (the default preset is the reach task). GR-1 as in
bench/improvement.py: the object's pose in the state, System 2 frozen."""
EXTRA_RUNS = {
    "async_fewer_actors": lambda base, actors: ["run.mode=async", f"actors.num_actors={actors - 1}"],
    "async_two_ranks": lambda base, actors: [*base, "learner.ranks=2"],
    "async_promoted": lambda base, actors: [*base, "weights.promotion=evaluated"],
    "async_niced": lambda base, actors: [*base, "actors.niceness=19"],
}
"""The configurations beside sync and async (``--runs``): settings from async's (``base``) and ``--actors``."""


def run_up(root: Path, name: str, settings: list[str], preset: str) -> dict[str, Any]:
    """One `fleetloop up` in ``root/name``; its summary and evaluations.

    Raises:
        RuntimeError: the run failed; the message ends with its output.
    """
    run_dir, summary = root / name, root / f"{name}.json"
    command = [FLEETLOOP, "up", "--config", preset, "--run-dir", str(run_dir), "--summary-json", str(summary),
               *[arg for setting in settings for arg in ("--set", setting)]]
    log.info("%s: %s", name, " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{name}: fleetloop up exited {done.returncode}: {done.stderr[-3000:]}")
    return {**json.loads(summary.read_text()),
            "evaluations": json.loads((run_dir / "evaluations.json").read_text())}


def minutes_to_reach(success_by_minute: list[list[float]], target: float) -> float | None:
    """The first minute at which the success reached ``target`` (None: never)."""
    return next((minute for minute, success in success_by_minute if success >= target), None)


def wall_to_reach(sync: dict[str, Any], run: dict[str, Any]) -> float | None:
    """The minute ``run`` first reached the sync run's final success, over the sync run's minutes
    (None: sync has no final figure, or ``run`` never reached it)."""
    if sync["final_success"] is None:
        return None
    reached = minutes_to_reach(run["success_by_minute"], sync["final_success"])
    return None if reached is None else round(reached * 60 / sync["loop_seconds"], 3)


def figures(run: dict[str, Any]) -> dict[str, Any]:
    """One run's figures. ``success_by_minute`` holds the evaluations of weights the loop trained
    (step > 0); the starting weights' own evaluation (async evaluates them at minute 0) is
    ``start_success``, so a pretrained start (``--init-from``) cannot count as reaching a target."""
    keys = ("learner_busy_fraction", "actor_busy_fraction", "episodes_per_minute", "learner_steps_per_minute",
            "policy_lag_p95_versions", "learner_steps", "learner_ranks", "loop_seconds", "learner_limiter_wait_s",
            "stopped_by")
    timed = [e for e in run["evaluations"] if e.get("minute") is not None]
    trained = [[e["minute"], e["success_rate"]] for e in timed if e["step"] != 0]  # None: a newer version than asked
    start = next((e["success_rate"] for e in timed if e["step"] == 0), None)
    return {**{key: run[key] for key in keys}, "success_by_minute": trained, "start_success": start,
            "final_success": trained[-1][1] if trained else None,
            "fleet_intervention_rate": run.get("fleet_intervention_rate"),
            "fleet_success_by_minute": fleet_success_by_minute(timed),
            "weight_versions_promoted": run.get("weight_versions_promoted")}


def fleet_success_by_minute(evaluations: list[dict[str, Any]]) -> list[list[float]]:
    """[minute, success] of each evaluated version the fleet ran, from the minute it started running
    it: without the gate every version as it came out; with it (records carry ``promoted``) the
    promoted ones once their evaluation ended."""
    gated = any("promoted" in e for e in evaluations)
    if not gated:
        return [[e["minute"], e["success_rate"]] for e in evaluations]
    return [[round(e["minute"] + e["seconds"] / 60, 3), e["success_rate"]] for e in evaluations if e["promoted"]]


def rank_figures(run: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """One async run's learner throughput for the 1-against-2-ranks comparison."""
    steps = run["learner_steps_per_minute"]
    return {"ranks": run["learner_ranks"], "learner_steps_per_minute": steps,
            "windows_per_minute": round(steps * run["learner_ranks"] * batch_size, 1),
            "learner_busy_fraction": run["learner_busy_fraction"], "final_success": run["final_success"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI: the mechanics in a few minutes (smoke preset)")
    parser.add_argument("--task", choices=sorted(TASKS), default="reach")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"wall-clock of each loop (default {FULL['budget_s']}, {QUICK['budget_s']} with --quick)")
    parser.add_argument("--actors", type=int, default=None, help=f"env actors (default {FULL['actors']})")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep the run directories")
    parser.add_argument("--init-from", type=Path, help="every run starts from this policy file (learner.init_from)")
    parser.add_argument("--runs", default=",".join(EXTRA_RUNS),
                        help=f"configurations beside sync and async, comma-separated (default all: "
                             f"{','.join(EXTRA_RUNS)}; none with --quick)")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    args.budget_s = args.budget_s or defaults["budget_s"]
    args.actors = args.actors or defaults["actors"]
    args.evaluator_episodes = defaults["evaluator_episodes"]
    if args.budget_s <= 0:
        parser.error(f"--budget-s {args.budget_s} must be > 0 (seconds of each loop)")
    if args.actors < 2:
        parser.error(f"--actors {args.actors} must be >= 2: the bench also runs one actor fewer")
    args.runs = [] if args.quick else [name for name in args.runs.split(",") if name]
    unknown = sorted(set(args.runs) - set(EXTRA_RUNS))
    if unknown:
        parser.error(f"--runs {','.join(unknown)}: no such configuration; choose from {','.join(EXTRA_RUNS)}")
    if args.init_from is not None and not args.init_from.is_file():
        parser.error(f"--init-from {args.init_from} is not a file; give a policy .safetensors file (e.g. "
                     "bench/improvement.py --keep DIR's DIR/bc/learner/checkpoints/policy-step-*.safetensors)")
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    start = time.time()
    preset = "smoke" if args.quick else "default"
    common = [*TASKS[args.task], f"run.duration_s={args.budget_s}", "run.max_learner_steps=1000000",
              f"evaluator.episodes={args.evaluator_episodes}", "weights.port=0", "metrics.learner_port=0",
              "metrics.replay_port=0", "metrics.evaluator_port=0", "metrics.actor_base_port=0"]
    if not args.quick:  # sync: rounds until the budget is spent, never stopped by run.rounds
        common.append("run.rounds=1000")
    if args.init_from:
        common.append(f"learner.init_from={args.init_from.resolve()}")
    base = ["run.mode=async", f"actors.num_actors={args.actors}"]
    runs = {"sync": ["run.mode=sync", f"actors.num_actors={args.actors}"], "async": base}
    runs |= {name: EXTRA_RUNS[name](base, args.actors) for name in args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        results = {name: figures(run_up(root, name, [*common, *settings], preset)) for name, settings in runs.items()}
        batch_size = yaml.safe_load((root / "async" / "config.yaml").read_text())["learner"]["batch_size"]
    sync, fleet = results["sync"], results["async"]
    ratios = {name: wall_to_reach(sync, run) for name, run in results.items() if name != "sync"}
    report = {
        "task": args.task, "budget_s": args.budget_s, "actors": args.actors, "quick": args.quick,
        "init_from": None if args.init_from is None else str(args.init_from),
        "learner_busy_fraction": {m: results[m]["learner_busy_fraction"] for m in ("sync", "async")},
        "actor_busy_fraction": {m: results[m]["actor_busy_fraction"] for m in ("sync", "async")},
        "episodes_per_minute": {m: results[m]["episodes_per_minute"] for m in results},
        "learner_steps_per_minute": {m: results[m]["learner_steps_per_minute"] for m in results},
        "policy_lag_p95_versions": fleet["policy_lag_p95_versions"],
        "success_by_minute": {m: results[m]["success_by_minute"] for m in ("sync", "async")},
        "start_success": {m: results[m]["start_success"] for m in ("sync", "async")},
        "sync_final_success": sync["final_success"],
        "wall_to_sync_final_success_ratio": ratios["async"],
        "wall_to_sync_final_success_ratio_by_run": ratios,
        "learner_ranks": {name: rank_figures(results[name], batch_size) for name in ("async", "async_two_ranks")
                          if name in results},
        "promotion": {key: {name: results[name][key] for name in ("async", "async_promoted") if name in results}
                      for key in ("fleet_intervention_rate", "fleet_success_by_minute", "final_success",
                                  "weight_versions_promoted")},
        "runs": results,
        "loaded": os.getloadavg()[0],
        "wall_seconds": round(time.time() - start, 1),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
