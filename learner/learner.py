"""The Learner: owns the model, the DeepSpeed engine, the data pipeline and the publisher.

One optimizer step reads: take a prefetched batch, forward (flow-matching loss), backward,
step, and every ``publish_every`` steps publish the weights as a new version.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import prometheus_client as prom
import torch

from fleetloop.learner.data import Prefetcher
from fleetloop.learner.engine import build_engine
from fleetloop.learner.publisher import WeightPublisher
from fleetloop.replay import ReplayClient, WindowSampler
from fleetloop.system import DualSystemPolicy, Processor, embodiment_id, model_preset, save_policy

if TYPE_CHECKING:
    from fleetloop.config import FleetloopConfig

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


class Learner:
    """Trains the dual-system policy from the replay and publishes versioned weights.

    Args:
        cfg: the validated run configuration.
        run_dir: the run directory (checkpoints go to ``run_dir/checkpoints``).
        redis_url: the replay server.
    """

    def __init__(self, cfg: "FleetloopConfig", run_dir: str, redis_url: str):
        self.cfg = cfg
        lcfg = self.cfg.learner
        torch.set_num_threads(lcfg.torch_threads)
        torch.manual_seed(self.cfg.run.seed)
        self.checkpoint_dir = Path(run_dir) / "checkpoints"
        self.model_cfg = model_preset(self.cfg.model.preset)
        model = DualSystemPolicy(self.model_cfg)
        model.set_trainable(tune_llm=lcfg.tune_llm, tune_visual=lcfg.tune_visual, tune_projector=lcfg.tune_projector,
                            tune_diffusion_model=lcfg.tune_diffusion_model)
        model.set_gradient_checkpointing(lcfg.gradient_checkpointing)
        self.processor = Processor(self.model_cfg, tokenizer_dir=self.cfg.model.tokenizer_dir)
        self.engine = build_engine(model, lr=lcfg.lr, weight_decay=lcfg.weight_decay, batch_size=lcfg.batch_size,
                                   grad_clip=lcfg.grad_clip, zero_stage=lcfg.zero_stage,
                                   grad_accum_steps=lcfg.grad_accum_steps, warmup_steps=lcfg.warmup_steps,
                                   total_steps=cfg.total_learner_steps, min_lr_ratio=lcfg.min_lr_ratio)
        self.replay = ReplayClient(redis_url)
        self.sampler = WindowSampler(self.replay, dict(self.cfg.replay.mixture), horizon=self.model_cfg.action_head.action_horizon,
                                     seed=self.cfg.run.seed, refresh_s=self.cfg.replay.refresh_s)
        tls, token = self.cfg.weights.credentials()
        self.publisher = WeightPublisher(host=self.cfg.weights.host, port=self.cfg.weights.port,
                                         chunk_bytes=self.cfg.weights.chunk_bytes, keep_versions=self.cfg.weights.keep_versions,
                                         tls=tls, token=token)
        self.weights_port = self.publisher.start()
        self._metrics_server, _ = prom.start_http_server(self.cfg.metrics.learner_port, addr=self.cfg.metrics.host)
        self.metrics_port = self._metrics_server.server_port
        self.prefetch: Prefetcher | None = None
        self.step = 0
        self.version = 0
        self.published_step = -1

    @property
    def model(self) -> DualSystemPolicy:
        return self.engine.module

    def endpoints(self) -> dict[str, str]:
        return {
            "weights": f"{self.cfg.weights.host}:{self.weights_port}",
            "metrics": f"http://{self.cfg.metrics.host}:{self.metrics_port}/metrics",
        }

    def status(self) -> dict[str, Any]:
        return {"step": self.step, "version": self.version, **self.endpoints()}

    def fit_normalization(self, table: str, embodiment: str) -> None:
        """Set the embodiment's min/max statistics from every step of ``table``."""
        stats = self.replay.compute_stats(table, embodiment)
        self.model.set_normalization(embodiment_id(embodiment), **stats)

    def _collate(self, windows: list[dict]) -> dict[str, torch.Tensor]:
        for window in windows:
            window["embodiment_id"] = embodiment_id(window["embodiment"])
        return self.processor.collate(windows)

    def train(self, steps: int) -> dict[str, Any]:
        """Take ``steps`` optimizer steps; returns the mean loss and where the learner stands."""
        if self.prefetch is None:
            self.prefetch = Prefetcher(self.sampler.sample, self._collate, self.cfg.learner.batch_size,
                                       self.cfg.learner.prefetch_batches)
        self.engine.train()
        losses = []
        for _ in range(steps):
            # One optimizer step: grad_accum_steps micro-batches; DeepSpeed steps at the boundary.
            step_start, waited, micro_losses, windows = time.perf_counter(), 0.0, [], []
            for _ in range(self.cfg.learner.grad_accum_steps):
                wait_start = time.perf_counter()
                batch, micro_windows = self.prefetch.next()
                wait = time.perf_counter() - wait_start
                waited += wait
                BATCH_WAIT.observe(wait)

                loss = self.engine(batch)["loss"]
                self.engine.backward(loss)
                self.engine.step()
                micro_losses.append(loss.item())
                windows += micro_windows
            self.step += 1

            elapsed = time.perf_counter() - step_start - waited
            losses.append(float(np.mean(micro_losses)))
            STEPS.inc()
            LOSS.set(losses[-1])
            STEP_SECONDS.observe(elapsed)
            SAMPLES_PER_S.set(len(windows) / max(elapsed, 1e-9))
            LR.set(self.engine.get_lr()[0])
            grad_norm = self.engine.get_global_grad_norm()
            if grad_norm is not None:
                GRAD_NORM.set(float(grad_norm))
            online = [self.version - w["policy_version"] for w in windows if w["table"] != "pretrain"]
            if online:
                SAMPLE_LAG.set(float(np.mean(online)))
            if self.step % self.cfg.learner.publish_every == 0:
                self.publish()
        return {"step": self.step, "loss": float(np.mean(losses)), "version": self.version}

    def publish(self) -> int:
        """Publish the current weights (normalisation statistics included) as the next version.

        Publishing twice at the same step is a no-op that returns the version already out.
        """
        if self.published_step == self.step:
            return self.version
        self.published_step = self.step
        self.version = self.publisher.publish(self.model.state_dict(), version=self.version + 1)
        VERSION.set(self.version)
        return self.version

    def save_checkpoint(self) -> str:
        """DeepSpeed checkpoint (for resume) plus a consolidated safetensors policy file."""
        tag = f"step-{self.step:07d}"
        self.engine.save_checkpoint(str(self.checkpoint_dir / "deepspeed"), tag=tag,
                                    client_state={"step": self.step, "weights_version": self.version})
        path = self.checkpoint_dir / f"policy-{tag}.safetensors"
        save_policy(self.model, path)
        return str(path)

    def applied_versions(self) -> dict[str, int]:
        return self.publisher.applied_versions()

    def close(self) -> None:
        if self.prefetch is not None:
            self.prefetch.close()
        self.publisher.stop(grace=1.0)
        self._metrics_server.shutdown()
        self.replay.close()
