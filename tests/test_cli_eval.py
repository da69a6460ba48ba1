"""`fleetloop eval` as an operator runs it: a run directory's checkpoints, a policy file, bad input."""

import json
import os
import subprocess

import yaml
from PIL import Image

from fleetloop.config import load_config
from fleetloop.system import model_preset
from fleetloop.system.checkpoint import save_tensors
from tests.actors.conftest import policy_weights
from tests.test_cli import FLEETLOOP, run_cli

RUN_CONFIG = ["actors.max_steps=16", "evaluator.episodes=2", "evaluator.seed_base=500000"]


def make_run(root, steps=(10, 20)):
    """A run directory as `fleetloop up` leaves it: config.yaml and policy checkpoints."""
    (root / "checkpoints").mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(load_config("smoke", RUN_CONFIG).to_dict(), sort_keys=False))
    for step in steps:
        save_tensors(policy_weights(step), model_preset("tiny"), root / "checkpoints" / f"policy-step-{step:07d}.safetensors")
    return root


def test_eval_of_a_run_scores_its_checkpoints_and_keeps_one_record_per_policy(tmp_path):
    run = make_run(tmp_path / "run")
    every = run_cli("eval", str(run), "--all", "--json", timeout=300)
    assert every.returncode == 0, every.stderr
    printed = json.loads(every.stdout)
    assert [r["step"] for r in printed] == [10, 20]
    for record in printed:  # the run's config: its evaluator section, its env
        assert record["env"] == "reach" and record["seed_base"] == 500000 and record["episodes"] == 2
        assert record["successes"] == record["outcomes"].count("1")
        assert record["ci95"][0] <= record["success_rate"] <= record["ci95"][1]
    assert "policy-step-0000020.safetensors (step 20):" in every.stderr

    newest = run_cli("eval", str(run), "--episodes", "3", timeout=300)
    assert newest.returncode == 0, newest.stderr
    again = run_cli("eval", str(run), "--episodes", "3", timeout=300)
    assert again.returncode == 0, again.stderr
    records = json.loads((run / "evaluations.json").read_text())
    assert [(r["step"], r["episodes"]) for r in records] == [(10, 2), (20, 2), (20, 3)], \
        "the newest only; evaluating it again on the same seeds replaces its record"
    with Image.open(run / "plots" / "evaluations.png") as image:
        assert image.format == "PNG"


def test_eval_of_a_policy_file_outside_a_run(tmp_path):
    path = tmp_path / "model.safetensors"
    save_tensors(policy_weights(1), model_preset("tiny"), path)
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}  # as in an operator's fresh shell
    result = subprocess.run([FLEETLOOP, "eval", str(path), "--config", "smoke", "--set", "actors.max_steps=16",
                             "--episodes", "1", "--run-dir", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    [record] = json.loads((tmp_path / "out" / "evaluations.json").read_text())
    assert record["step"] is None and record["policy"] == str(path.resolve()) and record["episodes"] == 1
    assert (tmp_path / "out" / "plots" / "evaluations.png").is_file()


def test_eval_refuses_bad_input_and_writes_nothing(tmp_path):
    run = make_run(tmp_path / "run")
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    for args, message in [
        ([str(tmp_path / "missing")], "TARGET: " + str(tmp_path / "missing") + " does not exist"),
        ([str(empty)], "holds no policy-step-*.safetensors"),
        ([str(run / "config.yaml")], "is not a policy file"),
        ([str(run), "--episodes", "0"], "--episodes: expected at least 1, got 0"),
        ([str(run), "--set", "evaluator.seed_base=0"], "evaluator.seed_base"),
    ]:
        result = run_cli("eval", *args, timeout=120)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
    assert not (run / "evaluations.json").exists() and not (empty / "evaluations.json").exists()


def test_evaluations_keep_version_order_when_a_restarted_learner_trains_steps_again(tmp_path):
    """A learner restarted from an older checkpoint publishes a newer version at a smaller step: the
    file follows versions (which only move forward), standalone checkpoint evaluations after them."""
    from fleetloop.evaluate import merge_evaluations

    def record(policy, step, version=None):
        return {"policy": policy, "env": "e", "seed_base": 0, "episodes": 4, "step": step, "success_rate": 0.5,
                **({} if version is None else {"version": version})}

    path = tmp_path / "evaluations.json"
    merge_evaluations(path, [record("version 5", 20, 5)])
    merge_evaluations(path, [record("/run/checkpoints/policy-step-0000010.safetensors", 10)])
    merge_evaluations(path, [record("version 6", 15, 6), record("version 1", 0, 1)])
    written = json.loads(path.read_text())
    assert [r["policy"] for r in written] == ["version 1", "version 5", "version 6",
                                              "/run/checkpoints/policy-step-0000010.safetensors"]
