"""`fleetloop learner` as a process: kill -9 mid-run, then --resume carries on; its Ray Train ranks
restart by themselves."""

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


def _rank_processes(root: int) -> list:
    import psutil

    found = []
    for proc in psutil.Process(root).children(recursive=True):
        try:
            if "ray::LearnerRank" in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def _checkpoint_step(ckpt: Path) -> int:
    """The newest DeepSpeed checkpoint's step; -1 before the first (or while ``latest`` is rewritten)."""
    try:
        return int((ckpt / "deepspeed/latest").read_text().strip().split("-")[1])
    except (FileNotFoundError, IndexError, ValueError):
        return -1


def test_ray_train_ranks_restart_by_themselves_and_export_one_consolidated_policy(valkey, demos, tmp_path):
    """--ranks 2 under ZeRO-3: kill -9 of one rank mid-run; the group restarts both from the newest
    checkpoint with no --resume, trains on, and SIGTERM ends it with one consolidated policy file."""
    from fleetloop.system import DualSystemPolicy, load_policy, model_preset

    run_dir, ckpt = tmp_path / "run", tmp_path / "run/checkpoints"
    proc = subprocess.Popen(
        [FLEETLOOP, "learner", *SETTINGS, "--set", "learner.zero_stage=3", "--set", "learner.max_restarts=1",
         "--set", "weights.port=0", "--set", "metrics.learner_port=0",
         "--redis-url", valkey.url, "--run-dir", str(run_dir), "--ranks", "2", "--steps", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"},
        start_new_session=True)
    try:
        _wait_for(lambda: _checkpoint_step(ckpt) >= 10, 300, "the step-10 checkpoint", proc)
        killed = _rank_processes(proc.pid)
        assert len(killed) == 2, f"expected 2 rank processes, found {killed}"
        killed[1].kill()
        _wait_for(lambda: _checkpoint_step(ckpt) >= 20, 300, "a checkpoint after the restart", proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:  # with the Ray cluster it started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    status = json.loads((run_dir / "learner_status.json").read_text())
    assert (status["world_size"], status["restarts"]) == (2, 1)
    assert status["resumed_from_step"] >= 10 and status["resumed_from_step"] % 10 == 0, status
    assert status["step"] >= 20 and status["optimizer_steps"] == status["step"]
    assert not {p.pid for p in killed} & set(status["rank_pids"]), "both ranks were replaced"
    assert "restart(s) of its ranks" in stderr
    assert "a learner rank died" in (run_dir / "logs/workers.log").read_text()
    policy = load_policy(ckpt / f"policy-step-{status['step']:07d}.safetensors")
    expected = DualSystemPolicy(model_preset("tiny")).state_dict()
    exported = policy.state_dict()
    assert {k: tuple(v.shape) for k, v in exported.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert all(v.numel() == 0 or torch_any_nonzero(v) for k, v in exported.items() if k.endswith("weight"))


def torch_any_nonzero(tensor) -> bool:
    return bool(tensor.abs().sum() > 0)
