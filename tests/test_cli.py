"""The fleetloop CLI, run as a subprocess as an operator would."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fleetloop.ports import free_port

FLEETLOOP = str(Path(sys.executable).parent / "fleetloop")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([FLEETLOOP, *args], capture_output=True, text=True, timeout=timeout)


STATEFUL_COMMANDS = (["up"], ["learner"], ["eval"], ["config", "show"], ["replay", "stats"], ["ingest"], ["export"])


@pytest.mark.parametrize("command", [[], ["config"], ["replay"], ["model"], ["model", "convert-gr00t"],
                                     *STATEFUL_COMMANDS])
def test_every_command_explains_itself(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: fleetloop" in result.stdout
    if command in STATEFUL_COMMANDS:
        for option in ("--config", "--set", "--run-dir", "--redis-url"):
            assert option in result.stdout


def test_config_show_prints_validated_yaml_with_overrides():
    result = run_cli("config", "show", "--set", "learner.lr=0.01")
    assert result.returncode == 0, result.stderr
    assert "lr: 0.01" in result.stdout


def test_config_describe_lists_every_field():
    result = run_cli("config", "show", "--describe")
    assert result.returncode == 0
    assert "learner.steps_per_round" in result.stdout and "Optimizer steps in each round." in result.stdout
    assert "actors.dagger.beta_start" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--set", "learner.nope=1"], "learner.nope: unknown field", id="unknown-field"),
        pytest.param(["--set", "learner.batch_size=many"], "learner.batch_size: Input should be a valid integer", id="wrong-type"),
        pytest.param(["--config", "/nonexistent/x.yaml"], "does not exist", id="missing-file"),
    ],
)
def test_bad_config_is_one_clear_message(args, message, tmp_path):
    result = run_cli("up", "--run-dir", str(tmp_path / "run"), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_the_learner_role_refuses_a_promotion_it_cannot_make(tmp_path):
    result = run_cli("learner", "--run-dir", str(tmp_path / "run"), "--set", "weights.promotion=evaluated")
    assert result.returncode == 2
    assert "weights.promotion=evaluated: `fleetloop learner` runs no evaluator" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_unanswering_redis_url_fails_fast_with_advice(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = run_cli("up", "--config", "smoke", "--run-dir", str(tmp_path), "--redis-url", url, timeout=60)
    assert result.returncode == 1
    assert url.split("/0")[0].removeprefix("redis://") in result.stderr
    assert "Traceback" not in result.stderr
    stats = run_cli("replay", "stats", "--redis-url", url, timeout=60)
    assert stats.returncode == 1 and "Traceback" not in stats.stderr


def test_port_in_use_names_the_setting(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("up", "--config", "smoke", "--run-dir", str(tmp_path / "run"), "--set",
                         f"metrics.learner_port={port}")
    assert result.returncode == 1
    assert f"127.0.0.1:{port} (metrics.learner_port) is already in use" in result.stderr
    assert "--set metrics.learner_port=0" in result.stderr
    assert not (tmp_path / "run").exists(), "refused before the run directory was made"


def test_replay_stats_of_a_run_directory(tmp_path):
    (tmp_path / "replay").mkdir()
    result = run_cli("replay", "stats", "--run-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert {"pretrain", "rollouts", "corrections"} <= set(stats)
    assert all(row["episodes"] == 0 for row in stats.values())
    assert not (tmp_path / "replay" / "server.json").exists(), "the temporary server must be stopped"


def test_replay_stats_needs_a_source():
    result = run_cli("replay", "stats")
    assert result.returncode == 2
    assert "--redis-url" in result.stderr and "--run-dir" in result.stderr


def test_convert_gr00t_writes_a_loadable_policy(tmp_path):
    import torch
    from safetensors.torch import save_file

    from fleetloop.system import DualSystemPolicy, load_policy, model_preset
    from fleetloop.system.gr00t_conversion import gr00t_name_map

    torch.manual_seed(0)
    model = DualSystemPolicy(model_preset("tiny"))
    inverse = {ours: theirs for theirs, ours in gr00t_name_map(model.config).items()}
    tensors = {inverse[name]: p.detach().to(torch.bfloat16).contiguous() for name, p in model.named_parameters()}
    tensors["action_head.decode_layer.weight"] = torch.zeros(32, 128, dtype=torch.bfloat16)
    (tmp_path / "gr00t").mkdir()
    save_file(tensors, str(tmp_path / "gr00t" / "model.safetensors"))

    result = run_cli("model", "convert-gr00t", str(tmp_path / "gr00t"), str(tmp_path / "out"), "--preset", "tiny")
    assert result.returncode == 0, result.stderr
    assert "unused source tensors (1): action_head.decode_layer.weight" in result.stderr
    converted = load_policy(tmp_path / "out" / "policy.safetensors")
    assert torch.equal(converted.backbone.linear.weight, model.backbone.linear.weight.to(torch.bfloat16).float())

    del tensors["backbone.linear.bias"]
    save_file(tensors, str(tmp_path / "gr00t" / "model.safetensors"))
    result = run_cli("model", "convert-gr00t", str(tmp_path / "gr00t"), str(tmp_path / "bad"), "--preset", "tiny")
    assert result.returncode == 1
    assert "missing: backbone.linear.bias" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "bad" / "policy.safetensors").exists()


def test_ingest_stats_export_of_the_shared_dataset(tmp_path, shared_dataset):
    run_dir = str(tmp_path / "run")
    result = run_cli("ingest", str(shared_dataset), "--embodiment", "gr1", "--run-dir", run_dir)
    assert result.returncode == 0, result.stderr
    assert "5 episodes written, 0 already present, 2096 steps" in result.stderr
    again = run_cli("ingest", str(shared_dataset), "--embodiment", "gr1", "--run-dir", run_dir)
    assert "0 episodes written, 5 already present" in again.stderr

    stats = json.loads(run_cli("replay", "stats", "--run-dir", run_dir, "--json").stdout)
    assert stats["pretrain"]["episodes"] == 5 and stats["pretrain"]["steps"] == 2096
    assert stats["pretrain"]["embodiments"] == {"gr1": 5}
    table = run_cli("replay", "stats", "--run-dir", run_dir).stdout
    assert "dataset:gr1_pick_place 5 / gr1 5" in table

    out = tmp_path / "exported"
    result = run_cli("export", "pretrain", str(out), "--embodiment", "gr1", "--run-dir", run_dir)
    assert result.returncode == 0, result.stderr
    modality = json.loads((out / "meta" / "modality.json").read_text())
    assert modality["action"]["right_hand"] == {"start": 29, "end": 35}
    assert len(list((out / "data").glob("chunk-*/episode_*.parquet"))) == 5


def test_ingest_refuses_a_broken_dataset_and_stores_nothing(tmp_path, shared_dataset):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(shared_dataset, broken)
    (broken / "meta" / "modality.json").unlink()
    run_dir = str(tmp_path / "run")
    result = run_cli("ingest", str(broken), "--embodiment", "gr1", "--run-dir", run_dir)
    assert result.returncode == 1
    assert "modality.json" in result.stderr and "Traceback" not in result.stderr
    stats = json.loads(run_cli("replay", "stats", "--run-dir", run_dir, "--json").stdout)
    assert all(row["episodes"] == 0 for row in stats.values())

    unknown = run_cli("ingest", str(shared_dataset), "--embodiment", "gr9", "--run-dir", run_dir)
    assert unknown.returncode == 1 and "unknown embodiment tag 'gr9'" in unknown.stderr
