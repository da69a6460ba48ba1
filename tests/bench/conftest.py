"""Helpers of the benchmark tests: run a bench script as a user would, read its final JSON line."""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def run_bench(script: str, *args, timeout: float) -> dict:
    """``bench/<script> ARGS...`` with offscreen rendering and DeepSpeed on the CPU; its last stdout
    line as JSON (asserts it exited 0)."""
    env = {**os.environ, "MUJOCO_GL": "egl", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, str(BENCH_DIR / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
