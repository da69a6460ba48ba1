"""The Learner: owns the model, the DeepSpeed engine, the data pipeline and the publisher.

One optimizer step reads: take a prefetched batch, forward (flow-matching loss), backward,
step; every ``publish_every`` steps publish the weights as a new version and every
``checkpoint_every`` steps save a resumable checkpoint.

A learner is one data-parallel rank: every rank samples its own micro-batches from the
replay and DeepSpeed averages the gradients; rank 0 alone serves the WeightService and
/metrics. Publishing and checkpointing are collective (ZeRO-3 gathers the shards for them).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import prometheus_client as prom
import torch

from fleetloop.learner.data import Prefetcher
from fleetloop.learner.engine import build_engine, build_model, deepspeed_config, gathered
from fleetloop.learner.publisher import WeightPublisher
from fleetloop.learner.state_distance import StateDistanceWeights
from fleetloop.protos.security import address
from fleetloop.replay import EmptyReplayError, ReplayClient, WindowSampler
from fleetloop.replay.stats import merge_bounds
from fleetloop.system import DualSystemPolicy, Processor, embodiment_id, flow_draws, model_preset
from fleetloop.system.checkpoint import load_policy, save_tensors, tensors_digest
from fleetloop.system.normalization import collapse_narrow_ranges, varies_across_episodes

if TYPE_CHECKING:
    from fleetloop.learner.settings import LearnerSettings

log = logging.getLogger(__name__)

STEPS = prom.Counter("fleetloop_learner_steps_total", "Optimizer steps taken by the learner.")
LOSS = prom.Gauge("fleetloop_learner_loss", "Flow-matching loss of the latest optimizer step.")
GRAD_NORM = prom.Gauge("fleetloop_learner_grad_norm", "Global gradient norm of the latest step (before clipping).")
LR = prom.Gauge("fleetloop_learner_lr", "Learning rate of the latest step.")
STEP_SECONDS = prom.Histogram("fleetloop_learner_step_seconds", "Wall time of one optimizer step (forward, backward, step).",
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
BATCH_WAIT = prom.Histogram("fleetloop_learner_batch_wait_seconds", "Time the optimizer waited for a prefetched batch.",
                            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
SAMPLES_PER_S = prom.Gauge("fleetloop_learner_samples_per_second", "Training windows consumed per second (last step).")
SAMPLE_LAG = prom.Gauge("fleetloop_learner_sample_lag_versions",
                        "Mean weight-version lag of the online (non-pretrain) windows in the latest batch.")
VERSION = prom.Gauge("fleetloop_learner_weights_version", "Latest weight version the learner published.")
CHECKPOINT_SECONDS = prom.Histogram("fleetloop_learner_checkpoint_seconds", "Wall time of saving one resumable checkpoint.",
                                    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
BUSY_SECONDS = prom.Counter("fleetloop_learner_busy_seconds_total",
                            "Seconds spent in optimizer steps (forward, backward, step; its rate: the busy fraction).")
LIMITER_WAIT_SECONDS = prom.Counter("fleetloop_learner_limiter_wait_seconds_total",
                                    "Seconds the learner's sampling waited on the replay's rate limiters for the "
                                    "fleet to insert more (run.mode=async pacing).")
CHECKPOINT_STEP = prom.Gauge("fleetloop_learner_checkpoint_step", "Optimizer step of the newest saved checkpoint.")

LIMITER_POLL_S = 1.0
"""How long one sample call waits on a rate limiter before the prefetcher counts the wait and asks again."""
PUBLISHED_RECORD = "published_version.json"
"""In the checkpoint folder: the newest published version, so a resumed learner never reuses a number."""


class ResumeError(RuntimeError):
    """There is no checkpoint to resume from; the message names the folder."""


class LearnerInitError(ValueError):
    """``learner.init_from`` cannot be loaded; the message says what to give instead."""


class Learner:
    """Trains the dual-system policy from the replay and publishes versioned weights.

    Args:
        settings: the configuration sections it reads (``LearnerSettings.of(cfg)``).
        run_dir: the run directory (checkpoints go to ``run_dir/checkpoints``).
        replay: client of the replay it samples from; a built learner owns it (``close`` closes
            it), a failed build leaves it to the caller. ``RestartableLearner`` builds it from an address.
        resume: continue from the newest checkpoint in ``run_dir/checkpoints``: step,
            optimizer and schedule, data-sampler state, and weight version (never going back).
    """

    def __init__(self, settings: LearnerSettings, run_dir: str, replay: ReplayClient, resume: bool = False):
        self.settings = settings
        lcfg = settings.learner
        torch.set_num_threads(lcfg.torch_threads)
        torch.manual_seed(settings.seed)
        self.checkpoint_dir = Path(run_dir) / "checkpoints"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.model_cfg = model_preset(settings.model.preset)
        ds_config = deepspeed_config(lcfg.batch_size, lcfg.grad_clip, lcfg.zero_stage, lcfg.grad_accum_steps)
        model = build_model(lambda: DualSystemPolicy(self.model_cfg), ds_config)
        if lcfg.init_from and not resume:
            with gathered(model, lcfg.zero_stage):
                _load_initial_weights(model, lcfg.init_from)
        model.set_trainable(tune_llm=lcfg.tune_llm, tune_visual=lcfg.tune_visual, tune_projector=lcfg.tune_projector,
                            tune_diffusion_model=lcfg.tune_diffusion_model)
        model.set_gradient_checkpointing(lcfg.gradient_checkpointing)
        self.processor = Processor(self.model_cfg, tokenizer_dir=settings.model.tokenizer_dir)
        self.engine = build_engine(model, ds_config, lr=lcfg.lr, weight_decay=lcfg.weight_decay,
                                   warmup_steps=lcfg.warmup_steps,
                                   total_steps=lcfg.lr_restart_every or settings.total_steps,
                                   min_lr_ratio=lcfg.min_lr_ratio, restart_every=lcfg.lr_restart_every)
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.replay = replay
        self.sampler = WindowSampler(self.replay, dict(settings.replay.mixture),
                                     horizon=self.model_cfg.action_head.action_horizon,
                                     seed=[settings.seed, self.rank], refresh_s=settings.replay.refresh_s,
                                     rate_limit_timeout_s=LIMITER_POLL_S)
        distance = lcfg.distance_weights
        self.distance_weights = (StateDistanceWeights(self.replay, distance.classes, distance.reference,
                                                      distance.strength, distance.max_reference_states)
                                 if distance.classes else None)
        self.prefetch: Prefetcher | None = None
        self.step = 0
        self.version = 0
        self.busy_s = 0.0
        """Seconds of optimizer steps in this process (the busy time)."""
        self._limited_s = 0.0
        self.published_step = -1
        self.checkpoint_step = -1
        self.resumed_from: int | None = None
        self._micro_batches = 0
        self.published_digests: dict[int, str] = {}
        if resume:
            self._load_checkpoint()
        self._data_state = self._current_data_state()
        self.publisher: WeightPublisher | None = None
        self._metrics_server = None
        if self.rank == 0:
            weights, metrics = settings.weights, settings.metrics
            tls, token = weights.credentials()
            self.publisher = WeightPublisher(host=weights.host, port=weights.port, chunk_bytes=weights.chunk_bytes,
                                             keep_versions=weights.keep_versions, tls=tls, token=token,
                                             auto_promote=weights.promotion == "every")
            self.weights_port = self.publisher.start()
            self._metrics_server, _ = prom.start_http_server(metrics.learner_port, addr=metrics.host)
            self.metrics_port = self._metrics_server.server_port
            VERSION.set(self.version)

    @property
    def model(self) -> DualSystemPolicy:
        return self.engine.module

    def endpoints(self) -> dict[str, str]:
        """The WeightService and /metrics addresses (rank 0 serves both)."""
        if self.rank != 0:
            return {}
        return {
            "weights": (self.settings.weights.advertise_address
                        or address(self.settings.weights.host, self.weights_port)),
            "metrics": f"http://{self.settings.metrics.host}:{self.metrics_port}/metrics",
        }

    def status(self) -> dict[str, Any]:
        return {"step": self.step, "optimizer_steps": self.engine.global_steps, "version": self.version,
                "rank": self.rank, "world_size": self.world_size, "busy_s": round(self.busy_s, 3),
                "limiter_wait_s": round(self._limited_s, 3),
                "resumed_from_step": self.resumed_from, "checkpoint_step": self.checkpoint_step, **self.endpoints()}

    def fit_normalization(self, tables: str | Sequence[str], embodiment: str) -> None:
        """Set the embodiment's min/max statistics from every step and label of ``tables`` (those
        without the embodiment are skipped). Dims that move less than ``learner.min_stat_range``
        count as constant unless they differ from episode to episode (``varies_across_episodes``).

        Raises:
            EmptyReplayError: no table holds an episode of ``embodiment``.
        """
        tables = [tables] if isinstance(tables, str) else list(tables)
        stats = None
        for table in tables:
            try:
                stats = merge_bounds(stats, self.replay.compute_stats(table, embodiment))
            except EmptyReplayError:
                continue
        if stats is None:
            raise EmptyReplayError(f"no episode of embodiment {embodiment!r} in tables {tables}")
        bounds, min_range = {}, self.settings.learner.min_stat_range
        for kind in ("state", "action"):
            keep = varies_across_episodes(stats[f"{kind}_mean_min"], stats[f"{kind}_mean_max"],
                                          stats[f"{kind}_within_max"], min_range)
            bounds[f"{kind}_min"], bounds[f"{kind}_max"] = collapse_narrow_ranges(
                stats[f"{kind}_min"], stats[f"{kind}_max"], min_range, keep)
        self.model.set_normalization(embodiment_id(embodiment), **bounds)

    def fit_mixture_normalization(self) -> list[str]:
        """``fit_normalization`` of every embodiment stored in the mixture's tables (weight > 0), on
        all of those tables: every labelled step the learner trains on. Returns the embodiments.

        Raises:
            EmptyReplayError: those tables hold no episode; the message says how to fill them.
        """
        tables = [table for table, weight in self.sampler.mixture.items() if weight > 0]
        stats = self.replay.table_stats(detailed=True)
        embodiments = sorted({e for table in tables for e in stats.get(table, {}).get("embodiments", {})})
        if not embodiments:
            raise EmptyReplayError(f"replay tables {tables} (replay.mixture) are empty: ingest a dataset first "
                                   "(fleetloop ingest DATASET --embodiment TAG) or let `fleetloop up` seed pretrain")
        for embodiment in embodiments:
            self.fit_normalization(tables, embodiment)
        return embodiments

    def set_mixture(self, mixture: dict[str, float]) -> None:
        """Reweight ``replay.mixture``'s tables (``WindowSampler.set_mixture``); batches already
        prefetched keep the weights they were drawn with. ``learner.distance_weights`` rereads its
        reference states (a new round may have added demonstrations).

        Raises:
            ValueError: a table outside ``replay.mixture``, or invalid weights.
        """
        self.sampler.set_mixture(mixture)
        if self.distance_weights:
            self.distance_weights.refresh()

    # ---- data ---------------------------------------------------------------------------

    def _current_data_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.get_state(), "micro_batches": self._micro_batches}

    def _next_item(self) -> tuple[dict[str, torch.Tensor], list[dict], dict[str, Any]]:
        """Sample and collate one micro-batch (prefetch thread); also returns the data state after it.

        Samples are numbered globally (micro-batch m of rank r holds ids (m * world + r) * b + i)
        and their flow-matching draws follow that number, so 2 ranks x b see exactly what
        1 rank x 2b sees.
        """
        windows = self.sampler.sample(self.settings.learner.batch_size)
        weights = self.settings.learner.class_weights
        factors = self.distance_weights.factors(windows) if self.distance_weights else [1.0] * len(windows)
        for window, factor in zip(windows, factors):
            window["embodiment_id"] = embodiment_id(window["embodiment"])
            window["weight"] = weights.get(window["source"], 1.0) * factor
            if self.settings.learner.loss_on_padded_actions:
                del window["action_is_pad"]
        batch = self.processor.collate(windows)
        first = (self._micro_batches * self.world_size + self.rank) * len(windows)
        batch.update(flow_draws(self.model_cfg.action_head, range(first, first + len(windows)), self.settings.seed))
        self._micro_batches += 1
        return batch, windows, self._current_data_state()

    # ---- training -----------------------------------------------------------------------

    def train(self, steps: int, return_after_s: float | None = None) -> dict[str, Any]:
        """Take ``steps`` optimizer steps, or fewer when ``return_after_s`` seconds have passed (checked
        between steps: a learner paced by the rate limiters comes back to its driver); returns the
        mean loss (over all ranks) and where the learner stands."""
        if self.prefetch is None:
            self.prefetch = Prefetcher(self._next_item, self.settings.learner.prefetch_batches)
        self.engine.train()
        losses = []
        called = time.perf_counter()
        for _ in range(steps):
            if return_after_s is not None and self.any_rank(time.perf_counter() - called >= return_after_s):
                break
            # One optimizer step: grad_accum_steps micro-batches; DeepSpeed steps at the boundary.
            step_start, waited, micro_losses, windows = time.perf_counter(), 0.0, [], []
            for _ in range(self.settings.learner.grad_accum_steps):
                wait_start = time.perf_counter()
                batch, micro_windows, self._data_state = self.prefetch.next()
                wait = time.perf_counter() - wait_start
                waited += wait
                BATCH_WAIT.observe(wait)
                if self.world_size > 1:  # ranks' windows may hold different numbers of padded steps and weights
                    counted = batch["action_mask"].float() * batch["sample_weight"][:, None, None]
                    batch["action_mask_count"] = torch.tensor(self._mean_over_ranks(counted.sum()))

                loss = self.engine(batch)["loss"]
                self.engine.backward(loss)
                self.engine.step()
                micro_losses.append(loss.detach())
                windows += micro_windows
            self.step += 1

            elapsed = time.perf_counter() - step_start - waited
            losses.append(self._mean_over_ranks(torch.stack(micro_losses).mean()))
            self.busy_s += elapsed
            BUSY_SECONDS.inc(elapsed)
            LIMITER_WAIT_SECONDS.inc(self.prefetch.limited_s - self._limited_s)
            self._limited_s = self.prefetch.limited_s
            STEPS.inc()
            LOSS.set(losses[-1])
            STEP_SECONDS.observe(elapsed)
            SAMPLES_PER_S.set(len(windows) * self.world_size / max(elapsed, 1e-9))
            LR.set(self.engine.get_lr()[0])
            grad_norm = self.engine.get_global_grad_norm()
            if grad_norm is not None:
                GRAD_NORM.set(float(grad_norm))
            online = [self.version - w["policy_version"] for w in windows if w["table"] != "pretrain"]
            if online:
                SAMPLE_LAG.set(float(np.mean(online)))
            if self.step % self.settings.learner.publish_every == 0:
                self.publish()
            if self.settings.learner.checkpoint_every and self.step % self.settings.learner.checkpoint_every == 0:
                self.save_checkpoint()
        return {"step": self.step, "loss": float(np.mean(losses)) if losses else float("nan"),
                "losses": [float(x) for x in losses], "version": self.version}

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (a collective)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor(int(flag))
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value)

    def _mean_over_ranks(self, value: torch.Tensor) -> float:
        if self.world_size > 1:
            value = value.clone()
            torch.distributed.all_reduce(value)
            value /= self.world_size
        return float(value)

    def _full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Every tensor of the model on rank 0 (None elsewhere); ZeRO-3 gathers the shards (collective)."""
        if self.settings.learner.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
            return state if self.rank == 0 else None
        return self.model.state_dict() if self.rank == 0 else None

    def publish(self) -> int:
        """Publish the current weights (normalisation statistics included) as the next version.

        Every rank calls it (ZeRO-3 gathers); rank 0 serves the version. Publishing twice at
        the same step is a no-op that returns the version already out.
        """
        if self.published_step == self.step:
            return self.version
        state = self._full_state_dict()
        self.published_step = self.step
        self.version += 1
        if self.publisher is not None:
            self.publisher.publish(state, version=self.version)
            self.published_digests[self.version] = tensors_digest(state)
            _write_json_atomic(self.checkpoint_dir / PUBLISHED_RECORD, {"version": self.version, "step": self.step,
                                                                         "digest": self.published_digests[self.version]})
            VERSION.set(self.version)
        return self.version

    def promote(self, version: int) -> bool:
        """Let the fleet run ``version`` (``WeightPublisher.promote``; rank 0, True elsewhere)."""
        return self.publisher.promote(version) if self.publisher is not None else True

    def hold(self, version: int) -> bool:
        """Keep ``version`` and every newer one pullable while it is evaluated (``WeightPublisher.hold``; rank 0)."""
        return self.publisher.hold(version) if self.publisher is not None else True

    def release(self, version: int) -> None:
        if self.publisher is not None:
            self.publisher.release(version)

    # ---- checkpoints --------------------------------------------------------------------

    def published_digest(self, version: int) -> str | None:
        """``tensors_digest`` of the weights published as ``version`` by this process (None if not)."""
        return self.published_digests.get(version)

    def save_checkpoint(self) -> str | None:
        """Resumable DeepSpeed checkpoint plus a consolidated safetensors policy file (collective).

        The client state carries the step, the weight version and every rank's data-sampler
        state; the newest ``keep_checkpoints`` are kept. Returns the policy file's path (rank 0).
        """
        tag = f"step-{self.step:07d}"
        path = self.checkpoint_dir / f"policy-{tag}.safetensors"
        if self.checkpoint_step == self.step:
            return str(path) if self.rank == 0 else None
        start = time.perf_counter()
        data_states: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(data_states, self._data_state)
        self.engine.save_checkpoint(str(self.checkpoint_dir / "deepspeed"), tag=tag,
                                    client_state={"step": self.step, "weights_version": self.version,
                                                  "world_size": self.world_size, "data_states": data_states})
        state = self._full_state_dict()
        self.checkpoint_step = self.step
        if self.rank != 0:
            return None
        save_tensors(state, self.model_cfg, path)
        self._prune_checkpoints()
        CHECKPOINT_SECONDS.observe(time.perf_counter() - start)
        CHECKPOINT_STEP.set(self.step)
        log.info("checkpoint %s saved in %.1f s", tag, time.perf_counter() - start)
        return str(path)

    def _prune_checkpoints(self) -> None:
        tags = sorted(p.name for p in (self.checkpoint_dir / "deepspeed").glob("step-*") if p.is_dir())
        for tag in tags[: -self.settings.learner.keep_checkpoints]:
            shutil.rmtree(self.checkpoint_dir / "deepspeed" / tag, ignore_errors=True)
            (self.checkpoint_dir / f"policy-{tag}.safetensors").unlink(missing_ok=True)

    def _load_checkpoint(self) -> None:
        folder = self.checkpoint_dir / "deepspeed"
        if not has_checkpoint(self.checkpoint_dir):
            raise ResumeError(f"--resume: no checkpoint in {folder} (nothing saved yet: start without --resume)")
        load_path, client = self.engine.load_checkpoint(str(folder))
        if load_path is None:
            raise ResumeError(f"--resume: the checkpoint in {folder} could not be loaded")
        self.step = self.checkpoint_step = int(client["step"])
        path = self.checkpoint_dir / PUBLISHED_RECORD
        record = json.loads(path.read_text()) if path.is_file() else {"version": 0}
        published = record["version"]
        if record.get("digest"):  # what actors may still run: still checkable after a restart
            self.published_digests[published] = record["digest"]
        # Versions published after the checkpoint are gone with the crash, but their numbers stay used;
        # the restored weights go out as the next version at the first publish.
        self.version = max(int(client["weights_version"]), int(published))
        states = client["data_states"]
        if self.rank < len(states):
            self.sampler.set_state(states[self.rank]["sampler"])
            self._micro_batches = int(states[self.rank]["micro_batches"])
        else:  # more ranks than when saved: a fresh stream, after every number the saved ranks used
            self._micro_batches = max(int(s["micro_batches"]) for s in states)
        self.resumed_from = self.step
        log.info("resumed from %s: step %d, weights version %d", load_path, self.step, self.version)

    def applied_versions(self) -> dict[str, int]:
        return self.publisher.applied_versions() if self.publisher else {}

    def close(self) -> None:
        if self.prefetch is not None:
            self.prefetch.close()
        if self.publisher is not None:
            self.publisher.stop(grace=1.0)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        self.replay.close()


def has_checkpoint(checkpoint_dir: Path) -> bool:
    """Whether ``checkpoint_dir`` holds a resumable DeepSpeed checkpoint (its ``latest`` tag is written last)."""
    return (checkpoint_dir / "deepspeed" / "latest").is_file()


class RestartableLearner(Learner):
    """The loop's learner actor: when Ray restarts it after a crash (``learner.max_restarts``), it
    resumes from the newest checkpoint in the run directory instead of starting over, so its step,
    optimizer, data-sampler state and weight version carry on (versions never go back)."""

    def __init__(self, settings: LearnerSettings, run_dir: str, redis_url: str, resume: bool = False):
        """As ``Learner``, with ``redis_url`` the replay server (a Ray actor's arguments must pickle)."""
        import ray

        self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        saved = has_checkpoint(Path(run_dir) / "checkpoints")
        if self.restarted:
            log.warning("the learner was restarted after a crash: %s", "resuming from its newest checkpoint"
                        if saved else "no checkpoint yet, starting afresh")
        super().__init__(settings, run_dir, ReplayClient(redis_url, **settings.replay.client_options()),
                         resume=resume or (self.restarted and saved))

    def status(self) -> dict[str, Any]:
        return {**super().status(), "restarted": self.restarted}


def _load_initial_weights(model: DualSystemPolicy, path: str) -> None:
    """Copy the weights and normalisation statistics of the policy file ``path`` into ``model``.

    Raises:
        LearnerInitError: the file is missing, not a fleetloop policy, or of another architecture.
    """
    if not Path(path).is_file():
        raise LearnerInitError(f"learner.init_from: {path} is not a file; give a policy .safetensors file "
                               "(a learner checkpoint's policy-step-*.safetensors or `fleetloop model convert-gr00t` output)")
    try:
        source = load_policy(path)
    except ValueError as exc:
        raise LearnerInitError(f"learner.init_from: {exc}") from None
    if source.config != model.config:
        raise LearnerInitError(f"learner.init_from: {path} holds a model of another architecture than model.preset; "
                               "use a checkpoint of the same preset")
    model.load_state_dict(source.state_dict(), strict=True)
    log.info("initial weights from %s", path)


def _write_json_atomic(path: Path, value: Any) -> None:
    """Write ``value`` as JSON so that a crash leaves either the old or the new file, never a torn one."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        json.dump(value, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
