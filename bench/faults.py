"""Fault injection on a running `fleetloop up`: does the loop recover, lose nothing acknowledged,
store no partial episode and never apply corrupt weights?

Every scenario runs the real loop (embedded Valkey in zero-loss mode, `appendfsync always`; Ray;
the DeepSpeed learner; two actors each driving a MuJoCo-twin robot bridge; the evaluator) in
``--mode sync`` (rounds) or ``async`` (learner and fleet at once, bounded by learner steps) and
injects one fault at a random moment (seeded) once the loop has made progress (sync: the first
round; async: the first trained version):

    none                 the baseline, no fault
    actor_kill9          kill -9 of one env actor (Ray restarts it)
    redis_kill9          kill -9 of the replay server (`up` restarts it on its port; AOF replay)
    redis_sigstop        the replay server paused for 15 s, longer than every client timeout
    bridge_kill9         kill -9 of one robot bridge (`up` restarts it; the actor reconnects)
    learner_kill9        kill -9 of the learner (Ray restarts it; it resumes from its checkpoint)
    learner_rank_kill9   with learner.ranks=2: kill -9 of one rank (its LearnerGroup restarts both
                         from the newest checkpoint and retries the interrupted call)
    weight_service_kill9 kill -9 of the learner while a weights stream is in flight (the
                         WeightService lives in the learner's process); restarted likewise
    evaluator_kill9      kill -9 of the evaluator (Ray restarts it and retries its evaluation)
    weights_stream_cut   weight streams cut half-way by a TCP proxy between actors and learner

Per scenario: recovered (the run finished all its work, sync: every round, async: every learner
step, with no help), recovery_s (fault -> the next finished round, or the next published version
in async mode), acknowledged (episode ids the actors' audit files hold: written only after Redis
acknowledged them), stored (how many of those the replay holds; equal = nothing lost), partial
(stored episodes that do not read back whole), versions_applied, learner_restarted,
corrupt_applied (an actor ran weights whose digest differs from the learner's for that version:
the loop checks every round, in async mode at the end, and stops), and wall_s with its ratio to
the baseline run of the same invocation. Logs go to stderr; the last stdout line is one JSON object.

    python bench/faults.py [--quick] [--mode sync|async] [--seed N] [--scenarios a,b,...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

os.environ.setdefault("MUJOCO_GL", "egl")

from fleetloop.replay import EmbeddedValkey, ReplayClient  # noqa: E402
from fleetloop.ports import free_port  # noqa: E402

FLEETLOOP = str(Path(sys.executable).parent / "fleetloop")
SCENARIOS = ("none", "actor_kill9", "redis_kill9", "redis_sigstop", "bridge_kill9", "learner_kill9",
             "learner_rank_kill9", "weight_service_kill9", "evaluator_kill9", "weights_stream_cut")
SCENARIO_SETTINGS = {"learner_rank_kill9": ["learner.ranks=2", "learner.torch_threads=1"]}
"""Settings a scenario adds to the loop's; its wall ratio to the baseline (one rank) includes them."""
STEPS_PER_ROUND = 20
PAUSE_S = 15.0
"""SIGSTOP length: longer than the replay client's 10 s socket timeout."""
RUN_TIMEOUT_S = 900.0


def log(message: str) -> None:
    print(f"[faults] {message}", file=sys.stderr, flush=True)


class CuttingProxy:
    """A TCP proxy from the actors to the WeightService. Armed, it closes each connection that has
    carried ``cut_after`` more bytes from the server since arming: a weight stream cut half-way."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_after: int | None = None
        self.cuts = 0
        self.server_bytes = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, cut_after: int, cuts: int) -> None:
        with self._lock:
            self.cut_after, self._cuts_left = cut_after, cuts

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()

    def _pipe(self, client: socket.socket, server: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, server)
        sel.register(server, selectors.EVENT_READ, client)
        carried_since_armed = 0
        try:
            while True:
                for key, _ in sel.select():
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    if key.fileobj is server:
                        with self._lock:
                            self.server_bytes += len(data)
                            if self.cut_after is not None:
                                carried_since_armed += len(data)
                                if carried_since_armed >= self.cut_after and self._cuts_left > 0:
                                    self._cuts_left -= 1
                                    self.cuts += 1
                                    key.data.sendall(data[: len(data) // 2])
                                    return  # both sides closed mid-stream
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()


def processes(root: int, marker: str) -> list[tuple[psutil.Process, str]]:
    """Live (not zombie) descendants of ``root`` whose command line contains ``marker``, with it."""
    found = []
    for proc in psutil.Process(root).children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
            if marker in cmdline and proc.status() != psutil.STATUS_ZOMBIE:
                found.append((proc, cmdline))
        except psutil.NoSuchProcess:  # ZombieProcess included
            continue
    return found


def rounds_done(run_dir: Path) -> int:
    path = run_dir / "rounds.json"
    try:
        return len(json.loads(path.read_text())) if path.exists() else 0
    except json.JSONDecodeError:  # being rewritten
        return 0


def versions_published(run_dir: Path) -> int:
    path = run_dir / "checkpoints" / "published_version.json"
    try:
        return json.loads(path.read_text())["version"] if path.exists() else 0
    except (json.JSONDecodeError, KeyError):  # being replaced
        return 0


def progress(run_dir: Path, mode: str) -> int:
    """How far the loop has come: finished rounds (sync), or trained versions published (async: 1 is
    the first, untrained, publish)."""
    return rounds_done(run_dir) if mode == "sync" else max(0, versions_published(run_dir) - 1)


def mode_settings(mode: str, rounds: int) -> list[str]:
    """The loop's length: ``rounds`` rounds (sync), or as many learner steps (async)."""
    if mode == "sync":
        return [f"run.rounds={rounds}"]
    return ["run.mode=async", f"run.max_learner_steps={rounds * STEPS_PER_ROUND}"]


def start_up(run_dir: Path, settings: list[str]) -> subprocess.Popen:
    args = [FLEETLOOP, "up", "--run-dir", str(run_dir), "--config", "smoke",
            *[a for s in settings for a in ("--set", s)]]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(run_dir.parent / f"{run_dir.name}.log", "a"),
                            start_new_session=True)


def inject(name: str, up: subprocess.Popen, run_dir: Path, proxy: CuttingProxy, rng: random.Random) -> str:
    """Inject the scenario's fault now; returns what was done."""
    if name == "actor_kill9":
        victim, cmdline = rng.choice(processes(up.pid, "ray::EnvActor"))
    elif name in ("redis_kill9", "redis_sigstop"):
        victim = psutil.Process(json.loads((run_dir / "replay" / "server.json").read_text())["pid"])
        cmdline = "valkey-server"
    elif name == "bridge_kill9":
        bridges = [(p, c) for p, c in processes(up.pid, "robot-bridge --backend") if p.ppid() == up.pid]
        victim, cmdline = rng.choice(bridges)  # `up` starts each bridge itself
    elif name in ("learner_kill9", "weight_service_kill9"):
        if name == "weight_service_kill9":  # wait for a weights stream in flight
            before, deadline = proxy.server_bytes, time.monotonic() + 120
            while proxy.server_bytes - before < 4096 and time.monotonic() < deadline:
                time.sleep(0.01)
        victim, cmdline = processes(up.pid, "RestartableLearner")[0]
    elif name == "learner_rank_kill9":
        victim, cmdline = rng.choice(processes(up.pid, "ray::LearnerRank"))
    elif name == "evaluator_kill9":
        victim, cmdline = processes(up.pid, "ray::EvaluatorRole")[0]
    elif name == "weights_stream_cut":
        proxy.arm(cut_after=rng.randint(2_000, 60_000), cuts=3)
        return "armed the proxy to cut the next 3 weight streams half-way"
    else:
        raise ValueError(f"unknown scenario {name!r}")
    if name == "redis_sigstop":
        victim.send_signal(signal.SIGSTOP)
        time.sleep(PAUSE_S)
        victim.send_signal(signal.SIGCONT)
        return f"paused valkey pid {victim.pid} for {PAUSE_S:.0f} s"
    victim.kill()
    return f"kill -9 {cmdline[:60]} (pid {victim.pid})"


def audit_ids(run_dir: Path) -> set[str]:
    ids = set()
    for path in (run_dir / "audit").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                ids.add(json.loads(line)["episode_id"])
            except (json.JSONDecodeError, KeyError):
                continue  # a line torn by the kill: not an acknowledgement
    return ids


def replay_contents(run_dir: Path) -> tuple[set[str], int]:
    """Every stored episode id, and how many of them do not read back whole."""
    stored, partial = set(), 0
    with EmbeddedValkey(run_dir / "replay") as server, ReplayClient(server.url) as client:
        for table in client.tables():
            for episode_id in client.episode_ids(table):
                stored.add(episode_id)
                try:
                    client.read_episode(episode_id).validate()
                except Exception:  # noqa: BLE001 - any failure to read back whole counts
                    partial += 1
    return stored, partial


def run_scenario(name: str, settings: list[str], weights_port: int, workdir: Path, rng: random.Random,
                 rounds: int, mode: str = "sync") -> dict:
    run_dir = workdir / name
    proxy = CuttingProxy(weights_port)
    settings = [*settings, *SCENARIO_SETTINGS.get(name, []), *mode_settings(mode, rounds),
                f"weights.port={weights_port}", f"weights.advertise_address=127.0.0.1:{proxy.port}"]
    started = time.monotonic()
    up = start_up(run_dir, settings)
    fault_at, action, exits, recovery_s = None, "none", [], None
    done_at_fault = 0
    while True:
        code = up.poll()
        now = time.monotonic()
        if fault_at is None and name != "none" and progress(run_dir, mode) >= 1:
            time.sleep(rng.uniform(0.0, 6.0))
            done_at_fault, fault_at = progress(run_dir, mode), time.monotonic()
            try:
                action = inject(name, up, run_dir, proxy, rng)
            except (IndexError, psutil.NoSuchProcess) as exc:
                action = f"could not inject: {exc!r}"
            log(f"{name}: {action}")
        if fault_at is not None and recovery_s is None and progress(run_dir, mode) > done_at_fault:
            recovery_s = round(time.monotonic() - fault_at, 1)
        if code is not None:
            exits.append(code)
            break
        if now - started > RUN_TIMEOUT_S:
            os.killpg(up.pid, signal.SIGKILL)
            exits.append("timeout")
            break
        time.sleep(0.2)
    wall = time.monotonic() - started
    acknowledged = audit_ids(run_dir)
    stored, partial = replay_contents(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    log_text = (workdir / f"{name}.log").read_text()
    finished = rounds_done(run_dir) == rounds if mode == "sync" else \
        summary.get("learner_steps") == rounds * STEPS_PER_ROUND
    return {
        "name": name,
        "mode": mode,
        "fault": action,
        "recovered": exits[-1] == 0 and finished,
        "recovery_s": recovery_s,
        "acknowledged": len(acknowledged),
        "stored": len(acknowledged & stored),
        "stored_unacknowledged": len(stored - acknowledged),
        "partial": partial,
        "versions_applied": summary.get("weight_versions_applied_by_actor"),
        "learner_restarted": summary.get("learner_restarted"),
        "corrupt_applied": log_text.count("stopping rather than roll out a corrupt policy"),
        "streams_cut": proxy.cuts,
        "exit_codes": exits,
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a check of the mechanics")
    parser.add_argument("--mode", choices=("sync", "async"), default="sync", help="the loop's run.mode")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault moments and victims")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    args = parser.parse_args()
    names = [s for s in args.scenarios.split(",") if s]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {list(SCENARIOS)}")
    rounds = 3 if args.quick else 4
    settings = [f"learner.steps_per_round={STEPS_PER_ROUND}", "learner.publish_every=5", "learner.checkpoint_every=10",
                "actors.robot=bridge", "actors.dagger.mode=hg-dagger", "replay.appendfsync=always",
                "actors.replay_retry_s=120", "bridge.reconnect_timeout_s=60"]
    rng = random.Random(args.seed)
    started = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="fleetloop-faults-") as tmp:
        for name in names:
            log(f"scenario {name}")
            results.append(run_scenario(name, settings, free_port(), Path(tmp), rng, rounds, args.mode))
            log(json.dumps(results[-1]))
    baseline = next((r["wall_s"] for r in results if r["name"] == "none"), None)
    for result in results:
        result["wall_ratio_vs_baseline"] = round(result["wall_s"] / baseline, 2) if baseline else None
    print(json.dumps({"scenarios": results, "mode": args.mode, "rounds": rounds, "appendfsync": "always",
                      "seed": args.seed,
                      "all_recovered": all(r["recovered"] for r in results),
                      "lost_acknowledged": sum(r["acknowledged"] - r["stored"] for r in results),
                      "partial_episodes": sum(r["partial"] for r in results),
                      "corrupt_applied": sum(r["corrupt_applied"] for r in results),
                      "wall_seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    main()
