"""DAgger improvement: do corrections beat demonstrations at equal compute and equal expert effort?

The loop's own parts: per arm an embedded Valkey replay, the DeepSpeed ``Learner`` (its weights
reach the actor over the gRPC WeightService) and an ``EnvActorRole`` rolling out GR-1 pick-and-place
in MuJoCo, with the scripted expert as the operator. Protocol (docs/improvement.md):

1. **Shared behaviour cloning.** N expert demonstrations; the learner fits the normalisation and
   trains B steps, evaluated every B/4 steps on the curve seeds (the plateau curve); the policy
   file it saves is the start of every arm.
2. **Arms**, each its own process and replay, each a fresh learner from that file
   (``learner.init_from``) with the same schedule, seed and batch, k rounds of T steps:
   - D: the DAgger mode (``--mode``) on fresh scenes every round (M episodes), its corrections
     mixed in at ``--correction-share``;
   - C1 (equal steps): the N demonstrations alone;
   - C2 (equal expert effort): after each of D's rounds, demonstrations on D's scenes (then the
     scenes after them) until their expert-driven steps reach D's expert-labelled steps so far.
3. Every arm's final policy, and D's after every round, is evaluated on the same E seeds with
   the same denoising noise (paired). Success rates carry Wilson 95 % intervals; D against C1 and
   C2 an exact McNemar test. D's round-0 evaluation (the shared checkpoint) is watched by the gate
   with recovery probes: ``gate_recall`` is the share of failures it flagged while the expert
   could still finish; ``gate_flags_final`` the same for D's final policy (watching changes no
   outcome: nobody takes over). The intervention rate of each of D's policies is measured on a fixed probe
   set of gated episodes that are not written.

Logs go to stderr; the last stdout line is one JSON object.

    python bench/improvement.py [--quick] [--mode hg-dagger|dagger] [--images-only]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering (before mujoco loads)
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from fleetloop.stats import mcnemar_exact, wilson  # noqa: E402

logger = logging.getLogger("bench.improvement")

DEMO_SEED_BASE = 700_000
"""Demonstration i (shared by every arm) resets its env from DEMO_SEED_BASE + i."""
DAGGER_SEED_BASE = 800_000
"""DAgger episode i of round r resets from DAGGER_SEED_BASE + r M + i (fresh scenes each round); C2 records
its demonstrations on the same sequence of scenes."""
PROBE_SEED_BASE = 850_000
"""Probe episode i (gated, not written) of every round resets from PROBE_SEED_BASE + i."""
EVAL_SEED_BASE = 900_000
"""Evaluation episode i of every arm and round resets (and seeds the policy's noise) from EVAL_SEED_BASE + i."""
CURVE_SEED_BASE = 950_000
"""Behaviour-cloning curve episode i resets from CURVE_SEED_BASE + i."""

FULL = dict(demos=8, bc_steps=2000, rounds=3, round_steps=400, dagger_episodes=30, eval_episodes=100,
            probe_episodes=50, curve_episodes=30)
QUICK = dict(demos=2, bc_steps=8, rounds=2, round_steps=4, dagger_episodes=1, eval_episodes=3, probe_episodes=1,
             curve_episodes=2)
ARMS = ("dagger", "equal_steps", "equal_expert")
DEFAULT_SHARES = [0.5, 0.75]
"""D's correction share by round, the last repeated: 0.75 throughout dipped below the checkpoint in
the first round (docs/improvement.md)."""


# ---- statistics ----------------------------------------------------------------------------------

def gate_recall(records: list[dict]) -> dict[str, Any]:
    """Among failed watched episodes, the share the gate flagged while the expert could still finish
    from the state it first fired at; and how many successes it flagged (false alarms)."""
    failures = [r for r in records if not r["success"]]
    flagged = sum(bool(r["recoverable_at_first_fire"]) for r in failures)
    successes = [r for r in records if r["success"]]
    return {"failures": len(failures), "flagged_in_time": flagged,
            "recall": round(flagged / len(failures), 4) if failures else None,
            "flagged_successes": sum(bool(r["fired"]) for r in successes), "successes": len(successes)}


# ---- one learner and its actor --------------------------------------------------------------------

def make_config(args: argparse.Namespace, *, mixture: dict[str, float], total_steps: int,
                init_from: str | None = None, extra: tuple[str, ...] | list[str] = ()):
    """The run config of one arm (or of behaviour cloning): one actor on gr1_pick_place, one schedule
    over ``total_steps`` (restarted every round with --lr-restart); ``extra`` overrides last."""
    from fleetloop.config import load_config

    restart = args.round_steps if (args.lr_restart and init_from) else 0
    overrides = [
        "model.preset=tiny", "actors.env=gr1_pick_place", "actors.num_actors=1", f"actors.max_steps={args.max_steps}",
        f"actors.execute_steps={args.execute_steps}", f"actors.dagger.mode={args.mode}",
        f"actors.state_includes_object_pose={not args.images_only}", "actors.torch_threads=1",
        f"actors.dagger.gate={json.dumps(gate_options(args))}",
        f"actors.dagger.takeover.max_steps={args.takeover_cap}", f"actors.dagger.takeover.labels={args.takeover_labels}",
        f"actors.dagger.takeover.hand_back={json.dumps(args.hand_back)}",
        f"actors.dagger.pre_intervention_chunks={args.pre_intervention_chunks}",
        f"actors.dagger.beta_start={args.beta_start}", f"actors.dagger.beta_decay={args.beta_decay}",
        f"actors.dagger.relabel={args.relabel}",
        f"learner.batch_size={args.batch_size}", f"learner.lr={args.lr}", f"run.seed={args.seed}",
        "run.rounds=1", f"learner.steps_per_round={total_steps}", f"learner.publish_every={total_steps}",
        f"learner.warmup_steps={min(50, max(1, total_steps // 10))}", "learner.checkpoint_every=0",
        "learner.torch_threads=1", f"learner.lr_restart_every={restart}",
        f"learner.tune_llm={args.images_only}", f"learner.tune_visual={args.images_only}",
        f"replay.mixture={json.dumps(mixture)}", "weights.port=0", "metrics.learner_port=0",
        "metrics.actor_base_port=0",
        f"learner.distance_weights={json.dumps(distance_weights(args))}",
    ]
    if init_from:
        overrides.append(f"learner.init_from={init_from}")
    return load_config("default", [*overrides, *extra])


def distance_weights(args: argparse.Namespace) -> dict[str, Any]:
    """learner.distance_weights of every arm: ``--distance-weights`` on the correction classes that label
    takeovers and the planning states before them (only D has them); off at 0."""
    classes = ["intervention", "pre_intervention_relabel"] if args.distance_weights else []
    return {"classes": classes, "strength": args.distance_weights}


def gate_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.gate == "joint":
        return {"kind": "joint", "default_threshold": args.joint_threshold, "patience": args.patience}
    options = {"kind": "task_space", "effector_m": args.effector_m, "patience": args.patience}
    extra = {"judge_done": args.judge_done, "at_once": args.at_once, "settle_steps": args.settle_steps}
    return {**options, **{key: value for key, value in extra.items() if value}}  # off: as in reports before 2026-12-07


class Arm:
    """One replay server, learner and actor following its weights (everything under ``root``)."""

    def __init__(self, cfg, root: Path):
        from fleetloop.actors.env_actor import EnvActorRole
        from fleetloop.actors.settings import ActorSettings
        from fleetloop.learner.learner import Learner
        from fleetloop.learner.settings import LearnerSettings
        from fleetloop.replay import EmbeddedValkey, ReplayClient

        self.cfg = cfg
        self.server = EmbeddedValkey(root / "replay")
        self.server.start()
        self.learner = Learner(LearnerSettings.of(cfg), str(root / "learner"),
                               ReplayClient(self.server.url, **cfg.replay.client_options()))
        self.actor = EnvActorRole(0, ActorSettings.of(cfg), self.server.url, self.learner.endpoints()["weights"],
                                  str(root / "audit"))
        self.embodiment = self.actor.embodiment

    def train(self, steps: int, refit: bool = False) -> dict[str, Any]:
        """(Refit the normalisation,) train ``steps`` steps, publish, and wait until the actor runs it."""
        start = time.time()
        if refit:
            self.learner.fit_mixture_normalization()
        loss = self.learner.train(steps)["loss"]
        version = self.learner.publish()
        if not self.actor.wait_for_version(version, 300):
            raise TimeoutError(f"the actor did not apply weights version {version}")
        return {"steps": steps, "loss": round(loss, 4), "train_seconds": round(time.time() - start, 1)}

    def publish(self) -> None:
        version = self.learner.publish()
        if not self.actor.wait_for_version(version, 300):
            raise TimeoutError(f"the actor did not apply weights version {version}")

    def evaluate(self, episodes: int, **watch: bool) -> dict[str, Any]:
        start = time.time()
        result = self.actor.evaluate([EVAL_SEED_BASE + i for i in range(episodes)], **watch)
        successes = result["successes"]
        return {"successes": sum(successes), "success_rate": round(sum(successes) / episodes, 4),
                "ci95": wilson(sum(successes), episodes), "outcomes": successes, "gate": result["gate"],
                "eval_seconds": round(time.time() - start, 1)}

    def probe(self, round_index: int, episodes: int) -> float:
        """Intervention rate of the current policy on the fixed probe scenes (nothing written); in
        ``dagger`` mode the share of chunks the expert drove at round ``round_index``'s beta."""
        if not episodes:
            return 0.0
        return round(self.actor.dagger_episodes(round_index, [PROBE_SEED_BASE + i for i in range(episodes)],
                                                write=False)["intervention_rate"], 4)

    def keep_policy(self, args: argparse.Namespace) -> dict[str, str]:
        """With ``--keep``: the arm's final policy file (``{"policy": path}``, for bench/gate_watch.py)."""
        return {"policy": self.learner.save_checkpoint()} if args.keep else {}

    def episodes(self) -> dict[str, int]:
        """Episodes per table of the arm's replay (what it could train on, and its evaluations)."""
        return {table: row["episodes"] for table, row in self.learner.replay.table_stats().items() if row["episodes"]}

    def close(self) -> None:
        self.actor.close()
        self.learner.close()
        self.server.stop()


# ---- phases ---------------------------------------------------------------------------------------

def behaviour_cloning(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Demonstrations, normalisation, B steps with the curve; the saved policy file."""
    arm = Arm(make_config(args, mixture={"pretrain": 1.0}, total_steps=args.bc_steps), root)
    try:
        start = time.time()
        demo_successes = arm.actor.collect_demos(args.demos, [DEMO_SEED_BASE + i for i in range(args.demos)])
        arm.learner.fit_mixture_normalization()
        curve, chunk = [], max(1, args.bc_steps // 4)
        seeds = [CURVE_SEED_BASE + i for i in range(args.curve_episodes)]
        while arm.learner.step < args.bc_steps:
            trained = arm.train(min(chunk, args.bc_steps - arm.learner.step))
            outcome = arm.actor.evaluate(seeds)["successes"]
            curve.append({"step": arm.learner.step, "loss": trained["loss"], "successes": sum(outcome),
                          "episodes": len(seeds)})
            logger.info("behaviour cloning: step %d, loss %.4f, %d/%d on the curve seeds", arm.learner.step,
                        trained["loss"], sum(outcome), len(seeds))
        policy = arm.learner.save_checkpoint()
        return {"policy": policy, "curve": curve, "demo_successes": demo_successes,
                "demo_steps": args.demos * args.max_steps, "seconds": round(time.time() - start, 1)}
    finally:
        arm.close()


def run_dagger(args: argparse.Namespace, root: Path, policy: str, to_c2) -> dict[str, Any]:
    """Arm D: round 0 is the shared checkpoint; every round evaluates, probes, collects M DAgger
    episodes on fresh scenes (their expert-labelled steps sent to C2) and trains T steps."""
    arm = Arm(make_config(args, mixture=dagger_mixture(args, 0), total_steps=args.rounds * args.round_steps,
                          init_from=policy), root)
    try:
        arm.actor.collect_demos(args.demos, [DEMO_SEED_BASE + i for i in range(args.demos)])
        arm.publish()
        rounds, label_rows = [], 0
        for r in range(args.rounds + 1):
            record: dict[str, Any] = {"round": r}
            watch = {"watch": True, "probe_recovery": True} if r in (0, args.rounds) else {}
            record.update(arm.evaluate(args.eval_episodes, **watch))
            record["intervention_rate"] = arm.probe(r, args.probe_episodes)
            if r < args.rounds:
                start = time.time()
                seeds = [DAGGER_SEED_BASE + r * args.dagger_episodes + i for i in range(args.dagger_episodes)]
                collected = arm.actor.dagger_episodes(r, seeds)
                label_rows += collected["expert_label_rows"]
                to_c2.put({"round": r, "expert_label_rows": label_rows})
                record.update({key: collected[key] for key in ("expert_label_rows", "takeovers", "takeover_endings",
                                                               "takeover_subgoals", "skipped", "written",
                                                               "unflagged_failures", "failures_after_takeover")})
                record["dagger_successes"] = collected["successes"]
                record["dagger_intervention_rate"] = round(collected["intervention_rate"], 4)
                lengths = collected["takeover_steps"]
                record["takeover_mean_steps"] = round(sum(lengths) / len(lengths), 1) if lengths else 0.0
                record["rollout_seconds"] = round(time.time() - start, 1)
                record["mixture"] = dagger_mixture(args, r)
                arm.learner.set_mixture(record["mixture"])
                record.update(arm.train(args.round_steps, refit=args.refit_normalization))
            logger.info("D round %d: %d/%d, probe intervention rate %.3f", r, record["successes"],
                        args.eval_episodes, record["intervention_rate"])
            rounds.append(record)
        return {"rounds": rounds, "expert_label_rows": label_rows, "episodes": arm.episodes(), **arm.keep_policy(args)}
    finally:
        arm.close()


def dagger_mixture(args: argparse.Namespace, round_index: int) -> dict[str, float]:
    """D's table weights in round ``round_index`` (``--correction-share`` may give one share per round,
    the last repeated)."""
    shares = args.correction_share
    share = shares[min(round_index, len(shares) - 1)]
    return {"pretrain": round(1.0 - share - args.robot_share, 6), "corrections": share, "rollouts": args.robot_share}


def share_list(text: str) -> list[float]:
    """``--correction-share``: one share, or one per round separated by commas."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share or a comma-separated list of shares "
                                         "(e.g. 0.75, or 0.5,0.75,0.75 for one per round)") from None


def run_equal_steps(args: argparse.Namespace, root: Path, policy: str) -> dict[str, Any]:
    """Arm C1: the shared demonstrations alone, k T steps."""
    arm = Arm(make_config(args, mixture={"pretrain": 1.0}, total_steps=args.rounds * args.round_steps,
                          init_from=policy), root)
    try:
        arm.actor.collect_demos(args.demos, [DEMO_SEED_BASE + i for i in range(args.demos)])
        for _ in range(args.rounds):
            trained = arm.train(args.round_steps, refit=args.refit_normalization)
        return {**trained, **arm.evaluate(args.eval_episodes), "expert_steps": 0, "episodes": arm.episodes(),
                **arm.keep_policy(args)}
    finally:
        arm.close()


def run_equal_expert(args: argparse.Namespace, root: Path, policy: str, from_d) -> dict[str, Any]:
    """Arm C2: after each of D's rounds, demonstrations on D's scenes until their expert-driven steps
    equal D's expert-labelled steps so far (times ``--expert-ratio``; the last demonstration cut to
    the steps left); then T steps on every demonstration."""
    arm = Arm(make_config(args, mixture={"pretrain": 1.0}, total_steps=args.rounds * args.round_steps,
                          init_from=policy), root)
    try:
        arm.actor.collect_demos(args.demos, [DEMO_SEED_BASE + i for i in range(args.demos)])
        demo_steps, next_scene, per_round = 0, 0, []
        for _ in range(args.rounds):
            budget = from_d.get(timeout=7200)
            owed = max(0, round(args.expert_ratio * budget["expert_label_rows"]) - demo_steps)
            whole, last = divmod(owed, args.max_steps)
            arm.actor.collect_demos(whole, [DAGGER_SEED_BASE + next_scene + i for i in range(whole)])
            if last:  # the rest of the budget: the first steps of one more demonstration
                arm.actor.collect_demos(1, [DAGGER_SEED_BASE + next_scene + whole], max_steps=last)
            next_scene += whole + bool(last)
            demo_steps += owed
            per_round.append({"round": budget["round"], "demos": whole + bool(last), "expert_steps": demo_steps,
                              "dagger_expert_steps": budget["expert_label_rows"]})
            trained = arm.train(args.round_steps, refit=args.refit_normalization)
        return {**trained, **arm.evaluate(args.eval_episodes), "expert_steps": demo_steps, "per_round": per_round,
                "episodes": arm.episodes(), **arm.keep_policy(args)}
    finally:
        arm.close()


def _arm_main(name: str, args: argparse.Namespace, root: str, policy: str, queue, results) -> None:
    """Entry of an arm's process: run it, put (name, result or error) on ``results``."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s [{name}] %(name)s: %(message)s")
    import torch

    torch.manual_seed(args.seed)
    try:
        if name == "dagger":
            result = run_dagger(args, Path(root), policy, queue)
        elif name == "equal_steps":
            result = run_equal_steps(args, Path(root), policy)
        else:
            result = run_equal_expert(args, Path(root), policy, queue)
        results.put((name, result))
    except BaseException:
        results.put((name, {"error": traceback.format_exc()}))


def run_arms(args: argparse.Namespace, root: Path, policy: str) -> dict[str, dict[str, Any]]:
    """The three arms as processes (D feeds C2 its expert steps round by round)."""
    context = multiprocessing.get_context("spawn")
    to_c2, results = context.Queue(), context.Queue()
    processes = [context.Process(target=_arm_main, args=(name, args, str(root / name), policy, to_c2, results),
                                 name=name) for name in ARMS]
    for process in processes:
        process.start()
    outcome: dict[str, dict[str, Any]] = {}
    try:
        while len(outcome) < len(ARMS):
            name, result = results.get(timeout=7200)
            if "error" in result:
                raise RuntimeError(f"arm {name} failed:\n{result['error']}")
            outcome[name] = result
            logger.info("arm %s finished", name)
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    return outcome


# ---- report ---------------------------------------------------------------------------------------

def outcome_string(outcomes: list[bool]) -> str:
    """Paired outcomes by evaluation seed as "0"/"1" characters, so runs can be pooled for a paired test."""
    return "".join("1" if success else "0" for success in outcomes)


def report(args: argparse.Namespace, bc: dict[str, Any], arms: dict[str, dict[str, Any]], wall: float) -> dict:
    d = arms["dagger"]
    rounds = d["rounds"]
    final = rounds[-1]
    c1, c2 = arms["equal_steps"], arms["equal_expert"]
    base = rounds[0]

    def control(arm: dict[str, Any]) -> dict[str, Any]:
        return {key: arm[key] for key in ("successes", "success_rate", "ci95", "expert_steps", "loss", "episodes")}

    def effort_return(arm_final: float, expert_steps: int) -> float | None:
        gained = 100 * (arm_final - base["success_rate"])
        return round(1000 * gained / expert_steps, 2) if expert_steps else None

    success = [r["success_rate"] for r in rounds]
    ci = [r["ci95"] for r in rounds]
    per_round = [{k: v for k, v in r.items() if k not in ("outcomes", "gate")} for r in rounds]
    return {
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
        "control_same_total_steps": control(c1),
        "control_equal_steps": control(c1),
        "control_equal_expert": {**control(c2), "per_round": c2["per_round"]},
        "mcnemar_p": {"vs_equal_steps": mcnemar_exact(final["outcomes"], c1["outcomes"]),
                      "vs_equal_expert": mcnemar_exact(final["outcomes"], c2["outcomes"])},
        "gain_vs_equal_steps_points": round(100 * (final["success_rate"] - c1["success_rate"]), 1),
        "gain_vs_equal_expert_points": round(100 * (final["success_rate"] - c2["success_rate"]), 1),
        "expert_steps_by_arm": {"dagger": d["expert_label_rows"], "equal_steps": 0, "equal_expert": c2["expert_steps"]},
        "episodes_by_arm": {name: arm["episodes"] for name, arm in arms.items()},
        "outcomes_by_arm": {name: outcome_string(arm["outcomes"])
                            for name, arm in (("dagger", final), ("equal_steps", c1), ("equal_expert", c2))},
        "shared_demo_steps": bc["demo_steps"],
        "return_on_human_effort": {"dagger": effort_return(final["success_rate"], d["expert_label_rows"]),
                                   "equal_expert": effort_return(c2["success_rate"], c2["expert_steps"])},
        "gate_recall": gate_recall(base["gate"])["recall"],
        "gate_flags": gate_recall(base["gate"]),
        "gate_flags_final": gate_recall(final["gate"]),
        **({"final_policies": {name: arm["policy"] for name, arm in arms.items()}} if args.keep else {}),
        "bc_curve": bc["curve"],
        "bc_seconds": bc["seconds"],
        "state_includes_object_pose": not args.images_only,
        "n_demos": args.demos,
        "demo_successes": bc["demo_successes"],
        "bc_steps": args.bc_steps,
        "steps_per_round": args.round_steps,
        "rounds": args.rounds,
        "dagger_episodes_per_round": args.dagger_episodes,
        "probe_episodes": args.probe_episodes,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_restart": args.lr_restart,
        "refit_normalization": args.refit_normalization,
        "gate": gate_options(args),
        "takeover_cap": args.takeover_cap,
        "hand_back": args.hand_back,
        "takeover_labels": args.takeover_labels,
        "pre_intervention_chunks": args.pre_intervention_chunks,
        "beta_start": args.beta_start,
        "beta_decay": args.beta_decay,
        "relabel": args.relabel,
        "correction_share": args.correction_share[0] if len(args.correction_share) == 1 else args.correction_share,
        "robot_share": args.robot_share,
        "distance_weights": args.distance_weights,
        "expert_ratio": args.expert_ratio,
        "c2_last_demo_cut": True,  # C2's effort exact since 2026-12-07's seventh session (before: whole demonstrations)
        "max_steps": args.max_steps,
        "execute_steps": args.execute_steps,
        "eval_seeds": eval_seed_range(args),
        "per_round": per_round,
        "wall_seconds": round(wall, 1),
    }


def eval_seed_range(args: argparse.Namespace) -> list[int]:
    """The first and last evaluation seed (every arm, round and re-watched policy runs these)."""
    return [EVAL_SEED_BASE, EVAL_SEED_BASE + args.eval_episodes - 1]


def run_in_scratch(run: Callable[[argparse.Namespace, Path], dict], args: argparse.Namespace) -> tuple[dict, float]:
    """For the scripts that reuse this bench's parts: logs to stderr, ``run(args, folder)`` in a
    temporary folder; (its result, wall seconds)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    return result, round(time.time() - start, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from typing import get_args

    from fleetloop.actors.dagger import MODES
    from fleetloop.actors.operator import HAND_BACK_REASONS
    from fleetloop.config import TakeoverSection

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI: check the mechanics in a few minutes")
    parser.add_argument("--mode", choices=sorted(MODES), default="hg-dagger")
    parser.add_argument("--images-only", action="store_true",
                        help="no object pose in the state (System 2 then trains too)")
    parser.add_argument("--seed", type=int, default=0)
    for name, default in FULL.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"default {default} ({QUICK[name]} with --quick)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-restart", action=argparse.BooleanOptionalAction, default=True,
                        help="every arm restarts its warm-up + cosine schedule each round")
    parser.add_argument("--refit-normalization", action=argparse.BooleanOptionalAction, default=False,
                        help="every arm refits the normalisation on its mixture's tables before each round")
    parser.add_argument("--gate", choices=("task_space", "joint"), default="task_space")
    parser.add_argument("--effector-m", type=float, default=0.07, help="task_space gate: effector path gap (m)")
    parser.add_argument("--judge-done", action=argparse.BooleanOptionalAction, default=True,
                        help="task_space gate: judge a robot whose part is done by where its plan leaves the object")
    parser.add_argument("--at-once", type=lambda text: text.split(",") if text else [], default=["slip"],
                        help="task_space gate: comma-separated gaps (effector, grasp, object, slip) that fire on the "
                             "first divergent plan (default slip; '' for none)")
    parser.add_argument("--settle-steps", type=int, default=0,
                        help="task_space gate: steps simulated after each chunk, the robot holding still, before "
                             "the object and slip gaps are judged (0: as the chunk ends)")
    parser.add_argument("--joint-threshold", type=float, default=0.3, help="joint gate: threshold (rad)")
    parser.add_argument("--patience", type=int, default=2, help="divergent plans (chunks) before a takeover")
    parser.add_argument("--takeover-cap", type=int, default=64, help="longest takeover (steps)")
    parser.add_argument("--hand-back", type=lambda text: text.split(",") if text else [],
                        default=list(HAND_BACK_REASONS),
                        help="when the operator hands back before the cap, comma-separated of "
                             f"{', '.join(HAND_BACK_REASONS)} "
                             "(subgoal alone: takeovers run until the subgoal is done)")
    parser.add_argument("--takeover-labels", choices=get_args(TakeoverSection.model_fields["labels"].annotation),
                        default="chunk",
                        help="what a takeover's steps are labelled with (and charged): the expert's whole chunk from "
                             "each, or the actions the operator drove (as a human operator)")
    parser.add_argument("--pre-intervention-chunks", type=int, default=0,
                        help="planning states before each takeover relabelled with the expert's chunk (each charged "
                             "a whole chunk); 0, the default, after the pooled runs of docs/improvement.md")
    parser.add_argument("--beta-start", type=float, default=0.5, help="--mode dagger: beta of round 0")
    parser.add_argument("--beta-decay", type=float, default=0.5, help="--mode dagger: beta's decay per round")
    parser.add_argument("--relabel", choices=("every", "divergent"), default="every",
                        help="--mode dagger: the planning states the expert labels: every one, or those it drove "
                             "and those whose policy plan the gate judges divergent")
    parser.add_argument("--correction-share", type=share_list, default=None,
                        help="share of D's batches drawn from corrections: one value, or one per round, the last "
                             f"repeated in later rounds (default {','.join(map(str, DEFAULT_SHARES))}: the first "
                             "round's few corrections get half of every batch)")
    parser.add_argument("--robot-share", type=float, default=0.0,
                        help="share of D's batches drawn from its own rollouts (robot steps of successful episodes "
                             "weigh 1, the rest 0: learner.class_weights); the rest: the demonstrations")
    parser.add_argument("--distance-weights", type=float, default=0.0,
                        help="strength of learner.distance_weights on D's takeover labels: windows whose state is "
                             "nearer the demonstrations' weigh more, within the class's share (0: off)")
    parser.add_argument("--expert-ratio", type=float, default=1.0,
                        help="C2's expert steps as a multiple of D's (2: does D match C2 with half the effort?)")
    parser.add_argument("--max-steps", type=int, default=96, help="control steps per episode")
    parser.add_argument("--execute-steps", type=int, default=8, help="steps of a chunk executed before re-planning")
    parser.add_argument("--bc-policy", type=Path, help="start the arms from this behaviour-cloning policy file of a "
                                                       "--keep run (same demonstrations) instead of training one")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (its bc/ holds the policy file)")
    args = parser.parse_args(argv)
    for name, default in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.correction_share = args.correction_share or DEFAULT_SHARES[:max(1, args.rounds)]
    shares = ",".join(f"{share:g}" for share in args.correction_share)
    if min(*args.correction_share, args.robot_share) < 0 or max(args.correction_share) + args.robot_share > 1:
        parser.error(f"--correction-share {shares} and --robot-share {args.robot_share} must be "
                     "at least 0 and sum to at most 1 (the demonstrations get the rest of every batch)")
    unknown = sorted(set(args.hand_back) - set(HAND_BACK_REASONS))
    if unknown:
        parser.error(f"--hand-back names {', '.join(unknown)}; choose from {', '.join(HAND_BACK_REASONS)} "
                     "(comma-separated)")
    if not 0 <= args.settle_steps <= 64:
        parser.error(f"--settle-steps {args.settle_steps} must be within 0..64 (0: judge as the chunk ends)")
    if not 0 <= args.distance_weights <= 20:
        parser.error(f"--distance-weights {args.distance_weights} must be within 0..20 (0: off)")
    if args.expert_ratio <= 0:
        parser.error(f"--expert-ratio {args.expert_ratio} must be > 0 (1: C2 gets exactly D's expert steps)")
    if len(args.correction_share) > args.rounds:
        parser.error(f"--correction-share {shares} gives {len(args.correction_share)} shares for {args.rounds} "
                     "rounds: give one share, or at most one per round")
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.manual_seed(args.seed)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        if args.bc_policy:
            bc = {**json.loads(args.bc_policy.with_name("bc.json").read_text()), "policy": str(args.bc_policy)}
        else:
            bc = behaviour_cloning(args, root / "bc")
            Path(bc["policy"]).with_name("bc.json").write_text(json.dumps(bc))
        arms = run_arms(args, root, bc["policy"])
    print(json.dumps(report(args, bc, arms, time.time() - start)))


if __name__ == "__main__":
    main()
