"""EnvActor: owns one environment, an inference copy of the policy and a weight subscriber.

Run as a Ray actor by the launcher (``EnvActorRole``, which builds its replay client, weight
subscriber and robot client from addresses). It seeds ``pretrain`` with expert demonstrations, and in
every round rolls out the newest applied policy: DAgger episodes (``actors.dagger.mode``) and
policy-only evaluation episodes (on fixed seeds when ``actors.eval_seed_base`` and
``actors.dagger_seed_base`` are set, so rounds are compared on the same episodes). A scene with several robots (gr1_handover) gives
one trajectory per robot, each written as its own episode; every robot has its own policy
(System 2 cache and noise) over the shared model. Each trajectory is written by its DAgger mode's
segments (actors/dagger): the policy's own steps to ``rollouts``, the corrections (operator
takeovers, relabelled planning states, each step labelled with the expert's chunk) to
``corrections``, every episode stamped with the weight version that produced it. In simulation
the operator is the env's scripted expert behind a gate (actors/operator.py).

With ``actors.robot=bridge`` the actor drives its robot only through a robot bridge
(``actors/bridge/connection.py``, one robot per bridge): its rollouts and evaluations run there,
the corrections are the operator's takeovers, and an episode during which the bridge went away
is discarded. The local env and expert then only record the demonstrations (offline data).

An episode reaches the replay only whole (one atomic write at its end), so an actor that
crashes mid-episode leaves nothing partial; Ray restarts it, and the restarted actor
re-subscribes to the weights and waits for the round's version before rolling out. Every
acknowledged write is appended to the actor's audit file (``audit_dir/<actor>.jsonl``), which
survives restarts and gives each new episode a fresh environment seed.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import replace
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import prometheus_client as prom
import torch

from fleetloop.actors.bridge import RobotClient
from fleetloop.actors.bridge.connection import BridgeConnection
from fleetloop.actors.bridge.episode import EpisodeDiscarded
from fleetloop.actors.dagger import DEMO, Segment, make_mode, robot_class
from fleetloop.actors.dagger.episodes import expert_effort, to_episode
from fleetloop.actors.envs import env_options, make_env, make_expert
from fleetloop.actors.envs.trace import ExpertUnavailable
from fleetloop.actors.operator import Takeover, make_operator
from fleetloop.actors.outbox import Outbox
from fleetloop.actors.rollout import PolicyOutputError, Trajectory, run_episodes
from fleetloop.actors.subscriber import WeightSubscriber
from fleetloop.replay import InvalidEpisodeError, ReplayClient
from fleetloop.actors.scene_policy import ScenePolicy
from fleetloop.system import embodiment_layout

if TYPE_CHECKING:
    from fleetloop.actors.settings import ActorSettings

log = logging.getLogger(__name__)

EPISODES = prom.Counter("fleetloop_actor_episodes_total", "Episodes the actor wrote to the replay (acknowledged).",
                        ["actor", "table"])
ENV_STEPS = prom.Counter("fleetloop_actor_env_steps_total", "Environment steps taken.", ["actor"])
TASK_LABELS = ["actor", "task", "embodiment"]
SUCCESS_RATE = prom.Gauge("fleetloop_actor_success_rate", "Success rate of the latest round's policy-only episodes.",
                          TASK_LABELS)
INTERVENTION_RATE = prom.Gauge("fleetloop_actor_intervention_rate",
                               "Fraction of steps the expert or operator drove in the latest round's DAgger episodes.",
                               TASK_LABELS)
RETURN_ON_HUMAN_EFFORT = prom.Gauge(
    "fleetloop_actor_return_on_human_effort",
    "Successful episodes per minute of expert/operator control in the latest round's DAgger episodes.", TASK_LABELS)
DISCARDED = prom.Counter("fleetloop_actor_discarded_episodes_total",
                         "Episodes stopped and not written (e.g. the policy returned NaN or a wrong-shaped chunk, "
                         "the robot bridge went away).",
                         ["actor", "reason"])
EPISODE_LENGTH = prom.Gauge("fleetloop_actor_episode_length", "Steps of the latest episode.", TASK_LABELS)
WEIGHTS_VERSION = prom.Gauge("fleetloop_actor_weights_version", "Weight version the actor's policy runs.", ["actor"])
POLICY_LAG = prom.Gauge("fleetloop_actor_policy_lag_versions",
                        "Versions the actor's policy is behind the newest promoted for the fleet (it is told of those only).", TASK_LABELS)
EVALUATIONS = "evaluations"
"""Table of evaluation episodes: written for audits and dashboards, never in a mixture by default."""
SKIPPED_SEGMENTS = prom.Counter("fleetloop_actor_skipped_segments_total",
                                 "Correction segments marked and not written: a takeover that hit its cap or whose "
                                 "expert could no longer plan, a segment that is not a valid episode (e.g. a label with NaN).",
                                 ["actor", "reason"])
EXPERT_UNAVAILABLE = prom.Counter("fleetloop_actor_expert_unavailable_total",
                                   "Planning steps at which the scripted expert could not plan (e.g. its goal out of "
                                   "reach): no label there, no judgement, no takeover.", ["actor"])
TAKEOVER_STEPS = prom.Histogram("fleetloop_actor_takeover_steps", "Length in steps of finished operator takeovers, "
                                "by how they ended (subgoal, agreement, cap, episode_end).", [*TASK_LABELS, "ended_by"],
                                buckets=(4, 8, 16, 24, 32, 48, 64, 96, 128))
BUSY_SECONDS = prom.Counter("fleetloop_actor_busy_seconds_total",
                             "Seconds the actor spent running episodes (1 - its rate: the idle fraction).", ["actor"])
EPISODE_POLICY_LAG = prom.Histogram("fleetloop_actor_episode_policy_lag_versions",
                                    "Versions the policy of each finished episode was behind the newest announced.",
                                    ["actor"], buckets=(0, 1, 2, 3, 4, 6, 8, 16))
PAUSED = prom.Gauge("fleetloop_actor_paused", "1 while the actor holds back: its policy lags more than "
                    "actors.max_policy_lag versions behind the newest promoted for the fleet.", ["actor"])
INFERENCE_SECONDS = prom.Histogram("fleetloop_actor_inference_seconds", "Time to predict one action chunk.", ["actor"],
                                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


def actor_id(actor_index: int) -> str:
    """The name of the fleet's ``actor_index``-th actor (its metrics label, audit file and subscriber id)."""
    return f"actor-{actor_index}"


class EnvActor:
    """One environment runner of the fleet.

    It receives its network collaborators built (``EnvActorRole`` builds them from addresses for
    the loop) and owns them from then on: ``close`` closes them.

    Args:
        actor_index: position in the fleet; names the actor and offsets its seeds and port.
        settings: the configuration sections it reads (``ActorSettings.of(cfg)``).
        replay: client of the replay it writes episodes to.
        weights: subscriber to the learner's WeightService, not started: the actor binds its
            ``on_version`` to the policy and starts it.
        audit_dir: folder of the actors' audit files (kept across restarts).
        robot: actors.robot=bridge: the client of its robot bridge (None in simulation).

    Raises:
        ValueError: a robot client without actors.robot=bridge, or none with it.
        BridgeMismatch: the bridge drives another robot than the model's embodiment.
        BridgeUnavailable: no bridge answered within ``bridge.reconnect_timeout_s``.
    """

    def __init__(self, actor_index: int, settings: ActorSettings, replay: ReplayClient, weights: WeightSubscriber,
                 audit_dir: str, robot: RobotClient | None = None):
        self.settings = settings
        acfg = settings.actors
        if (robot is None) != (acfg.robot == "sim"):
            needs = "no robot client" if acfg.robot == "sim" else "a robot client"
            raise ValueError(f"actors.robot={acfg.robot} needs {needs}, got {robot!r}")
        if acfg.niceness:
            os.nice(acfg.niceness)  # the process runs nothing but this actor (a Ray worker)
        torch.set_num_threads(acfg.torch_threads)
        self.env = make_env(acfg.env, **env_options(acfg, settings.model))
        self.expert = make_expert(acfg.env, self.env)
        self.embodiment = self.env.embodiment
        self.layout = embodiment_layout(self.embodiment)
        self.mode = make_mode(acfg.dagger.mode)
        self.actor_id = actor_id(actor_index)
        self.scene = ScenePolicy(settings.model, self.env, on_plan=INFERENCE_SECONDS.labels(self.actor_id).observe)
        horizon = self.scene.horizon
        groups = dict(self.layout.action) if self.layout is not None else None
        self.operators = {agent: make_operator(acfg.dagger, self.expert, agent, horizon=horizon,
                                               execute_steps=acfg.execute_steps, action_groups=groups)
                          for agent in self.env.possible_agents}
        self.actor_index = actor_index
        self.bridge = None if robot is None else BridgeConnection(
            robot, self.actor_id, self.embodiment, acfg.execute_steps, settings.bridge.reconnect_timeout_s)
        self.replay = replay
        self.rng = np.random.default_rng([settings.seed, actor_index])
        self.seed_base = settings.seed_bases[actor_index]  # episode i resets its env from seed_base + i
        self.audit_path = Path(audit_dir) / f"{self.actor_id}.jsonl"
        self.audit_path.parent.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(self.replay, self.actor_id, self.audit_path, acfg.replay_retry_s,
                             on_written=lambda table, _: EPISODES.labels(self.actor_id, table).inc())
        # A restarted actor continues the seeds after every episode it wrote before.
        self.episode_count = sum(len(ids) for ids in read_audit(self.audit_path).values())
        self.labels = (self.actor_id, acfg.env, self.embodiment)
        self.versions_applied: list[int] = []
        self.episode_lags: list[int] = []
        """Policy lag (versions) at the end of each policy episode since ``collect`` or ``run_round``
        last reported."""
        self.paused = False
        """``collect`` held back: the policy lags more than actors.max_policy_lag versions."""
        metrics = settings.metrics
        port = metrics.actor_base_port and metrics.actor_base_port + actor_index * metrics.actor_port_stride
        self._metrics_server, _ = prom.start_http_server(port, addr=metrics.host)
        self.metrics_port = self._metrics_server.server_port
        self.subscriber = weights
        self.subscriber.on_version = self.scene.receive
        self.subscriber.start()

    # -- weights ---------------------------------------------------------------------------
    def _refresh_weights(self, step: int = 0) -> None:
        """Swap in the newest fully received, verified version, if newer (at an episode's start, or
        at a chunk's planning ``step`` with ``actors.weights_refresh=chunk``)."""
        version = self.scene.refresh(step)
        if version is not None:
            self.versions_applied.append(version)
            WEIGHTS_VERSION.labels(self.actor_id).set(version)
            log.info("%s applied weights version %d%s", self.actor_id, version, f" at step {step}" if step else "")

    def _before_plan(self, step: int) -> None:
        if step > 0:  # step 0: the episode's start refreshed already
            self._refresh_weights(step)

    def weights_digest(self) -> tuple[int, str]:
        """The applied version and ``tensors_digest`` of the weights the policy runs now, in the
        dtypes they were published in (exact: a model in a wider dtype casts back losslessly)."""
        return self.scene.digest()

    @property
    def version(self) -> int:
        return self.scene.version

    def wait_for_version(self, version: int, timeout_s: float) -> bool:
        """Block until a version >= ``version`` is received, and swap it in; False on timeout."""
        received = self.subscriber.wait_for_version(version, timeout_s)
        self._refresh_weights()
        return received

    # -- episodes --------------------------------------------------------------------------
    def _episode(self, *, use_policy: bool, frame_every: int, seed: int | None = None, beta: float = 0.0,
                 training: bool = False, watch: bool = False,
                 probe_recovery: bool = False) -> tuple[dict[str, Trajectory] | None, int]:
        """Run one episode (one trajectory per robot of the scene); (None, version) when the
        policy's output made it unusable (discarded). ``training``: a DAgger episode of the
        configured mode; ``watch``: an evaluation the operators judge without taking over.
        ``seed`` None takes the actor's next seed."""
        start = time.perf_counter()
        self._refresh_weights()
        version = self.version
        POLICY_LAG.labels(*self.labels).set(max(0, self.subscriber.latest_announced - version))
        if seed is None:
            seed = self.seed_base + self.episode_count
            self.episode_count += 1
        self.scene.reset(seed)  # the same episode seed, the same noise
        plans = self.scene.plans()
        judged = self.mode.judges_plans(self.settings.actors.dagger)
        before_plan = self._before_plan if use_policy and self.settings.actors.weights_refresh == "chunk" else None
        try:
            if self.bridge is not None and use_policy:  # the bridge's operator gates; evaluations it watches
                trajs = {self.bridge.robot_id: self.bridge.episode(next(iter(plans.values())), seed=seed,
                                                                   evaluation=not training, before_plan=before_plan)}
            else:
                trajs = run_episodes(self.env, self.expert, plans if use_policy else None,
                                     horizon=self.scene.horizon,
                                     execute_steps=self.settings.actors.execute_steps, frame_every=frame_every,
                                     rng=self.rng, seed=seed, mode=self.mode if training else None, beta=beta,
                                     operators=self.operators if watch or (training and judged) else None, watch=watch,
                                     probe_recovery=probe_recovery, before_plan=before_plan)
        except (PolicyOutputError, EpisodeDiscarded, ExpertUnavailable) as exc:
            log.warning("%s: episode (seed %d) discarded: %s", self.actor_id, seed, exc)
            reason = {PolicyOutputError: "policy_output", ExpertUnavailable: "expert_unavailable"}.get(type(exc))
            DISCARDED.labels(self.actor_id, reason or exc.reason).inc()
            BUSY_SECONDS.labels(self.actor_id).inc(time.perf_counter() - start)
            return None, version
        for agent, traj in trajs.items():
            if traj.expert_unavailable:
                step, why = traj.expert_unavailable[0]
                log.warning("%s: the expert could not plan at %d step(s) of episode %d (%s), first at step %d: %s",
                            self.actor_id, len(traj.expert_unavailable), seed, agent, step, why)
                EXPERT_UNAVAILABLE.labels(self.actor_id).inc(len(traj.expert_unavailable))
        steps = len(next(iter(trajs.values())).states)
        ENV_STEPS.labels(self.actor_id).inc(steps * len(trajs))
        EPISODE_LENGTH.labels(*self.labels).set(steps)
        if use_policy:
            lag = max(0, self.subscriber.latest_announced - self.version)  # the version acting at its end
            EPISODE_POLICY_LAG.labels(self.actor_id).observe(lag)
            self.episode_lags.append(lag)
        BUSY_SECONDS.labels(self.actor_id).inc(time.perf_counter() - start)
        return trajs, version

    def _write(self, traj: Trajectory, segment: Segment, version: int) -> str | None:
        """Write one segment as an episode of its table and class through the outbox, which records
        it in the audit file once Redis acknowledged it. A segment that does not make a valid episode
        (e.g. a label with NaN) is skipped with a metric and a log line."""
        try:
            episode = to_episode(traj, segment, embodiment=self.embodiment, policy_version=version,
                                 actor_id=self.actor_id, version_changes=self.scene.version_changes)
            episode.validate()
        except (ValueError, InvalidEpisodeError) as exc:
            log.warning("%s: %s segment of %d steps skipped: %s", self.actor_id, segment.cls, len(segment.steps), exc)
            SKIPPED_SEGMENTS.labels(self.actor_id, "invalid").inc()
            return None
        return self.outbox.put(segment.table, episode, priority=1.0)

    def collect_demos(self, count: int, seeds: list[int] | None = None, max_steps: int | None = None) -> int:
        """Write ``count`` expert demonstrations (one episode per robot) to ``pretrain``, on ``seeds``
        when given (else the actor's next seeds), each cut to its first ``max_steps`` steps when given
        (an expert budget that ends mid-episode); returns how many succeeded."""
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps {max_steps} must be >= 1 (None: whole demonstrations)")
        successes = 0
        for i in range(count):
            trajs, _ = self._episode(use_policy=False, frame_every=self.settings.actors.demo_frame_every,
                                     seed=None if seeds is None else seeds[i])
            if trajs is None:  # the expert could not plan it: discarded
                continue
            for traj in trajs.values():
                length = min(len(traj.states), max_steps or len(traj.states))
                self._write(traj, Segment.whole("pretrain", DEMO, length), version=0)
            successes += all(traj.success for traj in trajs.values())
        return successes

    def _fixed_seed(self, base: int | None, per_round: int, index: int) -> int | None:
        """Env seed of episode ``index`` of a round from a fixed-seed base (actors.eval_seed_base or
        dagger_seed_base): the same in every round; None without a base (the actor's next seed)."""
        return None if base is None else base + self.actor_index * per_round + index

    def dagger_episodes(self, round_index: int, seeds: list[int | None], write: bool = True) -> dict[str, Any]:
        """DAgger episodes of mode ``actors.dagger.mode`` on ``seeds`` (None: the actor's next seed),
        their segments written by correction class unless ``write`` is False (a probe of the
        intervention rate). An episode succeeds when every robot of the scene succeeded.

        Returns:
            episodes, successes, discarded, expert_steps (steps the expert or operator drove),
            steps, intervention_rate, expert_label_rows (the expert effort of what was written:
            ``expert_effort``), takeovers (count, lengths, endings, subgoals), skipped (takeovers not trained
            on: capped, or the expert could no longer plan), unflagged_failures (failed episodes in which
            nobody took over: failures the gate did not see), failures_after_takeover (failed episodes
            in which someone did, counted by how their last takeover ended: handed back too early on
            ``agreement``, or still driving at ``cap`` / ``episode_end``).
        """
        dcfg = self.settings.actors.dagger
        beta = self.mode.beta(dcfg.beta_start, dcfg.beta_decay, round_index)
        totals = {"episodes": 0, "successes": 0, "discarded": 0, "expert_steps": 0, "steps": 0,
                  "expert_label_rows": 0, "written": 0, "unflagged_failures": 0}
        takeovers: list[Takeover] = []
        failed_after: Counter[str] = Counter()
        for seed in seeds:
            trajs, version = self._episode(use_policy=True, frame_every=self.settings.actors.execute_steps, seed=seed,
                                           beta=beta, training=True)
            totals["episodes"] += 1
            if trajs is None:
                totals["discarded"] += 1
                continue
            for traj in trajs.values():
                totals["expert_steps"] += sum(traj.intervened)
                totals["steps"] += len(traj.intervened)
                takeovers += traj.takeovers
                if write:
                    written = self._write_trajectory(traj, version)
                    totals["written"] += len(written)
                    totals["expert_label_rows"] += expert_effort(traj, written)
            success = all(traj.success for traj in trajs.values())
            totals["successes"] += success
            episode_takeovers = [t for traj in trajs.values() for t in traj.takeovers]
            if not success and episode_takeovers:
                failed_after[max(episode_takeovers, key=lambda t: t.start).ended_by] += 1
            totals["unflagged_failures"] += not success and not episode_takeovers
        skipped = sum(t.skipped for t in takeovers)
        for ending, count in Counter(t.ended_by for t in takeovers if t.skipped).items():
            SKIPPED_SEGMENTS.labels(self.actor_id, "takeover_cap" if ending == "cap" else ending).inc(count)
        rate = totals["expert_steps"] / totals["steps"] if totals["steps"] else 0.0
        INTERVENTION_RATE.labels(*self.labels).set(rate)
        if totals["expert_steps"]:
            operator_minutes = totals["expert_steps"] * self.env.control_dt / 60.0
            RETURN_ON_HUMAN_EFFORT.labels(*self.labels).set(totals["successes"] / operator_minutes)
        for takeover in takeovers:
            TAKEOVER_STEPS.labels(*self.labels, takeover.ended_by).observe(takeover.length)
        return {**totals, "mode": dcfg.mode, "beta": beta, "intervention_rate": rate, "skipped": skipped,
                "takeovers": len(takeovers), "takeover_steps": [t.length for t in takeovers],
                "takeover_endings": dict(Counter(t.ended_by for t in takeovers)),
                "takeover_subgoals": dict(Counter(t.subgoal for t in takeovers)),
                "failures_after_takeover": dict(failed_after)}

    def evaluate(self, seeds: list[int | None], watch: bool = False, probe_recovery: bool = False) -> dict[str, Any]:
        """Policy-only episodes on ``seeds``, written to ``evaluations``; ``watch``: the operators judge
        every plan without taking over, ``probe_recovery``: and record whether the state of the first
        firing was still recoverable. A discarded episode counts as a failure.

        Returns:
            episodes, successes (one bool per seed), discarded, and with ``watch`` per episode the
            steps at which the gate fired and whether the first was still recoverable.
        """
        results: dict[str, Any] = {"episodes": len(seeds), "successes": [], "discarded": 0, "gate": []}
        for seed in seeds:
            trajs, version = self._episode(use_policy=True, frame_every=self.settings.actors.execute_steps, seed=seed,
                                           watch=watch, probe_recovery=probe_recovery)
            if trajs is None:
                results["discarded"] += 1
                results["successes"].append(False)
                continue
            for traj in trajs.values():
                # An operator may take over an evaluation on a robot too: its steps are corrections.
                segments = self.mode.segments(traj, self.settings.actors.dagger) \
                    if traj.takeovers else [Segment.whole(EVALUATIONS, robot_class(traj.success), len(traj.states))]
                for segment in segments:
                    self._write(traj, segment if segment.table == "corrections" else replace(segment, table=EVALUATIONS),
                                version)
                if watch:
                    results["gate"].append(_gate_record(traj))
            results["successes"].append(all(traj.success for traj in trajs.values()))
        rate = sum(results["successes"]) / len(seeds) if seeds else 0.0
        SUCCESS_RATE.labels(*self.labels).set(rate)
        return {**results, "success_rate": rate}

    def run_round(self, round_index: int, min_version: int = 0, timeout_s: float = 120.0) -> dict[str, Any]:
        """This round's DAgger episodes (``dagger_episodes``), then policy-only evaluation episodes
        (``evaluate``), on fixed seeds when actors.dagger_seed_base / eval_seed_base are set.

        Waits first until a weights version >= ``min_version`` is applied (a restarted actor
        pulls it anew).

        Raises:
            TimeoutError: that version did not arrive within ``timeout_s``.
        """
        if not self.wait_for_version(min_version, timeout_s):
            raise TimeoutError(f"{self.actor_id}: weights version {min_version} not applied within {timeout_s:.0f} s")
        start = time.perf_counter()
        acfg = self.settings.actors
        n_dagger, n_eval = acfg.dagger_episodes_per_round, acfg.eval_episodes_per_round
        dagger = self.dagger_episodes(round_index, [self._fixed_seed(acfg.dagger_seed_base, n_dagger, i)
                                                    for i in range(n_dagger)])
        evaluation = self.evaluate([self._fixed_seed(acfg.eval_seed_base, n_eval, i) for i in range(n_eval)])
        versions = sorted({self.version})
        lags, self.episode_lags = self.episode_lags, []
        return {"actor": self.actor_id, "round": round_index, "mode": dagger["mode"], "beta": dagger["beta"],
                "episode_lags": lags, "episodes": dagger["episodes"] + n_eval, "busy_s": time.perf_counter() - start,
                "eval_episodes": n_eval, "eval_successes": sum(evaluation["successes"]),
                "success_rate": evaluation["success_rate"], "intervention_rate": dagger["intervention_rate"],
                "discarded": dagger["discarded"] + evaluation["discarded"], "versions_used": versions,
                "expert_label_rows": dagger["expert_label_rows"], "takeovers": dagger["takeovers"],
                "takeover_endings": dagger["takeover_endings"], "skipped": dagger["skipped"],
                "expert_steps": dagger["expert_steps"], "steps": dagger["steps"]}

    def collect(self, episodes: int, pause_s: float = 5.0) -> dict[str, Any]:
        """Asynchronous mode (run.mode=async): ``episodes`` DAgger episodes on the actor's next seeds
        with the newest weights received, called again and again while the learner trains.

        An actor whose policy lags more than ``actors.max_policy_lag`` versions behind the newest
        promoted (every published one unless ``weights.promotion=evaluated``), because its weight
        stream is cut or slow, waits up to ``pause_s`` for newer weights and, if none come, returns
        ``paused`` without rolling out, and says why in its log and the ``fleetloop_actor_paused``
        gauge.

        Returns:
            ``dagger_episodes``' figures, plus ``paused``, ``version`` (the weights used),
            ``episode_lags`` (each policy episode's lag at its end) and ``busy_s``.
        """
        start = time.perf_counter()
        self._refresh_weights()
        newest, limit = self.subscriber.latest_announced, self.settings.actors.max_policy_lag
        if self.version == 0 or newest - self.version > limit:  # no learned weights yet, or too old
            self.wait_for_version(max(1, newest - limit), pause_s)
        if self.version == 0:
            return {"paused": True, "version": 0, "lag": newest, "episodes": 0, "episode_lags": [], "busy_s": 0.0}
        lag = self.subscriber.latest_announced - self.version
        if lag > limit:
            if not self.paused:
                log.warning("%s paused: its policy (version %d) lags %d versions behind the newest promoted, more "
                            "than actors.max_policy_lag=%d; waiting for the weight stream", self.actor_id,
                            self.version, lag, limit)
            self.paused = True
            PAUSED.labels(self.actor_id).set(1)
            return {"paused": True, "version": self.version, "lag": lag, "episodes": 0, "episode_lags": [],
                    "busy_s": 0.0}
        self.paused = False
        PAUSED.labels(self.actor_id).set(0)
        round_index = self.settings.round_of(self.version)
        result = self.dagger_episodes(round_index, [None] * episodes)
        lags, self.episode_lags = self.episode_lags, []
        return {**result, "paused": False, "version": self.version, "episode_lags": lags,
                "busy_s": round(time.perf_counter() - start, 3)}

    def _write_trajectory(self, traj: Trajectory, version: int) -> list[Segment]:
        """Write a DAgger trajectory by its mode's segments; the segments written."""
        written = []
        for segment in self.mode.segments(traj, self.settings.actors.dagger):
            if self._write(traj, segment, version) is not None:
                written.append(segment)
        return written

    def status(self) -> dict[str, Any]:
        return {"actor": self.actor_id, "embodiment": self.embodiment, "versions_applied": list(self.versions_applied),
                "restarted": _restarted_by_ray(),
                "written": read_audit(self.audit_path),
                "metrics": f"http://{self.settings.metrics.host}:{self.metrics_port}/metrics"}

    def close(self) -> None:
        self.subscriber.stop()
        self._metrics_server.shutdown()
        if self.bridge is not None:
            self.bridge.close()
        self.env.close()
        self.replay.close()


class EnvActorRole(EnvActor):
    """The loop's env actor (a Ray actor): builds its collaborators from addresses, since a Ray
    actor's arguments must pickle. It follows the versions promoted for the fleet.

    Args:
        actor_index, settings, audit_dir: as for ``EnvActor``.
        redis_url: the replay server.
        weights_target: ``host:port`` of the learner's WeightService.
        bridge_target: actors.robot=bridge: ``host:port`` of the robot bridge (default: the
            ``bridge`` section's host and port).
    """

    def __init__(self, actor_index: int, settings: ActorSettings, redis_url: str, weights_target: str,
                 audit_dir: str, bridge_target: str | None = None):
        tls, token = settings.weights.credentials()
        robot = None if settings.actors.robot == "sim" else RobotClient.from_config(settings.bridge, bridge_target)
        super().__init__(actor_index, settings, ReplayClient(redis_url, **settings.replay.client_options()),
                         WeightSubscriber(weights_target, actor_id(actor_index), tls=tls, token=token,
                                          promoted_only=True),
                         audit_dir, robot=robot)


def _restarted_by_ray() -> bool:
    """True in a Ray actor that Ray restarted after a crash."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed


def read_audit(path: Path) -> dict[str, list[str]]:
    """Table -> ids of the episodes an actor had acknowledged, from its audit file.

    A line torn by a crash mid-write is ignored (its episode's write was not acknowledged to
    the audit, though Redis may hold it).
    """
    written: dict[str, list[str]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            written.setdefault(entry["table"], []).append(entry["episode_id"])
    return written


def _gate_record(traj: Trajectory) -> dict[str, Any]:
    """A watched evaluation: the steps the gate fired at, and whether the expert could still finish
    from the first of them (None: not probed)."""
    fired = [plan for plan in traj.plans if plan.verdict is not None and plan.verdict.fire]
    return {"success": traj.success, "fired": [plan.step for plan in fired],
            "recoverable_at_first_fire": fired[0].recoverable if fired else None}
