"""The run directory: one folder per run holding config, logs, replay data, checkpoints, plots
and the actors' audit of acknowledged writes."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"


@dataclass(frozen=True)
class RunDir:
    """Paths of a run directory (created on demand)."""

    root: Path

    @classmethod
    def create(cls, path: str | os.PathLike | None) -> "RunDir":
        root = Path(path) if path else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        run = cls(root.resolve())
        for folder in (run.logs, run.checkpoints, run.plots, run.replay):
            folder.mkdir(parents=True, exist_ok=True)
        return run

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def audit(self) -> Path:
        """Per-actor logs of acknowledged episode writes (``<actor>.jsonl``)."""
        return self.root / "audit"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def replay(self) -> Path:
        """Data directory of the embedded Valkey server (AOF files)."""
        return self.root / "replay"

    @property
    def config_file(self) -> Path:
        """The run's validated config (``config.yaml``), written by ``write_config``."""
        return self.root / "config.yaml"

    def write_config(self, config: dict) -> Path:
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config_file


def log_to_file(log_dir: str | os.PathLike, name: str) -> None:
    """Send this process's INFO logs to ``log_dir/name.log`` (idempotent per file)."""
    path = Path(log_dir) / f"{name}.log"
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in root.handlers):
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


LOG_DIR_ENV = "FLEETLOOP_LOG_DIR"


def ray_runtime_env(log_dir: str | os.PathLike, cpu_only: bool) -> dict:
    """The Ray runtime env of a run's workers: one thread each, quiet, logging to
    ``log_dir/workers.log`` (``setup_worker_logging``); ``cpu_only``: DeepSpeed on the CPU (the
    driver's own devices say nothing of a learner's node)."""
    env_vars = {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1",
                "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
                "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore::DeprecationWarning",
                LOG_DIR_ENV: str(log_dir)}
    if cpu_only:
        env_vars["DS_ACCELERATOR"] = "cpu"
    return {"env_vars": env_vars, "worker_process_setup_hook": "fleetloop.rundir.setup_worker_logging"}


def setup_worker_logging() -> None:
    """Ray worker set-up hook: log to ``$FLEETLOOP_LOG_DIR/workers.log`` when it is set."""
    log_dir = os.environ.get(LOG_DIR_ENV)
    if log_dir:
        log_to_file(log_dir, "workers")
