"""`fleetloop up` end to end on the real components: Valkey, Ray, DeepSpeed, gRPC, MuJoCo."""

import http.client
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from fleetloop.ports import free_port
from fleetloop.replay import EmbeddedValkey, ReplayClient

pytestmark = pytest.mark.integration

FLEETLOOP = str(Path(sys.executable).parent / "fleetloop")
SIGINT_AS_IN_A_TERMINAL = ("env", "--default-signal=INT")
"""Prefix of a child's command: SIGINT's default action in it, as under a terminal (a test run started
in the background by a non-interactive shell inherits SIGINT ignored, and Python keeps it ignored).
Not a ``preexec_fn``: Python code between fork and exec in a process with gRPC's threads (earlier
tests' clients) can abort the child before it runs (seen once under load: SIGABRT, "epoll_wait
error: Bad file descriptor", the command never started)."""


def free_ports(n: int) -> list[int]:
    """``n`` different ports that bind now (``fleetloop.ports.free_port``: outside the ephemeral range)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def descendants(pid: int) -> set[tuple[int, float]]:
    """(pid, start time) of every process below ``pid`` now: Valkey, Ray's GCS, raylet, workers."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for child in children:
        try:
            found.add((child.pid, child.create_time()))
        except psutil.NoSuchProcess:
            continue
    return found


def still_running(processes: set[tuple[int, float]], grace_s: float = 20.0) -> list[str]:
    """Those of ``processes`` still alive (same pid and start time, not a zombie) ``grace_s`` seconds
    from now at the latest: Ray's raylet ends its workers just after the driver exits, and on a
    loaded machine one was seen alive at the driver's exit and gone a moment later."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = []
        for pid, started in processes:
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {' '.join(proc.cmdline())[:80]}")
            except psutil.NoSuchProcess:
                continue
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.5)


def scrape(url: str) -> str | None:
    """The page at ``url``; None while nothing serves it. Polling a free ephemeral port before its
    server binds can connect the client socket to itself (TCP simultaneous open): it then reads
    back its own request line, an HTTPException, which counts as "not up yet" too."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()
    except (OSError, http.client.HTTPException):
        return None


def finish_up(proc: subprocess.Popen, timeout: float = 900) -> tuple[str, set[tuple[int, float]]]:
    """Wait for a `start_up` run to end, which must succeed; its output and every process it started."""
    started = descendants(proc.pid)
    try:
        output = proc.communicate(timeout=timeout)[0]
    finally:
        started |= descendants(proc.pid)
    assert proc.returncode == 0, output
    return output, started


def start_up(run_dir: Path, *extra: str) -> tuple[subprocess.Popen, dict[str, str]]:
    learner_port, replay_port, evaluator_port = free_ports(3)
    actor_base = free_port(count=2)  # actor i serves its metrics on base + i: both must be free
    endpoints = {"learner": f"http://127.0.0.1:{learner_port}/metrics",
                 "replay": f"http://127.0.0.1:{replay_port}/metrics",
                 "evaluator": f"http://127.0.0.1:{evaluator_port}/metrics",
                 "actor-0": f"http://127.0.0.1:{actor_base}/metrics",
                 "actor-1": f"http://127.0.0.1:{actor_base + 1}/metrics"}
    proc = subprocess.Popen(
        [*SIGINT_AS_IN_A_TERMINAL, FLEETLOOP, "up", "--config", "smoke", "--run-dir", str(run_dir),
         "--set", f"metrics.learner_port={learner_port}", "--set", f"metrics.replay_port={replay_port}",
         "--set", f"metrics.actor_base_port={actor_base}", "--set", f"metrics.evaluator_port={evaluator_port}",
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, endpoints


def test_short_loop_every_role_does_its_part(tmp_path):
    run_dir = tmp_path / "run"
    summary_path = tmp_path / "summary.json"
    proc, endpoints = start_up(run_dir, "--summary-json", str(summary_path))

    served: dict[str, str] = {}
    started: set[tuple[int, float]] = set()
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        started |= descendants(proc.pid)
        for name, url in endpoints.items():
            if name not in served:
                body = scrape(url)
                if body and "fleetloop_" in body:
                    served[name] = body
        time.sleep(0.5)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert set(served) == set(endpoints), f"endpoints never served fleetloop_ series: {set(endpoints) - set(served)}"
    assert "fleetloop_learner_steps_total" in served["learner"]
    assert "fleetloop_replay_episodes" in served["replay"]
    assert "fleetloop_actor_weights_version" in served["actor-0"]
    assert "fleetloop_evaluator_success_rate" in served["evaluator"]

    summary = json.loads(summary_path.read_text())
    assert summary["learner_steps"] > 0
    assert summary["weight_versions_published"] >= 2
    assert all(len(versions) >= 2 for versions in summary["weight_versions_applied_by_actor"].values())
    assert summary["min_weight_versions_applied_count"] >= 2
    assert summary["corrections"] > 0
    assert len(summary["success_rate_by_round"]) == 2
    assert set(summary["metrics_endpoints"]) == set(endpoints)
    # The evaluator scored each round's published version on the same 2 fixed seeds.
    rounds = json.loads((run_dir / "rounds.json").read_text())
    evaluations = json.loads((run_dir / "evaluations.json").read_text())
    assert [e["version"] for e in evaluations] == [r["version"] for r in rounds] == \
        [int(v) for v in summary["success_by_version"]]
    assert [e["step"] for e in evaluations] == [r["step"] for r in rounds]
    assert all(e["episodes"] == 2 and e["seed_base"] == 2_000_000_000 for e in evaluations)
    assert [r["evaluation"]["success_rate"] for r in rounds] == list(summary["success_by_version"].values())
    assert "evaluator" in output and (run_dir / "plots" / "evaluations.png").stat().st_size > 0
    assert "success rate" in output
    assert (run_dir / "plots" / "learning_curves.png").stat().st_size > 0
    assert (run_dir / "config.yaml").exists() and (run_dir / "logs" / "fleetloop.log").exists()
    assert list((run_dir / "checkpoints").glob("policy-*.safetensors"))

    # The replay holds exactly the episodes the actors reported writing, and every
    # correction carries the policy version that produced it.
    written = json.loads((run_dir / "episodes_written.json").read_text())
    with EmbeddedValkey(run_dir / "replay") as server:
        client = ReplayClient(server.url)
        for table in ("pretrain", "rollouts", "corrections", "evaluations"):
            reported = sorted(i for tables in written.values() for i in tables.get(table, []))
            assert sorted(client.episode_ids(table)) == reported, table
        for episode_id in client.episode_ids("corrections"):
            assert client.read_episode(episode_id).policy_version >= 1
        client.close()

    assert len(started) >= 4, "Valkey, Ray's services, the learner and the actors run below fleetloop up"
    assert not still_running(started), f"processes left running: {still_running(started)}"
    assert not (run_dir / "replay" / "server.json").exists(), "embedded Valkey left running"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_a_signal_stops_every_process(tmp_path, signum):
    """Ctrl-C, or SIGTERM (what Kubernetes sends; ray.init must not replace up's handler)."""
    run_dir = tmp_path / "run"
    # 100 rounds: the run is still going when SIGINT arrives and could not end by itself within the wait below
    proc, endpoints = start_up(run_dir, "--set", "run.rounds=100")
    started: set[tuple[int, float]] = set()
    deadline = time.time() + 300
    while time.time() < deadline and not scrape(endpoints["actor-1"]):
        assert proc.poll() is None, proc.communicate()[0]
        started |= descendants(proc.pid)
        time.sleep(0.5)
    started |= descendants(proc.pid)
    assert len(started) >= 4, "Valkey, Ray's services, the learner and the actors run below fleetloop up"
    proc.send_signal(signum)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "interrupted" in output
    time.sleep(2)
    assert not still_running(started), f"processes left running: {still_running(started)}"
    server_json = run_dir / "replay" / "server.json"
    assert not server_json.exists(), "embedded Valkey left running"


def test_kill_9_mid_run_then_up_resume_finishes_the_run(tmp_path):
    run_dir = tmp_path / "run"
    proc, _ = start_up(run_dir, "--set", "run.rounds=3")
    rounds_file = run_dir / "rounds.json"
    started: set[tuple[int, float]] = set()
    deadline = time.time() + 600
    while time.time() < deadline and not rounds_file.exists():
        assert proc.poll() is None, proc.communicate()[0]
        started |= descendants(proc.pid)
        time.sleep(0.2)
    started |= descendants(proc.pid)
    # A crash of the whole machine: every process of the run dies at once, no clean-up runs.
    for pid, _ in started | {(proc.pid, 0.0)}:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            continue
    proc.communicate(timeout=60)
    time.sleep(1)
    assert not still_running(started)
    before = json.loads(rounds_file.read_text())
    published_before = json.loads((run_dir / "checkpoints" / "published_version.json").read_text())["version"]
    with EmbeddedValkey(run_dir / "replay") as server:
        with ReplayClient(server.url) as client:
            pretrain_before = sorted(client.episode_ids("pretrain"))

    summary_path = tmp_path / "summary.json"
    result = subprocess.run([FLEETLOOP, "up", "--resume", "--run-dir", str(run_dir), "--summary-json", str(summary_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["learner_steps"] == 30, "3 rounds of 10 steps, none repeated past the checkpoint"
    assert len(summary["success_rate_by_round"]) == 3
    assert summary["success_rate_by_round"][: len(before)] == [r["success_rate"] for r in before]
    assert summary["weight_versions_published"] > published_before
    assert all(min(v) > published_before for v in summary["weight_versions_applied_by_actor"].values()), \
        "after the resume, actors only ever see versions above those published before the crash"
    with EmbeddedValkey(run_dir / "replay") as server:
        with ReplayClient(server.url) as client:
            assert sorted(client.episode_ids("pretrain")) == pretrain_before, "pretrain is not seeded twice"


def test_a_killed_actor_is_restarted_and_loses_no_acknowledged_episode(tmp_path):
    run_dir = tmp_path / "run"
    summary_path = tmp_path / "summary.json"
    proc, _ = start_up(run_dir, "--set", "run.rounds=3", "--summary-json", str(summary_path))
    victim = None
    deadline = time.time() + 600
    while time.time() < deadline and victim is None:
        assert proc.poll() is None, proc.communicate()[0]
        if (run_dir / "rounds.json").exists():
            actors = [p for p in psutil.Process(proc.pid).children(recursive=True)
                      if "EnvActor" in " ".join(p.cmdline())]
            victim = actors[0] if actors else None
        time.sleep(0.2)
    assert victim is not None, "no EnvActor process found after round 0"
    victim.kill()  # SIGKILL mid-run: the episode in flight is lost, nothing else
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    summary = json.loads(summary_path.read_text())
    assert len(summary["success_rate_by_round"]) == 3 and summary["learner_steps"] == 30
    assert len(summary["actors_restarted"]) == 1, "Ray restarted the killed actor"
    written = json.loads((run_dir / "episodes_written.json").read_text())
    with EmbeddedValkey(run_dir / "replay") as server:
        with ReplayClient(server.url) as client:
            for table in ("pretrain", "rollouts", "corrections", "evaluations"):
                reported = sorted(i for tables in written.values() for i in tables.get(table, []))
                assert sorted(client.episode_ids(table)) == reported, table
                for episode_id in client.episode_ids(table):
                    episode = client.read_episode(episode_id)
                    assert len(episode.states) == len(episode.actions) > 0, "no partial episode"
