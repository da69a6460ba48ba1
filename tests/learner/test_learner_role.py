"""`fleetloop learner` as a process: kill -9 mid-run, then --resume carries on."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FLEETLOOP = str(Path(sys.executable).parent / "fleetloop")
SETTINGS = ["--config", "smoke", "--set", "learner.batch_size=4", "--set", "learner.publish_every=5",
            "--set", "learner.checkpoint_every=10", "--set", "learner.warmup_steps=2"]


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"learner exited ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_kill_9_then_resume_continues_step_optimizer_and_version(valkey, demos, tmp_path):
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints"
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.Popen([FLEETLOOP, "learner", *SETTINGS, "--redis-url", valkey.url, "--run-dir", str(run_dir),
                             "--steps", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for(lambda: (ckpt / "deepspeed/latest").is_file(), 240, "the first checkpoint", proc)
        checkpointed = int((ckpt / "deepspeed/latest").read_text().strip().split("-")[1])
        # Let it publish past the checkpoint, so resuming from the checkpoint must skip used version numbers.
        _wait_for(lambda: (_json(ckpt / "published_version.json") or {}).get("step", 0) > checkpointed + 5
                  or int((ckpt / "deepspeed/latest").read_text().strip().split("-")[1]) > checkpointed,
                  120, "a publish after the checkpoint", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    latest = int((ckpt / "deepspeed/latest").read_text().strip().split("-")[1])
    published_before = _json(ckpt / "published_version.json")
    assert published_before["step"] >= latest

    steps = latest + 10
    result = subprocess.run([FLEETLOOP, "learner", "--resume", "--redis-url", valkey.url, "--run-dir", str(run_dir),
                             "--steps", str(steps), "--summary-json", str(tmp_path / "status.json")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["resumed_from_step"] == latest
    assert status["step"] == steps
    assert status["optimizer_steps"] == steps, "DeepSpeed's step counter (and the LR schedule) continued"
    # First publish re-serves the restored weights as a new number, then one per publish_every steps.
    assert status["version"] == published_before["version"] + 1 + 10 // 5
    assert f"resumed at step {latest}" in result.stderr
    record = _json(ckpt / "published_version.json")
    assert (record["version"], record["step"], len(record["digest"])) == (status["version"], steps, 64)


def test_resume_without_a_run_dir_is_a_usage_error():
    result = subprocess.run([FLEETLOOP, "learner", "--resume"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--resume needs --run-dir" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--ranks", "0"], "--ranks: expected at least 1"),
    (["--steps", "-1"], "--steps: expected 0"),
    (["--ranks", "2"], "--run-dir: every rank writes checkpoints"),
])
def test_bad_learner_options_name_the_option(args, message):
    result = subprocess.run([FLEETLOOP, "learner", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def _fresh_status(run_dir: Path, result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "learner_status.json").read_text())


def test_deepspeed_launcher_runs_two_ranks(valkey, demos, tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        master_port = sock.getsockname()[1]
    run_dir = tmp_path / "run"
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    result = subprocess.run(
        [deepspeed, "--num_gpus", "2", "--master_port", str(master_port), "--module", "fleetloop.cli", "learner",
         *SETTINGS, "--set", "learner.checkpoint_every=6", "--redis-url", valkey.url, "--run-dir", str(run_dir),
         "--steps", "6"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    status = _fresh_status(run_dir, result)
    assert (status["world_size"], status["step"], status["optimizer_steps"]) == (2, 6, 6)
    shards = sorted(p.name for p in (run_dir / "checkpoints/deepspeed/step-0000006").glob("*optim_states.pt"))
    assert len(shards) == 2, f"ZeRO-1 saves one optimizer shard per rank, got {shards}"
    assert (run_dir / "logs/learner-rank1.log").exists()


def test_ray_train_ranks_under_zero_3_export_one_consolidated_policy(valkey, demos, tmp_path):
    from fleetloop.system import DualSystemPolicy, load_policy, model_preset

    run_dir = tmp_path / "run"
    result = subprocess.run(
        [FLEETLOOP, "learner", *SETTINGS, "--set", "learner.zero_stage=3", "--set", "learner.checkpoint_every=6",
         "--redis-url", valkey.url, "--run-dir", str(run_dir), "--ranks", "2", "--steps", "6"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    status = _fresh_status(run_dir, result)
    assert (status["world_size"], status["step"]) == (2, 6)
    policy = load_policy(run_dir / "checkpoints/policy-step-0000006.safetensors")
    expected = DualSystemPolicy(model_preset("tiny")).state_dict()
    exported = policy.state_dict()
    assert {k: tuple(v.shape) for k, v in exported.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert all(v.numel() == 0 or torch_any_nonzero(v) for k, v in exported.items() if k.endswith("weight"))


def torch_any_nonzero(tensor) -> bool:
    return bool(tensor.abs().sum() > 0)
