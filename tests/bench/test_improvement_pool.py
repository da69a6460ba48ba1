"""bench/improvement_pool.py: replicate runs pooled into one paired comparison, and the runs it refuses."""

import json
import math
import subprocess
import sys
from pathlib import Path

POOL = Path(__file__).resolve().parents[2] / "bench" / "improvement_pool.py"


def run_file(tmp_path, name, dagger, equal_steps, equal_expert, **config):
    """A file as bench/improvement.py leaves it: log lines, then the JSON object."""
    result = {"quick": False, "mode": "hg-dagger", "correction_share": 0.75, "eval_seeds": [900000, 900003],
              "outcomes_by_arm": {"dagger": dagger, "equal_steps": equal_steps, "equal_expert": equal_expert},
              "expert_steps_by_arm": {"dagger": 100, "equal_steps": 0, "equal_expert": 96}, **config}
    path = tmp_path / name
    path.write_text("a log line\n" + json.dumps(result) + "\n")
    return path


def pool(*paths):
    return subprocess.run([sys.executable, str(POOL), *map(str, paths)], capture_output=True, text=True, timeout=60)


def test_replicates_pool_into_one_paired_test(tmp_path):
    a = run_file(tmp_path, "a.json", "1101", "0100", "1100")
    b = run_file(tmp_path, "b.json", "1110", "0010", "0111")
    done = pool(a, b)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["runs"] == 2 and result["paired_outcomes"] == 8
    assert {arm: r["successes"] for arm, r in result["arms"].items()} == \
        {"dagger": 6, "equal_steps": 2, "equal_expert": 5}
    # D vs C1: D alone succeeds on 4 seeds, C1 alone on none: p = 2 * 0.5 ** 4
    assert result["dagger_vs_equal_steps"] == {"points": 50.0, "mcnemar_p": 2 * 0.5 ** 4}
    # D vs C2: D alone on 2 seeds (a's 4th, b's 1st), C2 alone on 1 (b's 4th): p = 1
    assert result["dagger_vs_equal_expert"] == {"points": 12.5, "mcnemar_p": 1.0}
    low, high = result["arms"]["dagger"]["ci95"]
    assert low < 0.75 < high and math.isclose(result["arms"]["dagger"]["success_rate"], 0.75)
    assert result["expert_steps_by_arm"] == {"dagger": 200, "equal_steps": 0, "equal_expert": 192}
    assert [run["dagger"] for run in result["per_run"]] == [3, 3]


def test_runs_of_different_configurations_are_refused(tmp_path):
    a = run_file(tmp_path, "a.json", "1101", "0100", "1100")
    b = run_file(tmp_path, "b.json", "1110", "0010", "0111", correction_share=[0.5, 0.75, 0.75])
    done = pool(a, b)
    assert done.returncode == 2 and done.stdout == ""
    assert "b.json differs from" in done.stderr and "in correction_share" in done.stderr


def test_correction_shares_compare_round_by_round(tmp_path):
    flat = run_file(tmp_path, "a.json", "1101", "0100", "1100", rounds=3, correction_share=0.75)
    listed = run_file(tmp_path, "b.json", "1110", "0010", "0111", rounds=3, correction_share=[0.75, 0.75, 0.75])
    assert pool(flat, listed).returncode == 0, "one share is that share every round"
    ramp = run_file(tmp_path, "c.json", "1101", "0101", "1100", rounds=3, correction_share=[0.5, 0.75])
    spelled = run_file(tmp_path, "d.json", "1110", "0011", "0111", rounds=3, correction_share=[0.5, 0.75, 0.75])
    assert pool(ramp, spelled).returncode == 0, "the last share repeats in later rounds"
    assert "in correction_share" in pool(ramp, flat).stderr


def test_a_parameter_reported_only_by_later_runs_counts_as_its_earlier_value(tmp_path):
    before = run_file(tmp_path, "a.json", "1101", "0100", "1100")
    later = run_file(tmp_path, "b.json", "1110", "0010", "0111", hand_back=["subgoal", "agreement"])
    assert pool(before, later).returncode == 0
    changed = run_file(tmp_path, "c.json", "1110", "0011", "0111", hand_back=["subgoal"])
    assert "differs from" in pool(before, changed).stderr and "in hand_back" in pool(before, changed).stderr


def test_runs_from_one_checkpoint_are_not_replicates(tmp_path):
    a = run_file(tmp_path, "a.json", "1101", "0100", "1100")
    b = run_file(tmp_path, "b.json", "1111", "0100", "0111")
    done = pool(a, b)
    assert done.returncode == 2 and "identical C1 outcomes, so they share a checkpoint" in done.stderr


def test_quick_runs_files_without_outcomes_and_repeated_files_are_refused(tmp_path):
    quick = run_file(tmp_path, "q.json", "1", "0", "1", quick=True)
    assert "a --quick run; pool full runs only" in pool(quick).stderr
    (tmp_path / "log.txt").write_text("only a log\n")
    assert "no bench/improvement.py JSON line" in pool(tmp_path / "log.txt").stderr
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"success_by_round": [0.4]}))
    assert "no outcomes_by_arm" in pool(old).stderr
    a = run_file(tmp_path, "a.json", "1101", "0100", "1100")
    assert "a run file is given twice" in pool(a, a).stderr
