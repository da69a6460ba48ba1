"""bench/learner.py --quick: the learner throughput benchmark's mechanics, 1 rank and 2 Ray Train
ranks on a Ray cluster of its own (not its goals)."""

import pytest

from tests.bench.conftest import run_bench


@pytest.mark.timeout(700)
def test_quick_run_times_one_rank_and_two_ranks_in_both_modes():
    result = run_bench("learner.py", "--quick", timeout=650)
    for ranks in ("one_rank", "two_ranks"):
        figures = result[ranks]
        assert figures["replay_steps_per_s"] > 0 and figures["memory_steps_per_s"] > 0
        assert figures["overhead_ratio"] == pytest.approx(figures["memory_steps_per_s"] / figures["replay_steps_per_s"],
                                                          abs=1e-3)
    assert result["overhead_ratio"] == result["one_rank"]["overhead_ratio"]
    assert result["overhead_ratio_2_ranks"] == result["two_ranks"]["overhead_ratio"]
