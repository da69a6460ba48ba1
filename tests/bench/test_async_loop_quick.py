"""bench/async_loop.py --quick: the sync-against-async benchmark's mechanics (not its goals)."""

import subprocess
import sys

import pytest

from tests.bench.conftest import BENCH_DIR, run_bench


@pytest.mark.timeout(1000)  # two `fleetloop up` runs, each with its set-up
def test_quick_run_compares_both_modes_under_one_budget(tmp_path):
    result = run_bench("async_loop.py", "--quick", "--keep", tmp_path, timeout=950)
    assert set(result["runs"]) == {"sync", "async"}
    for mode in ("sync", "async"):
        run = result["runs"][mode]
        assert 0.0 < result["learner_busy_fraction"][mode] <= 1.0
        assert 0.0 < result["actor_busy_fraction"][mode] <= 1.0
        assert result["learner_steps_per_minute"][mode] > 0 and result["episodes_per_minute"][mode] > 0
        assert run["success_by_minute"] and all(0.0 <= s <= 1.0 for _, s in run["success_by_minute"])
        minutes = [m for m, _ in run["success_by_minute"]]
        assert minutes == sorted(minutes)
        assert 0.0 <= run["fleet_intervention_rate"] <= 1.0, "the share of DAgger steps the expert drove"
        assert run["weight_versions_promoted"] is None, "no promotion gate: the fleet runs every version"
    assert result["runs"]["async"]["stopped_by"] == "duration_s"
    # async evaluates its starting weights at minute 0: reported apart, never counted as reaching a target
    assert 0.0 <= result["start_success"]["async"] <= 1.0 and result["start_success"]["sync"] is None
    assert result["policy_lag_p95_versions"] is not None
    ratio = result["wall_to_sync_final_success_ratio"]
    assert ratio is None or ratio >= 0
    assert result["wall_to_sync_final_success_ratio_by_run"] == {"async": ratio}
    fleet = result["promotion"]["fleet_success_by_minute"]
    assert set(fleet) == {"async"}, "--quick leaves the gated run out"
    # ungated, the fleet runs every evaluated version: the starting one, then each one trained
    assert [m for m, _ in fleet["async"]][1:] == minutes and fleet["async"][0][1] == result["start_success"]["async"]
    one_rank = result["learner_ranks"]["async"]  # --quick leaves the 2-rank run out
    assert set(result["learner_ranks"]) == {"async"} and one_rank["ranks"] == 1
    assert one_rank["windows_per_minute"] > one_rank["learner_steps_per_minute"] > 0


def test_an_unknown_configuration_is_named_with_the_choices():
    done = subprocess.run([sys.executable, str(BENCH_DIR / "async_loop.py"), "--runs", "async_niced,async_fast"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--runs async_fast: no such configuration; choose from async_fewer_actors," in done.stderr
