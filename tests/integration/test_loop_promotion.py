"""`fleetloop up` with weights.promotion=evaluated end to end (real Ray, DeepSpeed, gRPC, MuJoCo,
Valkey): the fleet runs only versions the evaluator let through, in both loop modes."""

import json

import pytest

from fleetloop.replay import EmbeddedValkey, ReplayClient
from tests.integration.test_loop import finish_up, start_up, still_running

pytestmark = pytest.mark.integration

MODES = {
    "sync": (),  # the smoke preset's 2 rounds: the first version starts the fleet, the second is judged
    "async": ("--set", "run.mode=async", "--set", "run.duration_s=40", "--set", "run.max_learner_steps=100000",
              "--set", "actors.num_actors=1"),
}


def _gate_decisions(evaluations: list[dict], margin: float) -> list[int]:
    """The versions a gate with ``margin`` promotes from these evaluations, in order (the first
    evaluated version is promoted as the fleet's first in both modes)."""
    promoted, bar = [], None
    for evaluation in evaluations:
        if not promoted or (evaluation["version"] > promoted[-1] and evaluation["success_rate"] >= bar - margin - 1e-9):
            promoted.append(evaluation["version"])
            bar = evaluation["success_rate"]
        elif evaluation["version"] == promoted[-1]:
            bar = evaluation["success_rate"]
    return promoted


@pytest.mark.parametrize("mode", MODES)
def test_the_fleet_runs_only_the_versions_the_evaluator_let_through(tmp_path, mode):
    run_dir, summary_path = tmp_path / "run", tmp_path / "summary.json"
    proc, _ = start_up(run_dir, "--summary-json", str(summary_path), "--set", "weights.promotion=evaluated",
                       "--set", "weights.promotion_margin=0", "--set", "evaluator.episodes=4", *MODES[mode])
    _, started = finish_up(proc)
    summary = json.loads(summary_path.read_text())
    evaluations = json.loads((run_dir / "evaluations.json").read_text())
    promoted = summary["weight_versions_promoted"]

    assert promoted and promoted == sorted(set(promoted)), "promotions only move forward"
    assert promoted == _gate_decisions(evaluations, margin=0.0), "each decision follows the evaluator's figures"
    assert [e["version"] for e in evaluations if e["promoted"]] == promoted
    if mode == "async":
        assert promoted[0] == 1, "the fleet starts on the first version published"
    for actor, applied in summary["weight_versions_applied_by_actor"].items():
        assert applied and set(applied) <= set(promoted), f"{actor} ran a version nobody promoted: {applied}"
    with EmbeddedValkey(run_dir / "replay") as server:
        with ReplayClient(server.url) as client:
            for table in ("rollouts", "corrections"):
                for episode_id in client.episode_ids(table):
                    episode = client.read_episode(episode_id)
                    assert {episode.policy_version, episode.version_at(episode.length - 1)} <= set(promoted)
    assert not still_running(started), f"processes left running: {still_running(started)}"
