"""`fleetloop eval`: the evaluator's figures for a policy file or a run's checkpoints, standalone.

TARGET is a policy file (a learner checkpoint's ``policy-step-N.safetensors`` or a converted model)
or a run directory (its newest checkpoint; with ``every``, each one it keeps: a curve). Each
evaluation (actors/evaluator.py) is merged into ``evaluations.json`` of the output directory, where an
evaluation of the same file on the same seeds replaces the earlier one, and all of them are drawn
in ``plots/evaluations.png``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetloop.config import ConfigError

if TYPE_CHECKING:
    from fleetloop.config import FleetloopConfig

POLICY_GLOB = "policy-step-*.safetensors"
EVALUATIONS_FILE = "evaluations.json"
_STEP = re.compile(r"policy-step-(\d+)\.safetensors$")


def run_root_of(target: Path) -> Path | None:
    """The run directory ``target`` belongs to: itself when it holds ``checkpoints/``, or the run
    around a policy file in a ``checkpoints/`` folder; None for a file elsewhere."""
    if target.is_dir():
        return target if (target / "checkpoints").is_dir() else None
    return target.parent.parent if target.parent.name == "checkpoints" else None


def checkpoint_step(path: Path) -> int | None:
    """The learner step in a checkpoint's file name (``policy-step-0000400.safetensors``: 400)."""
    match = _STEP.search(path.name)
    return int(match.group(1)) if match else None


def policy_files(target: Path, every: bool = False) -> list[Path]:
    """The policy files ``target`` names, oldest first: the file itself, or a run directory's newest
    checkpoint (``every``: all it keeps).

    Raises:
        ConfigError: nothing to evaluate there; the message says what to give.
    """
    if not target.exists():
        raise ConfigError(f"TARGET: {target} does not exist; give a policy file (.safetensors) or a run directory")
    if target.is_file():
        if target.suffix != ".safetensors":
            raise ConfigError(f"TARGET: {target} is not a policy file (.safetensors) or a run directory")
        return [target]
    folder = target / "checkpoints" if (target / "checkpoints").is_dir() else target
    files = sorted(folder.glob(POLICY_GLOB), key=lambda p: checkpoint_step(p) or 0)
    if not files:
        raise ConfigError(f"TARGET: {folder} holds no {POLICY_GLOB}; train first (fleetloop up or learner) or give "
                          "a policy file")
    return files if every else files[-1:]


def merge_evaluations(path: Path, evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``evaluations`` to the JSON list at ``path`` (one of the same policy, env and seeds is
    replaced); returns the whole list, also written back. The loop's evaluations come first, in
    weight-version order (versions only move forward; a learner restarted from an older checkpoint
    trains some steps again), then standalone ones by checkpoint step."""
    def key(record: dict[str, Any]) -> tuple:
        return record["policy"], record["env"], record["seed_base"], record["episodes"]

    records = json.loads(path.read_text()) if path.is_file() else []
    new = {key(r) for r in evaluations}
    records = [r for r in records if key(r) not in new] + evaluations
    records.sort(key=lambda r: (r.get("version") is None, r.get("version") or 0, r["step"] is None, r["step"] or 0,
                                r["policy"]))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(path)
    return records


def run_eval(cfg: "FleetloopConfig", files: list[Path], out_dir: Path, episodes: int | None = None,
             on_episode: Callable[[str, bool], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate each policy file on ``cfg.evaluator``'s seeds (``episodes`` of them when given);
    merge the results into ``out_dir/evaluations.json`` and plot them. Returns this call's results.

    Raises:
        EvaluationError: a file holds a model of another architecture than ``model.preset``.
    """
    from fleetloop.actors.evaluator import Evaluator
    from fleetloop.actors.settings import EvaluatorSettings
    from fleetloop.plots import plot_evaluations

    evaluator = Evaluator(EvaluatorSettings.of(cfg))
    results = []
    try:
        for path in files:
            evaluator.load_file(path)
            progress = (lambda success, name=path.name: on_episode(name, success)) if on_episode else None
            evaluation = evaluator.evaluate(str(path.resolve()), step=checkpoint_step(path), episodes=episodes,
                                            on_episode=progress)
            results.append(evaluation.to_dict())
    finally:
        evaluator.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    records = merge_evaluations(out_dir / EVALUATIONS_FILE, results)
    plot_evaluations(records, out_dir / "plots" / "evaluations.png")
    return results
