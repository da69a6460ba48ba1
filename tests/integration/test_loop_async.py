"""`fleetloop up` with run.mode=async end to end: the learner and the fleet work at the same time,
on the real components (Valkey, Ray, DeepSpeed, gRPC, MuJoCo), through a killed actor."""

import json
import time

import psutil
import pytest

from fleetloop.replay import EmbeddedValkey, ReplayClient
from tests.integration.test_loop import descendants, start_up, still_running

pytestmark = pytest.mark.integration

PACED_CORRECTIONS = ("replay.tables.corrections={capacity: 10000, sampler: prioritized, samples_per_insert: 64, "
                     "error_buffer: 256, block_inserts: false}")


def test_async_loop_trains_while_the_fleet_rolls_out_and_survives_a_killed_actor(tmp_path):
    run_dir, summary_path = tmp_path / "run", tmp_path / "summary.json"
    proc, _ = start_up(run_dir, "--summary-json", str(summary_path), "--set", "run.mode=async",
                       "--set", "run.duration_s=75", "--set", "run.max_learner_steps=100000",
                       "--set", "actors.weights_refresh=chunk", "--set", PACED_CORRECTIONS)
    started, victim = set(), None
    deadline = time.time() + 600
    while time.time() < deadline and victim is None:
        assert proc.poll() is None, proc.communicate()[0]
        started |= descendants(proc.pid)
        if (run_dir / "evaluations.json").exists():  # the loop runs: version 1 was evaluated
            actors = [p for p in psutil.Process(proc.pid).children(recursive=True)
                      if "EnvActor" in " ".join(p.cmdline())]
            victim = actors[0] if actors else None
        time.sleep(0.2)
    assert victim is not None, "no EnvActor process found once the loop ran"
    victim.kill()  # SIGKILL mid-episode: that episode is lost, nothing acknowledged is
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    summary = json.loads(summary_path.read_text())

    assert summary["mode"] == "async" and summary["stopped_by"] == "duration_s"
    assert 75 <= summary["loop_seconds"] < 75 + 60, "stops at the duration, after the calls in flight"
    assert summary["learner_steps"] > 0 and summary["weight_versions_published"] >= 3
    assert summary["learner_busy_fraction"] > 0.3, "the learner trains without waiting for rounds"
    assert summary["actor_busy_fraction"] > 0.3, "the actors roll out while it trains"
    assert summary["policy_lag_p95_versions"] is not None and summary["policy_lag_p95_versions"] <= 3
    assert len(summary["actors_restarted"]) == 1, "Ray restarted the killed actor and the loop went on"
    assert summary["success_rate_by_round"] == [], "no rounds in async mode"
    evaluations = json.loads((run_dir / "evaluations.json").read_text())
    assert len(evaluations) >= 2 and [e["version"] for e in evaluations] == sorted({e["version"] for e in evaluations})
    assert [m for m, _ in summary["success_by_minute"]] == [e["minute"] for e in evaluations]
    assert evaluations[-1]["version"] == summary["weight_versions_published"], "the final version is evaluated"
    assert (run_dir / "plots" / "evaluations.png").stat().st_size > 0
    assert "stopped by duration_s" in output

    written = json.loads((run_dir / "episodes_written.json").read_text())
    published = summary["weight_versions_published"]
    with EmbeddedValkey(run_dir / "replay") as server:
        with ReplayClient(server.url) as client:
            for table in ("pretrain", "rollouts", "corrections"):
                reported = sorted(i for tables in written.values() for i in tables.get(table, []))
                assert sorted(client.episode_ids(table)) == reported, table
            for table in ("rollouts", "corrections"):
                for episode_id in client.episode_ids(table):
                    episode = client.read_episode(episode_id)
                    episode.validate()  # whole, with versions that only move forward
                    assert 1 <= episode.policy_version <= episode.version_at(episode.length - 1) <= published
    assert not still_running(started), f"processes left running: {still_running(started)}"
