"""bench/improvement.py --quick: the DAgger-improvement benchmark's mechanics (not its goal)."""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "improvement.py"


def test_quick_run_reports_every_round():
    env = {**os.environ, "MUJOCO_GL": "egl", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rounds = result["rounds"]
    episodes = result["eval_episodes_per_round"]
    assert result["mode"] == "hg-dagger" and isinstance(result["state_includes_object_pose"], bool)
    assert len(result["success_by_round"]) == len(result["ci95_by_round"]) == rounds + 1
    assert len(result["intervention_rate_by_round"]) == rounds + 1
    assert [r["round"] for r in result["per_round"]] == list(range(rounds + 1))
    for record, rate, (low, high) in zip(result["per_round"], result["success_by_round"], result["ci95_by_round"]):
        assert record["successes"] == round(rate * episodes) and 0 <= record["successes"] <= episodes
        assert 0.0 <= low <= rate <= high <= 1.0 and low < high
    assert all(0.0 <= r <= 1.0 for r in result["intervention_rate_by_round"])
    assert result["gain_points"] == round(100 * (result["success_by_round"][-1] - result["success_by_round"][0]), 1)
    assert result["demo_successes"] == result["n_demos"], "the expert's demonstrations succeed"
    assert all(r["correction_episodes"] > 0 for r in result["per_round"][:-1]), "every round wrote corrections"
    assert result["wall_seconds"] > 0
