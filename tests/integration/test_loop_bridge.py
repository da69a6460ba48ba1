"""`fleetloop up` with actors.robot=bridge: one mujoco-twin bridge per actor, actors drive their
robots only through them, and nothing is left running afterwards."""

import json
import time

import psutil
import pytest

from tests.integration.test_loop import descendants, start_up, still_running

pytestmark = pytest.mark.integration

BRIDGE_RUN = ["--set", "actors.robot=bridge", "--set", "actors.dagger.mode=hg-dagger", "--set", "run.rounds=1",
              "--set", "learner.steps_per_round=5", "--set", "actors.max_steps=24"]


def robot_bridges(pid: int) -> set[int]:
    """Pids of the `fleetloop robot-bridge` processes below ``pid``."""
    found = set()
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for child in children:
        try:
            if "robot-bridge" in child.cmdline():
                found.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def test_up_starts_a_twin_bridge_per_actor_and_stops_them(tmp_path):
    run_dir = tmp_path / "run"
    summary_path = tmp_path / "summary.json"
    proc, _ = start_up(run_dir, *BRIDGE_RUN, "--summary-json", str(summary_path))
    started: set[tuple[int, float]] = set()
    bridge_pids: set[int] = set()
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        started |= descendants(proc.pid)
        bridge_pids |= robot_bridges(proc.pid)
        time.sleep(0.5)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output

    summary = json.loads(summary_path.read_text())
    bridges = summary["robot_bridges"]
    assert len(bridges) == 2 and len(set(bridges)) == 2 and all(b.startswith("127.0.0.1:") for b in bridges)
    for i, address in enumerate(bridges):
        assert f"serving on {address}" in (run_dir / "logs" / f"robot-bridge-{i}.log").read_text()
    assert summary["episodes"]["pretrain"] == 4, "demonstrations come from the actors' local sim"
    assert summary["episodes"]["rollouts"] > 0 and summary["corrections"] > 0, "the twins' operators took over"
    assert not still_running(started), f"processes left running: {still_running(started)}"
    assert len(bridge_pids) == 2, "the bridges ran below fleetloop up (and were stopped with it)"
