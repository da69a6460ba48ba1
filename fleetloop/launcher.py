"""`fleetloop up`: the local continual-improvement loop on real components.

Starts the replay server (embedded Valkey unless a URL is given), a local Ray cluster, the
learner (DeepSpeed + WeightService), with ``actors.robot=bridge`` and no ``actors.bridge_targets``
one MuJoCo-twin robot bridge per actor (``fleetloop robot-bridge`` subprocesses), and the env
actors as Ray actors; seeds ``pretrain`` with
expert demonstrations; then runs rounds of train -> checkpoint -> publish -> roll out ->
collect corrections, and writes the run directory and an optional JSON summary. Each finished
round is appended to ``rounds.json``; ``resume`` continues a crashed run from its newest
learner checkpoint and the replay data in the run directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import prometheus_client as prom
from tqdm import tqdm

from fleetloop.config import ConfigError, FleetloopConfig
from fleetloop.continuous import FleetTally, StopConditions, lag_p95, run_async
from fleetloop.evaluate import EVALUATIONS_FILE, merge_evaluations
from fleetloop.learner.driver import RemoteLearner, TrainingDriver
from fleetloop.plots import plot_evaluations, plot_learning_curves
from fleetloop.promotion import PromotionGate
from fleetloop.ray_calls import LaunchError, ray_call
from fleetloop.replay import EmbeddedValkey, ReplayClient, ReplayCollector
from fleetloop.rundir import RunDir, log_to_file, ray_runtime_env

log = logging.getLogger(__name__)

WEIGHTS_WAIT_S = 120.0
BRIDGE_STARTUP_S = 120.0
BRIDGE_STOP_S = 10.0
GROUP_STOP_S = 60.0


ACTORS_CONFIGURED = prom.Gauge("fleetloop_actors_configured", "Env actors the loop started (actors.num_actors).",
                               registry=None)
RESTARTS = prom.Counter("fleetloop_loop_restarts_total", "Processes `fleetloop up` restarted after they died.",
                       ["component"], registry=None)
"""These two are served, with the replay's gauges, by the loop's own registry: the driver imports the
learner's and actors' modules, whose metrics belong to their processes' endpoints, not to this one."""
SUPERVISE_EVERY_S = 0.5


class Supervisor:
    """Restarts what `up` owns when it dies: each check restarts its process if dead and says
    whether it did (the embedded Valkey, the twin robot bridges). Ray restarts the actors."""

    def __init__(self, checks: dict[str, Callable[[], bool]]):
        self.checks = checks
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetloop-supervisor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SUPERVISE_EVERY_S):
            for component, restart_if_dead in self.checks.items():
                try:
                    if restart_if_dead():
                        RESTARTS.labels(component).inc()
                except Exception:  # keep supervising the others; the next pass tries again
                    log.exception("restarting %s failed", component)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def check_ports_free(cfg: FleetloopConfig) -> None:
    """Fail early, naming the setting, when a fixed port this machine will bind is taken (with
    ``run.ray_address`` other than local, the learner and actors bind theirs on other nodes)."""
    wanted = [("metrics.replay_port", cfg.metrics.host, cfg.metrics.replay_port)]
    if cfg.run.ray_address == "local":
        wanted += [("weights.port", cfg.weights.host, cfg.weights.port),
                   ("metrics.learner_port", cfg.metrics.host, cfg.metrics.learner_port)]
        if cfg.evaluator.enabled:
            wanted.append(("metrics.evaluator_port", cfg.metrics.host, cfg.metrics.evaluator_port))
        if cfg.metrics.actor_base_port:
            stride = cfg.metrics.actor_port_stride
            wanted += [(f"metrics.actor_base_port (+{i * stride})", cfg.metrics.host,
                        cfg.metrics.actor_base_port + i * stride) for i in range(cfg.actors.num_actors)]
    if _starts_twin_bridges(cfg) and cfg.bridge.metrics_port:
        wanted += [(f"bridge.metrics_port (+{i})", cfg.metrics.host, cfg.bridge.metrics_port + i)
                   for i in range(cfg.actors.num_actors)]
    for setting, host, port in wanted:
        if not port:
            continue
        with socket.socket() as sock:
            # As the servers themselves do: connections in TIME_WAIT from an earlier run do not count.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                key = setting.split(" ")[0]
                raise LaunchError(f"port {host}:{port} ({setting}) is already in use: stop what holds it "
                                  f"or choose another, e.g. --set {key}=0 for any free port") from None


def preflight(cfg: FleetloopConfig) -> None:
    """The checks that need no cluster, made before anything is written or started: fixed ports
    free and, in a local run, the learner's ranks within this machine (``check_learner_fits``)."""
    check_ports_free(cfg)
    if cfg.run.ray_address == "local":
        check_learner_fits(cfg, local_resources())


def local_resources() -> dict[str, float]:
    """What this machine offers the learner's ranks in a local run: its CPUs and CUDA GPUs."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def check_learner_fits(cfg: FleetloopConfig, resources: dict[str, float]) -> None:
    """Refuse learner.ranks whose CPUs, GPUs or custom resources (one CPU, learner.num_gpus and
    learner.ray_resources each) the cluster's ``resources`` cannot hold, before a rank starts.

    Raises:
        ConfigError: naming learner.ranks, what the ranks need and what the cluster has.
    """
    lcfg = cfg.learner
    per_rank = {"CPU": 1.0, "GPU": lcfg.num_gpus, **lcfg.ray_resources}
    short = {name: (lcfg.ranks * amount, resources.get(name, 0.0)) for name, amount in per_rank.items()
             if amount and lcfg.ranks * amount > resources.get(name, 0.0)}
    if short:
        needs = ", ".join(f"{need:g} {name} (the cluster has {have:g})" for name, (need, have) in short.items())
        raise ConfigError(f"learner.ranks: {lcfg.ranks} rank(s), each with 1 CPU, learner.num_gpus={lcfg.num_gpus:g} "
                          f"and learner.ray_resources={dict(lcfg.ray_resources)}, need {needs}: lower learner.ranks "
                          "or what each rank asks for, or give the cluster more")


def _starts_twin_bridges(cfg: FleetloopConfig) -> bool:
    """Whether `up` serves each actor's robot itself: a mujoco-twin bridge per actor."""
    return cfg.actors.robot == "bridge" and not cfg.actors.bridge_targets


class TwinBridgeProcess:
    """``fleetloop robot-bridge --backend mujoco-twin`` for actor ``index``, the very command that
    serves a robot in production, as a subprocess on a free loopback port. The twin is built from
    the run's config (``actors.env``, ``actors.max_steps``, the model's camera size, the gate of
    ``actors.dagger``); its output goes to ``logs/robot-bridge-<index>.log``. A bridge that dies is
    started again on the same port (``restart_if_dead``), where its actor reconnects."""

    def __init__(self, index: int, cfg: FleetloopConfig, config_file: Path, log_dir: Path):
        self.index = index
        self.log_path = log_dir / f"robot-bridge-{index}.log"
        self.address: str | None = None
        self._args = [sys.executable, "-m", "fleetloop.cli", "robot-bridge", "--backend", "mujoco-twin",
                      "--config", str(config_file), "--env", cfg.actors.env, "--host", "127.0.0.1"]
        if cfg.bridge.metrics_port:
            self._args += ["--set", f"bridge.metrics_port={cfg.bridge.metrics_port + index}"]
        self._launch(port=0)

    def _launch(self, port: int) -> None:
        env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0  # earlier runs' lines
        with open(self.log_path, "a") as log_file:
            self.proc = subprocess.Popen([*self._args, "--port", str(port)], stdout=log_file, stderr=subprocess.STDOUT,
                                         env=env)

    def wait_ready(self, timeout_s: float = BRIDGE_STARTUP_S) -> str:
        """The bridge's ``host:port`` once it serves.

        Raises:
            LaunchError: it exited or did not serve within ``timeout_s``; the message quotes its log.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with open(self.log_path) as log_file:
                log_file.seek(self._log_offset)
                text = log_file.read()
            for line in text.splitlines():
                if " serving on " in line:
                    self.address = line.rsplit(" ", 1)[-1]
                    return self.address
            if self.proc.poll() is not None:
                raise LaunchError(f"robot bridge {self.index} exited with code {self.proc.returncode} before "
                                  f"serving; {self.log_path} ends: {text[-1000:]}")
            time.sleep(0.1)
        raise LaunchError(f"robot bridge {self.index} did not serve within {timeout_s:.0f} s; see {self.log_path}")

    def restart_if_dead(self) -> bool:
        """Start the bridge again on its port if its process died; returns whether it did."""
        if self.address is None or self.proc.poll() is None:
            return False
        log.warning("robot bridge %d exited (code %s); restarting it on %s", self.index, self.proc.returncode,
                    self.address)
        self._launch(port=int(self.address.rsplit(":", 1)[1]))
        return True

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``BRIDGE_STOP_S``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(BRIDGE_STOP_S)
            except subprocess.TimeoutExpired:
                log.warning("robot bridge %d did not stop on SIGTERM within %.0f s: killed", self.index, BRIDGE_STOP_S)
                self.proc.kill()
                self.proc.wait()


class Loop:
    """Owns every process of a local run; ``close()`` leaves none of them running."""

    def __init__(self, cfg: FleetloopConfig, run: RunDir, redis_url: str | None, resume: bool = False):
        self.cfg = cfg
        self.run = run
        self.redis_url = redis_url
        self.resume = resume
        self._stack = contextlib.ExitStack()
        self.learner = None
        self.actors: list = []
        self.evaluator = None
        """evaluator.enabled: the evaluator role (actors/evaluator.py)."""
        self.gate = PromotionGate(cfg.weights.promotion_margin) if cfg.weights.promotion == "evaluated" else None
        """weights.promotion=evaluated: which versions the fleet runs (fleetloop/promotion.py)."""
        self.bridge_targets: list[str] = []
        """actors.robot=bridge: the robot bridge of each actor."""

    def start(self) -> None:
        import ray

        from fleetloop.actors.env_actor import EnvActorRole
        from fleetloop.actors.evaluator import EvaluatorRole
        from fleetloop.actors.settings import ActorSettings, EvaluatorSettings

        preflight(self.cfg)
        self.valkey = None
        if self.redis_url is None:
            self.valkey = EmbeddedValkey(self.run.replay, appendfsync=self.cfg.replay.appendfsync,
                                         password=self.cfg.replay.password())
            self.valkey.start()
            self._stack.callback(self.valkey.stop)
            self.redis_url = self.valkey.url
        self.replay = ReplayClient(self.redis_url, tables=self.cfg.replay.tables, **self.cfg.replay.client_options())
        self._stack.callback(self.replay.close)
        registry = prom.CollectorRegistry()
        registry.register(ReplayCollector(self.replay))
        registry.register(ACTORS_CONFIGURED)
        registry.register(RESTARTS)
        server, _ = prom.start_http_server(self.cfg.metrics.replay_port, addr=self.cfg.metrics.host, registry=registry)
        self._stack.callback(server.shutdown)
        self.replay_metrics = f"http://{self.cfg.metrics.host}:{server.server_port}/metrics"

        n = self.cfg.actors.num_actors
        ACTORS_CONFIGURED.set(n)
        bridges = []
        if _starts_twin_bridges(self.cfg):  # started first: they boot while Ray and the learner do
            for i in range(n):  # run_up wrote the run's config before the loop started
                bridges.append(TwinBridgeProcess(i, self.cfg, self.run.config_file, self.run.logs))
                self._stack.callback(bridges[-1].stop)
        options = dict(log_to_driver=False, logging_level=logging.WARNING,
                       runtime_env=ray_runtime_env(self.run.logs, cpu_only=not self.cfg.learner.num_gpus))
        if self.cfg.run.ray_address == "local":
            options.update(num_cpus=n + self.cfg.learner.ranks + 1, include_dashboard=False,
                           object_store_memory=256 << 20)
        on_sigterm = signal.getsignal(signal.SIGTERM)
        ray.init(address=self.cfg.run.ray_address, **options)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)  # ray.init replaces it with a plain sys.exit
        self._stack.callback(ray.shutdown)
        if self.cfg.run.ray_address != "local":  # a local cluster was checked before anything started
            check_learner_fits(self.cfg, ray.cluster_resources())
        self.learner_status = self._start_learner()
        self.driver = TrainingDriver(RemoteLearner(self.learner, ray_call), self.cfg.learner)
        self.endpoints = {key: self.learner_status[key] for key in ("weights", "metrics")}
        # A crashed actor is restarted and its interrupted call retried (episodes are written whole).
        restarts = self.cfg.actors.max_restarts
        actor_cls = ray.remote(num_cpus=1, resources=dict(self.cfg.actors.ray_resources), max_restarts=restarts,
                               max_task_retries=restarts)(EnvActorRole)
        if self.cfg.actors.robot == "bridge":
            self.bridge_targets = [bridge.wait_ready() for bridge in bridges] or list(self.cfg.actors.bridge_targets)
        for i, target in enumerate(self.bridge_targets):
            log.info("actor-%d drives the robot bridge at %s", i, target)
        checks = {f"robot-bridge-{b.index}": b.restart_if_dead for b in bridges}
        if self.valkey is not None:
            checks["replay"] = self.valkey.restart_if_dead
        self._stack.callback(Supervisor(checks).stop)
        settings = ActorSettings.of(self.cfg)
        self.actors = [actor_cls.remote(i, settings, self.redis_url, self.endpoints["weights"], str(self.run.audit),
                                        self.bridge_targets[i] if self.bridge_targets else None)
                       for i in range(n)]
        self.actor_status = ray_call([a.status.remote() for a in self.actors], "starting the actors")
        if self.cfg.evaluator.enabled:
            evaluator_cls = ray.remote(num_cpus=1, resources=dict(self.cfg.evaluator.ray_resources),
                                       max_restarts=restarts, max_task_retries=restarts)(EvaluatorRole)
            self.evaluator = evaluator_cls.remote(EvaluatorSettings.of(self.cfg), self.endpoints["weights"])
            self.evaluator_status = ray_call(self.evaluator.status.remote(), "starting the evaluator")

    def _start_learner(self) -> dict[str, Any]:
        """The learner: one Ray actor, or learner.ranks ranks in a LearnerGroup actor called like one.
        Either is restarted after a crash, at the same address, from its newest checkpoint."""
        import ray

        from fleetloop.learner.group import start_learner_group
        from fleetloop.learner.learner import RestartableLearner
        from fleetloop.learner.settings import LearnerSettings

        lcfg, run_dir, settings = self.cfg.learner, str(self.run.root), LearnerSettings.of(self.cfg)
        if self.cfg.run.ray_address == "local":
            settings = settings.with_pinned_ports()
        if lcfg.ranks == 1:
            remote = ray.remote(num_cpus=1, num_gpus=lcfg.num_gpus, resources=dict(lcfg.ray_resources),
                                max_restarts=lcfg.max_restarts, max_task_retries=lcfg.max_restarts)
            self.learner = remote(RestartableLearner).remote(settings, run_dir, self.redis_url, resume=self.resume)
            return ray_call(self.learner.status.remote(), "starting the learner")
        self.learner = start_learner_group(settings, run_dir, self.redis_url, resume=self.resume, ranks=lcfg.ranks)
        self._stack.callback(self._stop_learner_group)
        return ray_call(self.learner.status.remote(), f"starting the learner's {lcfg.ranks} ranks")

    def _stop_learner_group(self) -> None:
        import ray

        try:
            ray.get(self.learner.shutdown.remote(), timeout=GROUP_STOP_S)
        except ray.exceptions.RayError as exc:  # its ranks end with the cluster
            log.warning("stopping the learner's ranks: %s", str(exc).splitlines()[0])

    def seed_pretrain(self) -> None:
        existing = self.replay.table_stats().get("pretrain", {}).get("episodes", 0)
        if existing:
            log.info("pretrain already holds %d episodes: not seeding", existing)
            return
        per_actor = self.cfg.actors.demos_per_actor
        refs = [a.collect_demos.remote(per_actor) for a in self.actors]
        successes = sum(ray_call(_progress(refs, "seed demos", unit="actor"), "collecting demonstrations"))
        log.info("seeded pretrain with %d expert demonstrations (%d successful)", per_actor * len(refs), successes)

    def train_round(self, round_index: int) -> dict[str, Any]:
        """Train up to the round's last step (all of it, or what a resumed learner still lacks),
        checkpoint, and publish."""
        lcfg = self.cfg.learner
        target = (round_index + 1) * lcfg.steps_per_round
        with tqdm(total=lcfg.steps_per_round, initial=lcfg.steps_per_round - (target - self.learner_status["step"]),
                  desc=f"round {round_index} train", unit="step", leave=False) as bar:
            def advance(result: dict[str, Any]) -> None:
                bar.update(result["step"] - self.learner_status["step"])
                bar.set_postfix(loss=f"{result['loss']:.4f}", version=result["version"])
                self.learner_status = {**self.learner_status, "step": result["step"]}

            trained = self.driver.train_to(target, on_chunk=advance)
        version = self.driver.finish()["version"]
        losses = trained["losses"]
        self.learner_status = {**self.learner_status, "step": trained["step"], "version": version}
        return {"loss": sum(losses) / len(losses) if losses else float("nan"), "step": trained["step"],
                "version": version}

    def rollout_round(self, round_index: int, version: int) -> dict[str, Any]:
        ready = ray_call([a.wait_for_version.remote(version, WEIGHTS_WAIT_S) for a in self.actors], "waiting for weights")
        if not all(ready):
            late = [i for i, ok in enumerate(ready) if not ok]
            raise LaunchError(f"actors {late} did not apply weights version {version} within {WEIGHTS_WAIT_S:.0f} s")
        self.verify_weights(version)
        refs = [a.run_round.remote(round_index, version, WEIGHTS_WAIT_S) for a in self.actors]
        results = ray_call(_progress(refs, f"round {round_index} rollouts", unit="actor"), "rolling out")
        episodes = sum(r["eval_episodes"] for r in results)
        return {"success_rate": sum(r["eval_successes"] for r in results) / episodes, "actors": results}

    def start_evaluation(self, version: int, step: int, published_at_s: float) -> tuple[Any, float, int] | None:
        """Ask the evaluator role to evaluate ``version``, published ``published_at_s`` seconds into the
        loop (it runs beside the rollouts): the Ray ref, that time and the version, or None without an
        evaluator. With the promotion gate the learner holds the version until the evaluation ends."""
        if self.evaluator is None:
            return None
        if self.gate is not None:
            ray_call(self.learner.hold.remote(version), "holding the weights under evaluation")
        return self.evaluator.evaluate_version.remote(version, step, WEIGHTS_WAIT_S), published_at_s, version

    def finish_evaluation(self, started: tuple[Any, float, int] | None) -> dict[str, Any] | None:
        """Wait for an evaluation started by ``start_evaluation`` and merge it, with the minute of the
        loop its version came out (``minute``) and, with the promotion gate, whether the fleet runs it
        now (``promoted``), into the run's ``evaluations.json``; returns it (None for none started)."""
        if started is None:
            return None
        ref, published_at_s, held = started
        evaluation = {**ray_call(ref, "evaluating the weights"), "minute": round(published_at_s / 60, 3)}
        if self.gate is not None:
            evaluation["promoted"] = self._promote_if_admitted(evaluation)
            ray_call(self.learner.release.remote(held), "releasing the evaluated weights")
        merge_evaluations(self.run.root / EVALUATIONS_FILE, [evaluation])
        return evaluation

    def promote(self, version: int, success: float | None = None) -> bool:
        """Let the fleet run ``version`` (the promotion gate's first version, or one it admitted);
        False if the learner no longer holds it."""
        if not ray_call(self.learner.promote.remote(version), "promoting the weights"):
            return False
        self.gate.promote(version, success)
        log.info("weights version %d promoted for the fleet%s", version,
                 "" if success is None else f" (evaluator success {success:.2f})")
        return True

    def _promote_if_admitted(self, evaluation: dict[str, Any]) -> bool:
        """Whether the fleet runs the evaluated version now: it is the fleet version, or the gate
        admits it and the learner promoted it."""
        if self.gate.is_fleet_version(evaluation):
            self.gate.record_fleet_success(evaluation["success_rate"])
            return True
        if not self.gate.admits(evaluation):
            log.info(self.gate.refusal(evaluation))
            return False
        return self.promote(evaluation["version"], evaluation["success_rate"])

    def fleet_version(self, published: int) -> int:
        """The version the fleet runs once ``published`` is out: that one, or the gate's."""
        return published if self.gate is None else self.gate.version

    def verify_weights(self, version: int = 0) -> None:
        """Check that every actor runs exactly the weights the learner published as its version,
        bit for bit (digests computed on each side, independently of the wire's checksums), and
        at least ``version``. A version whose digest the learner no longer knows (published before
        a restart, other than the last) is not checked.

        Raises:
            LaunchError: an actor runs weights that differ from what was published: the loop stops
                rather than roll out or train on a corrupt policy.
        """
        applied = ray_call([a.weights_digest.remote() for a in self.actors], "reading the actors' weights")
        published = {v: ray_call(self.learner.published_digest.remote(v), "reading the learner's digest")
                     for v in {v for v, _ in applied}}
        corrupt = [f"actor-{i} (version {v})" for i, (v, digest) in enumerate(applied)
                   if v < version or published[v] not in (digest, None)]
        if corrupt:
            raise LaunchError(f"weights differ from what the learner published as that version: {', '.join(corrupt)}; "
                              "stopping rather than roll out a corrupt policy")

    def close(self) -> None:
        self._stack.close()


def _progress(refs: list, desc: str, unit: str) -> list:
    """Wait for Ray refs with a progress bar; returns the refs in their original order."""
    import ray

    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit=unit, leave=False) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))
    return refs


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


ROUNDS_FILE = "rounds.json"
EVALUATION_KEYS = ("version", "step", "episodes", "successes", "success_rate", "ci95")
"""What each round's record (rounds.json) keeps of its evaluation; evaluations.json keeps all of it."""


def _evaluations(run: RunDir) -> list[dict[str, Any]]:
    """The evaluator's records of this run's versions (evaluations.json, written as rounds finish)."""
    path = run.root / EVALUATIONS_FILE
    records = json.loads(path.read_text()) if path.is_file() else []
    return [r for r in records if r.get("version") is not None]


def _finished_rounds(run: RunDir, learner_step: int) -> list[dict[str, Any]]:
    """Rounds recorded in the run directory that the resumed learner's checkpoint covers."""
    path = run.root / ROUNDS_FILE
    rounds = json.loads(path.read_text()) if path.is_file() else []
    return [r for r in rounds if r["step"] <= learner_step]


def run_up(cfg: FleetloopConfig, run: RunDir, redis_url: str | None, summary_json: Path | None,
           resume: bool = False) -> dict[str, Any]:
    """Run the loop to the end and return its summary (also written to ``summary_json``)."""
    start = time.time()
    run.write_config(cfg.to_dict())
    log_to_file(run.logs, "fleetloop")
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    loop = Loop(cfg, run, redis_url, resume=resume)
    try:
        loop.start()
        rounds = _finished_rounds(run, loop.learner_status["step"]) if resume else []
        if resume:
            log.info("resuming at learner step %d after %d finished rounds", loop.learner_status["step"], len(rounds))
        else:
            loop.seed_pretrain()
            loop.driver.start(fresh=True)
        stop = StopConditions(cfg.run, cfg.total_learner_steps, time.monotonic())
        before = dict(loop.learner_status)
        if cfg.run.mode == "async":
            ran = run_async(loop, stop)
        else:
            ran = _run_rounds(loop, rounds, stop)
        loop_s = stop.elapsed()
        checkpoint = loop.driver.learner.save_checkpoint()
        statuses = ray_call([a.status.remote() for a in loop.actors], "reading actor status")
        evaluations = _evaluations(run)
        learner = ray_call(loop.learner.status.remote(), "reading learner status")
        summary = _summary(loop, learner, statuses, rounds, evaluations, checkpoint, start)
        summary.update(_loop_figures(loop, ran, loop_s, before, learner))
    finally:
        loop.close()
    plot_learning_curves(rounds, run.plots / "learning_curves.png")
    plot_evaluations(evaluations, run.plots / "evaluations.png")
    # The audit trail of acknowledged writes: actor -> table -> episode ids.
    (run.root / "episodes_written.json").write_text(json.dumps({s["actor"]: s["written"] for s in statuses}, indent=1))
    text = json.dumps(summary, indent=2)
    (run.root / "summary.json").write_text(text)
    if summary_json:
        Path(summary_json).write_text(text)
    return summary


def _run_rounds(loop: Loop, rounds: list[dict[str, Any]], stop: StopConditions) -> dict[str, Any]:
    """run.mode=sync: rounds of train -> publish -> roll out (with the evaluator beside) until
    run.rounds are done or a stop condition holds at a round's end; appends to ``rounds`` and
    ``rounds.json``. Returns the fleet's tally and why it stopped."""
    cfg, tally, reason = loop.cfg, FleetTally(), None
    for r in range(len(rounds), cfg.run.rounds):
        loop.driver.start_round(r)
        trained = loop.train_round(r)
        evaluating = loop.start_evaluation(trained["version"], trained["step"], stop.elapsed())
        gated = loop.gate is not None  # the round rolls out what the gate decides, so it waits for the evaluation
        evaluation = loop.finish_evaluation(evaluating) if gated else None
        rolled = loop.rollout_round(r, loop.fleet_version(trained["version"]))
        if not gated:
            evaluation = loop.finish_evaluation(evaluating)
        for result in rolled["actors"]:
            tally.add(result)
        rounds.append({"round": r, **trained, **rolled,
                       "evaluation": evaluation and {k: evaluation[k] for k in EVALUATION_KEYS}})
        (loop.run.root / ROUNDS_FILE).write_text(json.dumps(rounds, indent=1))
        evaluated = "" if evaluation is None else \
            f"  evaluator {evaluation['success_rate']:.2f} ({evaluation['ci95'][0]:.2f}-{evaluation['ci95'][1]:.2f})"
        tqdm.write(f"round {r}: loss {trained['loss']:.4f}  weights v{trained['version']}  "
                   f"success rate {rolled['success_rate']:.2f}{evaluated}")
        reason = stop.reason(trained["step"], evaluation and evaluation["success_rate"])
        if reason:
            break
    return {"stopped_by": reason or "rounds", "tally": tally}


def _loop_figures(loop: Loop, ran: dict[str, Any], loop_s: float, before: dict[str, Any],
                  learner: dict[str, Any]) -> dict[str, Any]:
    """The loop's pace over its ``loop_s`` seconds (the learner's status ``before`` it and ``learner``
    after): busy fractions, episodes and learner steps per minute, policy lag, and why it stopped."""
    tally: FleetTally = ran["tally"]
    minutes = max(loop_s, 1e-9) / 60
    return {
        "mode": loop.cfg.run.mode,
        "stopped_by": ran["stopped_by"],
        "loop_seconds": round(loop_s, 1),
        "learner_busy_fraction": round((learner["busy_s"] - before["busy_s"]) / max(loop_s, 1e-9), 4),
        "learner_limiter_wait_s": learner["limiter_wait_s"],
        "actor_busy_fraction": round(tally.busy_s / (max(loop_s, 1e-9) * len(loop.actors)), 4),
        "episodes_per_minute": round(tally.episodes / minutes, 2),
        "learner_steps_per_minute": round((learner["step"] - before["step"]) / minutes, 2),
        "policy_lag_p95_versions": lag_p95(tally.lags),
        "fleet_intervention_rate": round(tally.expert_steps / tally.steps, 4) if tally.steps else None,
        "actor_pauses": tally.paused,
    }


def _summary(loop: Loop, learner: dict[str, Any], statuses: list[dict[str, Any]], rounds: list[dict[str, Any]],
             evaluations: list[dict[str, Any]], checkpoint: str, start: float) -> dict[str, Any]:
    stats = loop.replay.table_stats()
    applied = {s["actor"]: s["versions_applied"] for s in statuses}
    reported: dict[str, int] = {}
    for status in statuses:
        for table, ids in status["written"].items():
            reported[table] = reported.get(table, 0) + len(ids)
    return {
        "run_dir": str(loop.run.root),
        "redis_url": loop.redis_url,
        "learner_steps": learner["step"],
        "learner_ranks": learner["world_size"],
        "learner_restarted": learner.get("restarted", False),
        "weight_versions_published": learner["version"],
        "weight_versions_applied_by_actor": applied,
        "weight_versions_promoted": loop.gate.promoted if loop.gate else None,
        "min_weight_version_applied_by_actors": min((v[-1] if v else 0) for v in applied.values()),
        "min_weight_versions_applied_count": min(len(v) for v in applied.values()),
        "actors_restarted": sorted(s["actor"] for s in statuses if s["restarted"]),
        "episodes": {table: s["episodes"] for table, s in stats.items()},
        "episodes_reported_by_actors": reported,
        "corrections": stats.get("corrections", {}).get("episodes", 0),
        "success_rate_by_round": [r["success_rate"] for r in rounds],
        "success_by_version": {str(r["version"]): r["success_rate"] for r in evaluations},
        "success_by_minute": [[r["minute"], r["success_rate"]] for r in evaluations if r.get("minute") is not None],
        "loss_by_round": [r["loss"] for r in rounds],
        "robot_bridges": loop.bridge_targets,
        "metrics_endpoints": {"learner": learner["metrics"], "replay": loop.replay_metrics,
                              **{s["actor"]: s["metrics"] for s in statuses},
                              **({"evaluator": loop.evaluator_status["metrics"]} if loop.evaluator else {})},
        "checkpoint": checkpoint,
        "wall_seconds": round(time.time() - start, 1),
    }
