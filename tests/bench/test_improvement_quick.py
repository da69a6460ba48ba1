"""bench/improvement.py --quick: the DAgger-improvement benchmark's mechanics (not its goal)."""

import subprocess
import sys
from pathlib import Path

from tests.bench.conftest import BENCH_DIR, run_bench

BENCH = BENCH_DIR / "improvement.py"


def in_interval(rate: float, interval: list[float]) -> bool:
    low, high = interval
    return 0.0 <= low <= rate <= high <= 1.0 and low < high


def test_quick_run_reports_every_arm_and_round(tmp_path):
    result = run_bench("improvement.py", "--quick", "--keep", tmp_path, timeout=420)
    rounds, episodes = result["rounds"], result["eval_episodes_per_round"]
    assert result["mode"] == "hg-dagger" and result["state_includes_object_pose"] is True
    assert len(result["success_by_round"]) == len(result["ci95_by_round"]) == rounds + 1
    assert len(result["intervention_rate_by_round"]) == rounds + 1
    assert [r["round"] for r in result["per_round"]] == list(range(rounds + 1))
    for record in result["per_round"]:
        assert record["successes"] == round(record["success_rate"] * episodes)
        assert in_interval(record["success_rate"], record["ci95"])
    assert all(0.0 <= r <= 1.0 for r in result["intervention_rate_by_round"])
    assert all(r["takeovers"] > 0 and r["expert_label_rows"] > 0 for r in result["per_round"][:-1]), \
        "the untrained policy is taken over every round"

    equal_steps, equal_expert = result["control_equal_steps"], result["control_equal_expert"]
    assert result["control_same_total_steps"] == equal_steps
    for arm in (equal_steps, equal_expert):
        assert arm["successes"] == round(arm["success_rate"] * episodes) and in_interval(arm["success_rate"], arm["ci95"])
    effort = result["expert_steps_by_arm"]
    assert effort["dagger"] == sum(r["expert_label_rows"] for r in result["per_round"][:-1])
    assert effort["equal_steps"] == 0
    assert effort["equal_expert"] == effort["dagger"], "C2's demonstrations hold D's expert steps, the last one cut"
    assert [r["dagger_expert_steps"] for r in equal_expert["per_round"]] == \
        [sum(r["expert_label_rows"] for r in result["per_round"][:k + 1]) for k in range(rounds)]
    tables = result["episodes_by_arm"]
    assert {arm: tables[arm]["pretrain"] for arm in tables} == {
        "dagger": result["n_demos"], "equal_steps": result["n_demos"],
        "equal_expert": result["n_demos"] + sum(r["demos"] for r in equal_expert["per_round"])}, \
        "every arm trains on the shared demonstrations, C2 on its own besides"
    assert tables["dagger"]["corrections"] > 0 and "corrections" not in tables["equal_steps"]
    assert set(result["mcnemar_p"]) == {"vs_equal_steps", "vs_equal_expert"}
    outcomes = result["outcomes_by_arm"]
    assert [outcomes[arm].count("1") for arm in ("dagger", "equal_steps", "equal_expert")] == [
        result["per_round"][-1]["successes"], equal_steps["successes"], equal_expert["successes"]]
    assert all(len(o) == episodes and set(o) <= {"0", "1"} for o in outcomes.values())
    assert all(0.0 < p <= 1.0 for p in result["mcnemar_p"].values())
    for flags, successes in ((result["gate_flags"], result["per_round"][0]["successes"]),
                             (result["gate_flags_final"], result["per_round"][-1]["successes"])):
        assert flags["successes"] == successes and flags["failures"] + flags["successes"] == episodes
    assert result["gate_recall"] is None or 0.0 <= result["gate_recall"] <= 1.0
    assert [point["step"] for point in result["bc_curve"]] == [2, 4, 6, 8]
    assert result["demo_successes"] == result["n_demos"], "the expert's demonstrations succeed"
    assert result["wall_seconds"] > 0

    policy = next(tmp_path.glob("bc/learner/checkpoints/policy-step-*.safetensors"))
    rerun = run_bench("improvement.py", "--quick", "--bc-policy", policy, "--takeover-labels", "driven",
                      "--expert-ratio", "2", "--correction-share", "0.25,0.75", "--hand-back", "subgoal", timeout=420)
    assert rerun["bc_curve"] == result["bc_curve"], "the arms started from the kept checkpoint"
    assert rerun["success_by_round"][0] == result["success_by_round"][0]
    assert rerun["takeover_labels"] == "driven" and rerun["expert_ratio"] == 2
    assert result["correction_share"] == [0.5, 0.75], "the default: half of the first round's batches"
    assert rerun["correction_share"] == [0.25, 0.75]
    assert [r["mixture"]["corrections"] for r in rerun["per_round"][:-1]] == [0.25, 0.75], "one share per round"
    endings = {ending for r in rerun["per_round"][:-1] for ending in r["takeover_endings"]}
    assert endings and "agreement" not in endings, "takeovers hand back only when their subgoal is done"
    effort = rerun["expert_steps_by_arm"]
    assert 2 * effort["dagger"] <= effort["equal_expert"] < 2 * effort["dagger"] + rerun["max_steps"], \
        "C2 records demonstrations until its expert steps reach twice D's"

    alone = run_bench("first_round.py", "--quick", "--bc-policy", policy, "--class-weights",
                      '{"pre_intervention_relabel": 0}', timeout=300)
    assert alone["takeovers"] > 0 and alone["steps"] == alone["round_steps"] == 4
    assert '"pre_intervention_relabel": 0' in alone["overrides"][0] and alone["mixture"]["corrections"] == 0.5
    assert len(alone["outcomes"]) == episodes and alone["successes"] == sum(alone["outcomes"])
    assert alone["episodes"]["corrections"] > 0 and alone["episodes"]["pretrain"] == result["n_demos"]

    finals = result["final_policies"]
    assert set(finals) == {"dagger", "equal_steps", "equal_expert"} and all(Path(f).is_file() for f in finals.values())
    watched = run_bench("gate_watch.py", "--quick", "--policy", finals["dagger"], "--settle-steps", "4", timeout=300)
    assert watched["gate"]["settle_steps"] == 4 and watched["eval_episodes"] == episodes
    assert watched["outcomes"] == outcomes["dagger"], "D's kept final policy; watching changes no outcome"
    assert watched["gate_flags"]["failures"] + watched["gate_flags"]["successes"] == episodes


def test_an_expert_ratio_that_is_not_positive_is_refused_by_flag_name():
    done = subprocess.run([sys.executable, str(BENCH), "--expert-ratio", "0"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stdout == "" and "--expert-ratio 0.0 must be > 0" in done.stderr


def test_shares_that_leave_no_room_for_demonstrations_are_refused_by_flag_name():
    done = subprocess.run([sys.executable, str(BENCH), "--correction-share", "0.75", "--robot-share", "0.5"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert "--correction-share 0.75 and --robot-share 0.5" in done.stderr and "sum to at most 1" in done.stderr


def test_a_share_schedule_that_does_not_fit_the_rounds_is_refused_by_flag_name():
    done = subprocess.run([sys.executable, str(BENCH), "--correction-share", "0.5,0.75,0.75,0.9"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert "--correction-share 0.5,0.75,0.75,0.9 gives 4 shares for 3 rounds" in done.stderr


def test_an_unknown_hand_back_reason_is_refused_by_flag_name():
    done = subprocess.run([sys.executable, str(BENCH), "--hand-back", "subgoal,bored"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert "--hand-back names bored; choose from subgoal, agreement" in done.stderr


def test_gate_watch_refuses_a_missing_policy_and_a_negative_settle_by_flag_name(tmp_path):
    missing = subprocess.run([sys.executable, str(BENCH_DIR / "gate_watch.py"), "--policy", str(tmp_path / "p")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stdout == "" and f"--policy {tmp_path / 'p'}: no such file" in missing.stderr
    (tmp_path / "p").write_bytes(b"")
    settle = subprocess.run([sys.executable, str(BENCH_DIR / "gate_watch.py"), "--policy", str(tmp_path / "p"),
                             "--settle-steps", "-1"], capture_output=True, text=True, timeout=60)
    assert settle.returncode == 2 and settle.stdout == "" and "--settle-steps -1 must be within 0..64" in settle.stderr


def test_first_round_refuses_an_unknown_class_by_flag_name(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH_DIR / "first_round.py"), "--bc-policy", str(tmp_path / "p"),
                           "--class-weights", '{"takeover": 0}'], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert "--class-weights names ['takeover']" in done.stderr
