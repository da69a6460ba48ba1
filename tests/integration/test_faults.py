"""Faults injected into a running `fleetloop up` through bench/faults.py's own scenario runner:
the loop recovers by itself, every acknowledged episode is stored, none is partial, and no
corrupt weights are applied. (The bench runs every scenario and reports the figures.)"""

import importlib.util
import random
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench" / "faults.py"


@pytest.fixture(scope="module")
def faults():
    spec = importlib.util.spec_from_file_location("bench_faults", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("scenario, mode", [("redis_kill9", "sync"), ("bridge_kill9", "sync"),
                                            ("weights_stream_cut", "sync"), ("learner_kill9", "async"),
                                            ("learner_rank_kill9", "async")])
def test_the_loop_recovers_and_loses_nothing(faults, scenario, mode, tmp_path):
    settings = ["learner.steps_per_round=10", "learner.publish_every=5", "learner.checkpoint_every=10", "actors.robot=bridge",
                "actors.dagger.mode=hg-dagger", "replay.appendfsync=always", "actors.replay_retry_s=120",
                "bridge.reconnect_timeout_s=60"]
    result = faults.run_scenario(scenario, settings, faults.free_port(), tmp_path, random.Random(1), rounds=3,
                                 mode=mode)
    assert not result["fault"].startswith("could not"), result
    assert result["recovered"], result
    assert result["acknowledged"] > 0 and result["stored"] == result["acknowledged"], result
    assert result["partial"] == 0 and result["corrupt_applied"] == 0, result
    if scenario.startswith("learner_"):
        assert result["learner_restarted"], "the learner finished without a restart: the fault hit nothing"
    if scenario == "weights_stream_cut":
        assert result["streams_cut"] >= 1, "the proxy cut no weight stream: the scenario tested nothing"
