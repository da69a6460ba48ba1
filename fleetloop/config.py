"""The one typed configuration of fleetloop.

A config is a YAML preset (``fleetloop/presets/*.yaml`` or any file) plus command-line
overrides ``--set key.path=value``; it is validated as a whole, and every error names the
field path and why it is wrong. Sections follow the roles: ``run``, ``model``, ``replay``,
``learner``, ``weights``, ``bridge``, ``actors``, ``metrics``.
"""

from __future__ import annotations

import importlib.resources
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from fleetloop.limits import InputError, read_limited

PRESETS_PACKAGE = "fleetloop.presets"
DEFAULT_PRESET = "default"
MAX_CONFIG_BYTES = 1 << 20
"""Largest config file read: the presets are about 2 KB."""
MAX_SECRET_BYTES = 64 << 10
"""Largest password or token file read: secrets are short lines."""


class ConfigError(ValueError):
    """A configuration that does not validate; the message lists each bad field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _read_secret(path: str, field: str) -> str:
    """The stripped text of the secret file ``path``, at most MAX_SECRET_BYTES.

    Raises:
        ConfigError: naming ``field`` and the file: unreadable, too large, not UTF-8 or empty.
    """
    try:
        text = read_limited(Path(path), MAX_SECRET_BYTES).decode().strip()
    except InputError as exc:
        raise ConfigError(f"{field}: cannot read {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{field}: {path} is not UTF-8 text") from None
    if not text:
        raise ConfigError(f"{field}: {path} is empty")
    return text


def _check_ray_resources(resources: dict[str, float]) -> dict[str, float]:
    bad = {name: amount for name, amount in resources.items() if not (math.isfinite(amount) and amount > 0)}
    if bad:
        raise ValueError(f"amounts must be finite and > 0, got {bad}")
    return resources


RayResources = Annotated[dict[str, float], AfterValidator(_check_ray_resources)]
"""Custom Ray resources a role needs (``{name: amount}``, amounts finite and > 0)."""


DEFAULT_CLASS_WEIGHTS = {"demo": 1.0, "relabel": 1.0, "intervention": 1.0, "pre_intervention_relabel": 1.0,
                         "pre_intervention": 0.0, "robot": 1.0, "robot_failure": 0.0}
"""learner.class_weights by default (Sirius, Liu et al. 2023): corrections, demonstrations and the robot's
own steps in successful episodes in full; the policy's actions just before a takeover (what went wrong)
and its steps in failed episodes left out."""


LOOP_TABLES = ("rollouts", "corrections")
"""Tables the env actors write while the loop runs (their DAgger episodes' segments)."""


class RunSection(_Section):
    seed: int = Field(0, description="Seed for environments, sampling and model init.")
    mode: Literal["sync", "async"] = Field(
        "sync", description="`fleetloop up`'s loop. sync: rounds of train (actors wait) -> publish -> roll out "
                            "(learner waits). async: the learner trains without pause, publishing every "
                            "learner.publish_every steps, while the actors roll out without pause with the newest "
                            "weights (actors.weights_refresh); the replay's rate limiters pace them.")
    rounds: int = Field(4, ge=1, description="sync: rounds of train -> publish -> roll out -> correct; both modes: "
                                             "run.rounds x learner.steps_per_round bounds the learner's steps unless "
                                             "run.max_learner_steps says otherwise.")
    max_learner_steps: int | None = Field(None, ge=1, description="Stop once the learner has taken this many "
                                                                  "optimizer steps (None: run.rounds x "
                                                                  "learner.steps_per_round). sync: at a round's end.")
    duration_s: float | None = Field(None, gt=0, description="Stop after this many seconds of the loop (set-up and "
                                                             "seeding excluded; None: no time bound). sync: after "
                                                             "the round that crosses it.")
    target_success: float | None = Field(None, gt=0, le=1, description="Stop once the evaluator measures at least "
                                                                       "this success rate (needs evaluator.enabled).")
    ray_address: str = Field("local", min_length=1, description="`fleetloop up`'s Ray cluster: local starts one for the run; auto joins the cluster this process runs in (a KubeRay RayJob or `ray start` node); ray://host:10001 joins a remote one.")


class ModelSection(_Section):
    preset: str = Field("tiny", description="Model architecture preset: tiny (CPU) or n1-2b (GR00T-N1-2B; GPUs).")
    tokenizer_dir: str | None = Field(None, description="Local tokenizer directory (presets with a pretrained tokenizer, e.g. n1-2b).")
    num_inference_steps: int | None = Field(None, ge=1, le=64, description="K Euler steps when acting (None: the preset's K).")
    system2_every: int = Field(1, ge=1, description="Run System 2 (vision-language) every N policy calls, reusing its tokens between (System 1 runs every call).")

    @field_validator("preset")
    @classmethod
    def _check_preset(cls, preset: str) -> str:
        from fleetloop.system.presets import MODEL_PRESETS

        known = sorted(MODEL_PRESETS)
        if preset not in known:
            raise ValueError(f"unknown model preset {preset!r}; known presets: {known}")
        return preset


class ReplaySection(_Section):
    url: str | None = Field(None, description="redis:// URL; None starts the run directory's embedded Valkey.")
    mixture: dict[str, float] = Field(
        default_factory=lambda: {"pretrain": 0.5, "rollouts": 0.0, "corrections": 0.5},
        description="Sampling weight per table (renormalised over non-empty tables).",
    )
    tables: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"rollouts": {"capacity": 10_000, "sampler": "prioritized"},
                                 "corrections": {"capacity": 10_000, "sampler": "prioritized"},
                                 "evaluations": {"capacity": 10_000}},
        description="Per-table capacity (FIFO eviction), sampler (uniform|prioritized|fifo), sample_by "
                    "(window: an episode's odds times its windows, the default | episode) and samples-per-insert "
                    "rate limiter (replay/table.py TableConfig); stored in Redis, so every writer obeys it.",
    )
    appendfsync: Literal["always", "everysec", "no"] = Field("everysec", description="AOF fsync policy of the embedded server.")
    refresh_s: float = Field(1.0, gt=0, description="Seconds between sampler index refreshes.")
    password_file: str | None = Field(None, description="File holding the replay server's password (e.g. a mounted Kubernetes Secret), so it never appears in a URL, config or log; None: the URL's own, if any. Read when a role connects, so roles that never touch the replay (robot bridges) need not have it.")

    tls_ca_file: str | None = Field(None, description="rediss:// replay: PEM CA that verifies the server.")
    tls_cert_file: str | None = Field(None, description="rediss:// replay: this role's client certificate, for servers that authenticate clients.")
    tls_key_file: str | None = Field(None, description="rediss:// replay: PEM private key of tls_cert_file.")

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of ReplayClient for this section: the password and the TLS files."""
        return {"password": self.password(), "tls_ca_file": self.tls_ca_file, "tls_cert_file": self.tls_cert_file,
                "tls_key_file": self.tls_key_file}

    def password(self) -> str | None:
        """The password read from ``password_file`` (None without one).

        Raises:
            ConfigError: the file cannot be read, is too large or empty; the message names the field.
        """
        return None if self.password_file is None else _read_secret(self.password_file, "replay.password_file")

    @field_validator("mixture")
    @classmethod
    def _check_mixture(cls, mixture: dict[str, float]) -> dict[str, float]:
        from fleetloop.replay.keys import TABLES  # the replay package: import on use

        unknown = sorted(set(mixture) - set(TABLES))
        if unknown:
            raise ValueError(f"unknown table(s) {unknown}; tables are {list(TABLES)}")
        if any(w < 0 for w in mixture.values()):
            raise ValueError(f"weights must be >= 0, got {mixture}")
        if not any(w > 0 for w in mixture.values()):
            raise ValueError(f"at least one weight must be > 0, got {mixture}")
        return mixture

    @field_validator("tables")
    @classmethod
    def _check_tables(cls, tables: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from fleetloop.replay import TableConfig  # the replay package: import on use
        from fleetloop.replay.keys import TABLES

        for table, settings in tables.items():
            if table not in TABLES:
                raise ValueError(f"unknown table {table!r}; tables are {list(TABLES)}")
            try:
                TableConfig.from_dict(settings)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{table}: {exc}") from None
        return tables


def _check_classes(classes) -> None:
    """Raise ValueError naming correction classes that actors/dagger does not define."""
    from fleetloop.actors.dagger import CLASSES  # imported on use

    unknown = sorted(set(classes) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown class(es) {unknown}; classes: {list(CLASSES)}")


class DistanceWeightsSection(_Section):
    """learner.distance_weights: loss weights inside correction classes by how far each window's state
    lies from the reference tables' states (learner/state_distance.py)."""

    classes: list[str] = Field(default_factory=list, description="Correction classes whose windows are "
                                                                 "weighted (e.g. [intervention]); empty: off.")
    reference: list[str] = Field(default_factory=lambda: ["pretrain"], min_length=1,
                                 description="Tables whose states are the reference (the demonstrations).")
    strength: float = Field(1.0, ge=0, le=20, description="A window's factor is exp(-strength * d / median d) "
                                                         "over the batch's weighted windows, renormalised to "
                                                         "mean 1: 0 weighs them alike, larger favours windows "
                                                         "near the reference.")
    max_reference_states: int = Field(20000, ge=1, description="Reference states read (whole episodes, spread "
                                                              "over the tables).")

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, classes: list[str]) -> list[str]:
        _check_classes(classes)
        return classes

    @field_validator("reference")
    @classmethod
    def _known_tables(cls, tables: list[str]) -> list[str]:
        from fleetloop.replay.keys import TABLES  # the replay package: import on use

        unknown = sorted(set(tables) - set(TABLES))
        if unknown:
            raise ValueError(f"unknown table(s) {unknown}; tables are {list(TABLES)}")
        return tables


class LearnerSection(_Section):
    steps_per_round: int = Field(250, ge=1, description="Optimizer steps in each round.")
    batch_size: int = Field(32, ge=1, description="Windows per micro-batch (one rank).")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step (gradient accumulation).")
    lr: float = Field(3e-4, gt=0, description="Peak AdamW learning rate.")
    warmup_steps: int = Field(50, ge=0, description="Optimizer steps of linear learning-rate warm-up.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decay ends at lr * min_lr_ratio after the run's last step.")
    weight_decay: float = Field(1e-5, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient norm clipping.")
    min_stat_range: float = Field(0.01, ge=0, description="Normalisation: state/action dims whose min-max range in "
                                                         "the data is below this (raw units) count as constant, so "
                                                         "a joint that only jitters is not magnified to [-1, 1].")
    loss_on_padded_actions: bool = Field(False, description="Train on the actions repeated past an episode's end "
                                                          "(GR00T's padding). False leaves them out of the loss "
                                                          "(LeRobot's action_is_pad): a takeover segment ends where "
                                                          "the policy drove on, not where the robot held still.")
    class_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_CLASS_WEIGHTS),
        description="Loss weight of a training window by its episode's correction class (actors/dagger): "
                    "Sirius-style, the policy's own pre-takeover actions about 0; sources not listed (e.g. an "
                    "ingested dataset's) weigh 1. Each class's share of the loss is its share of the batch "
                    "(replay.mixture) times its weight.")
    distance_weights: DistanceWeightsSection = Field(default_factory=DistanceWeightsSection,
                                                     description="Loss weights inside correction classes by "
                                                                 "state distance from the demonstrations.")
    init_from: str | None = Field(None, description="A policy .safetensors file (e.g. a learner checkpoint's "
                                                    "policy-step-*.safetensors) whose weights and normalisation a "
                                                    "fresh learner starts from: fine-tuning, not a resume (step 0, a "
                                                    "fresh optimizer and schedule). Ignored by --resume.")
    refit_normalization: bool = Field(False, description="Refit the normalisation statistics on every table of "
                                                        "replay.mixture (labels included) before each round's "
                                                        "training, as corrections widen the states and actions "
                                                        "seen; False: fitted once, before the first step.")
    lr_restart_every: int = Field(0, ge=0, description="Warm restarts: the warm-up + cosine schedule starts again "
                                                      "every N optimizer steps (e.g. learner.steps_per_round); "
                                                      "0: one schedule over the whole run.")
    zero_stage: Literal[1, 2, 3] = Field(1, description="DeepSpeed ZeRO stage: 1 shards optimizer states, 2 also "
                                               "gradients, 3 also parameters (gathered for publish and export).")
    publish_every: int = Field(50, ge=1, description="Publish weights every N optimizer steps (and at round end).")
    checkpoint_every: int = Field(250, ge=0, description="Save a resumable checkpoint every N optimizer steps "
                                                        "(0: only at the end of a run).")
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept on disk; older ones are deleted.")
    prefetch_batches: int = Field(4, ge=1, description="Batches prepared ahead by the background sampler.")
    torch_threads: int = Field(2, ge=1, description="torch intra-op threads of the learner process.")
    tune_llm: bool = Field(True, description="Train System 2's language model (False freezes it).")
    tune_visual: bool = Field(True, description="Train the vision tower and its mlp1 projector.")
    tune_projector: bool = Field(True, description="Train backbone.linear and the embodiment-specific encoders/decoder.")
    tune_diffusion_model: bool = Field(True, description="Train the DiT of System 1.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    max_restarts: int = Field(3, ge=0, description="`fleetloop up` (and `fleetloop learner --ranks N`): times a "
                                                  "crashed learner is restarted (Ray's actor restart for one rank; "
                                                  "every rank, by the LearnerGroup, when one of several dies); it "
                                                  "resumes from its newest checkpoint "
                                                  "(the fleet keeps collecting meanwhile) and retries the "
                                                  "interrupted call; 0: a crash ends the run (`fleetloop up "
                                                  "--resume` continues it).")
    ranks: int = Field(1, ge=1, description="Data-parallel DeepSpeed ranks of the learner (`fleetloop up` and "
                                            "`fleetloop learner`): more than 1 runs them as a LearnerGroup of "
                                            "Ray Train workers (restarted together when one dies), each with one "
                                            "CPU, learner.num_gpus and learner.ray_resources; rank 0 serves the "
                                            "weights and /metrics.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs Ray gives each learner rank; 0 trains on the CPU (DeepSpeed with DS_ACCELERATOR=cpu and gloo).")
    ray_resources: RayResources = Field(default_factory=dict, description="Custom Ray resources each learner rank needs, e.g. {fleetloop_learner: 1} to place it on the nodes that advertise them (a KubeRay worker group's rayStartParams.resources).")

    @field_validator("class_weights")
    @classmethod
    def _check_class_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        _check_classes(weights)
        bad = {name: w for name, w in weights.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"weights must be finite and >= 0, got {bad}")
        return {**DEFAULT_CLASS_WEIGHTS, **weights}


class WeightsSection(_Section):
    _name: ClassVar[str] = "weights"

    host: str = Field("127.0.0.1", description="Bind address of the WeightService.")
    port: int = Field(50051, ge=0, le=65535, description="WeightService port (0 = any free port).")
    chunk_bytes: int = Field(1 << 20, ge=1024, le=64 << 20, description="Bytes per streamed weight chunk.")
    keep_versions: int = Field(2, ge=1, description="Published versions held for pulls (beside the promoted one and any under evaluation).")
    promotion: Literal["every", "evaluated"] = Field(
        "every", description="Which versions the fleet (env actors, robot bridges) runs. every: each one as it is "
                             "published. evaluated: only versions the loop's evaluator scored no worse than the "
                             "fleet's version (within promotion_margin); the first published version starts the "
                             "fleet. Needs evaluator.enabled; `fleetloop up` only.")
    promotion_margin: float = Field(0.1, ge=0, le=1, description="weights.promotion=evaluated: a version is promoted "
                                                                 "when its success rate is at least the fleet "
                                                                 "version's minus this (the evaluator's figures are "
                                                                 "noisy: 20 episodes are about +-0.2 wide).")
    advertise_address: str | None = Field(None, description="host:port subscribers dial for the WeightService (e.g. a Kubernetes Service's DNS name); None: host:port it binds.")
    token_file: str | None = Field(None, description="File holding the bearer token every WeightService call must carry (None: no token).")
    tls_ca_file: str | None = Field(None, description="PEM CA that verifies the peer; setting it turns TLS on (needs tls_cert_file and tls_key_file).")
    tls_cert_file: str | None = Field(None, description="PEM certificate chain of this role (the server's; a client's for mutual TLS).")
    tls_key_file: str | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_require_client_auth: bool = Field(False, description="Mutual TLS: the server rejects clients without a certificate signed by tls_ca_file.")
    tls_server_name: str | None = Field(None, description="Name clients verify in the server certificate instead of the target host.")

    @model_validator(mode="after")
    def _check_tls(self) -> "WeightsSection":
        files = {"tls_ca_file": self.tls_ca_file, "tls_cert_file": self.tls_cert_file, "tls_key_file": self.tls_key_file}
        if any(files.values()) and not all(files.values()):
            missing = sorted(name for name, value in files.items() if not value)
            raise ValueError(f"TLS needs tls_ca_file, tls_cert_file and tls_key_file together; missing {missing}")
        for name, value in {**files, "token_file": self.token_file}.items():
            if value and not Path(value).is_file():
                raise ValueError(f"{name}: {value} is not a readable file")
        return self

    def credentials(self):
        """(TlsConfig | None, token | None) for the WeightService server and its subscribers.

        Raises:
            ConfigError: the token file cannot be read, is too large or empty.
            fleetloop.limits.InputError: a PEM file cannot be read or is too large.
        """
        from fleetloop.protos.security import TlsConfig  # grpc: import on use

        tls = None
        if self.tls_ca_file:
            tls = TlsConfig.from_files(self.tls_ca_file, self.tls_cert_file, self.tls_key_file,
                                       require_client_auth=self.tls_require_client_auth,
                                       server_name=self.tls_server_name)
        token = _read_secret(self.token_file, f"{self._name}.token_file") if self.token_file else None
        return tls, token


class BridgeSection(_Section):
    """The robot bridge (`fleetloop robot-bridge`) and its clients; TLS and token work as in `weights`."""

    _name: ClassVar[str] = "bridge"

    env: str = Field("reach", description="Env the mujoco-twin backend simulates (a name registered in actors/envs).")
    host: str = Field("127.0.0.1", description="Bind address of the RobotService.")
    port: int = Field(50061, ge=0, le=65535, description="RobotService port (0 = any free port).")
    realtime: bool = Field(False, description="mujoco-twin: pace every step at the control rate, like a real robot (False: as fast as it simulates).")
    deadline_s: float = Field(5.0, gt=0, description="Deadline of each RobotClient call; Act adds the chunk's execution time at the control rate.")
    max_message_bytes: int = Field(4 << 20, ge=1024, le=256 << 20, description="Largest RobotService message; larger ones get RESOURCE_EXHAUSTED.")
    reconnect_timeout_s: float = Field(60.0, gt=0, description="actors.robot=bridge: how long an actor waits for an unreachable bridge (at start, or after losing it mid-run), retrying with backoff, before failing.")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="/metrics port of `fleetloop robot-bridge` on metrics.host (None: off, 0: any free port).")
    token_file: str | None = Field(None, description="File holding the bearer token every RobotService call must carry (None: no token).")
    tls_ca_file: str | None = Field(None, description="PEM CA that verifies the peer; setting it turns TLS on (needs tls_cert_file and tls_key_file).")
    tls_cert_file: str | None = Field(None, description="PEM certificate chain of this role (the bridge's; a client's for mutual TLS).")
    tls_key_file: str | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_require_client_auth: bool = Field(False, description="Mutual TLS: the bridge rejects clients without a certificate signed by tls_ca_file.")
    tls_server_name: str | None = Field(None, description="Name clients verify in the bridge certificate instead of the target host.")

    _check_tls = model_validator(mode="after")(WeightsSection._check_tls)
    credentials = WeightsSection.credentials


def _gate_kind(value: Any) -> str:
    """The gate kind of a raw or validated ``actors.dagger.gate`` (the default kind when unset)."""
    from fleetloop.actors.gates import DEFAULT_GATE

    kind = value.get("kind", DEFAULT_GATE) if isinstance(value, dict) else getattr(value, "kind", DEFAULT_GATE)
    return kind


def _gate_options() -> Any:
    """The union of every registered gate's options, told apart by ``kind`` (actors/gates)."""
    from fleetloop.actors.gates import GATES

    choices = tuple(Annotated[gate.Options, Tag(kind)] for kind, gate in GATES.items())
    return Annotated[Union[choices], Discriminator(_gate_kind)]


class TakeoverSection(_Section):
    max_steps: int = Field(64, ge=1, description="Cap of one takeover (steps); a takeover that reaches it is "
                                                 "marked and not trained on.")
    hand_back: list[Literal["subgoal", "agreement"]] = Field(
        default_factory=lambda: ["subgoal", "agreement"],
        description="When the operator may hand back before the cap, checked every actors.execute_steps steps: "
                    "subgoal: the expert's subgoal at the takeover's start is done (grasped, placed); agreement: "
                    "the policy's fresh plan agrees with the operator's (the gate's test).")
    labels: Literal["chunk", "driven"] = Field(
        "chunk", description="hg-dagger, simulated operator: what a takeover's steps are labelled with. chunk: the "
                             "expert's whole H-step chunk from every step (rows past the handback included, and "
                             "charged as expert effort); driven: the actions the operator drove, as a human "
                             "operator gives them (windows near the handback are padded past it).")


class DaggerSection(_Section):
    mode: str = Field(
        "dagger", description="A registered DAgger mode (actors/dagger): dagger: beta-mixture rollouts, every "
                              "planning state labelled with the expert's chunk; hg-dagger: the policy drives, an "
                              "operator takes over when the gate fires, takeovers and the planning states before "
                              "them become corrections.")
    beta_start: float = Field(0.5, ge=0, le=1, description="dagger: probability that the expert drives a chunk in round 0.")
    beta_decay: float = Field(0.5, ge=0, le=1, description="dagger: beta of round r = beta_start * beta_decay**r.")
    gate: _gate_options() = Field(
        default_factory=lambda: _gate_options_default(),
        description="hg-dagger (and dagger with relabel: divergent): how the operator judges each plan "
                    "(actors/gates): kind task_space (effector path, grasp, object and slip gaps: effector_m, "
                    "grasp, object_m, patience in chunks, judge_done, at_once) or joint (thresholds per joint "
                    "group, default_threshold, patience). Replaced whole by a later config layer.")
    takeover: TakeoverSection = Field(default_factory=TakeoverSection)
    relabel: Literal["every", "divergent"] = Field(
        "every", description="dagger: the planning states the expert labels: every one (Ross et al.), or only "
                             "those the expert drove and those whose policy plan the gate (actors.dagger.gate) "
                             "judges divergent: the expert watches every plan, as in hg-dagger, and spends its "
                             "labels where the policy goes wrong.")
    pre_intervention_chunks: int = Field(0, ge=0, description="hg-dagger: the policy's planning states before a "
                                                              "takeover relabelled with the expert's chunk "
                                                              "(pre_intervention_relabel). 0 by default: each costs "
                                                              "the expert a whole chunk and did not pay for it "
                                                              "(docs/improvement.md).")

    @field_validator("mode")
    @classmethod
    def _check_mode(cls, mode: str) -> str:
        from fleetloop.actors.dagger import MODES

        if mode not in MODES:
            raise ValueError(f"unknown DAgger mode {mode!r}; modes: {sorted(MODES)}")
        return mode

    @property
    def gated(self) -> bool:
        """Derived: the mode lets an operator take over through a gate."""
        from fleetloop.actors.dagger import MODES

        return MODES[self.mode].gated


def _gate_options_default() -> Any:
    from fleetloop.actors.gates import GATES, DEFAULT_GATE

    return GATES[DEFAULT_GATE].Options()


class ActorsSection(_Section):
    num_actors: int = Field(2, ge=1, description="Ray actors, each owning one environment and a policy replica.")
    env: Literal["reach", "gr1_pick_place", "gr1_handover"] = Field(
        "reach", description="Simulated task (actors/envs): reach (2-link arm), gr1_pick_place (GR-1 humanoid; "
                             "its expert needs about 64 steps, so give max_steps >= 96) or gr1_handover (two GR-1s "
                             "in one scene, one episode per robot written; max_steps >= 160).")
    robot: Literal["sim", "bridge"] = Field(
        "sim", description="sim: each actor steps its own MuJoCo env in process; bridge: each actor drives its "
                           "robot only through a RobotService (`fleetloop robot-bridge`), and corrections come "
                           "from the bridge's operator interventions (needs actors.dagger.mode=hg-dagger).")
    bridge_targets: list[str] = Field(
        default_factory=list, description="actors.robot=bridge: host:port of the running robot bridge of each actor "
                                          "(one per actor); empty: `fleetloop up` starts a mujoco-twin bridge per actor.")
    eval_seed_base: int | None = Field(
        None, ge=0, description="Evaluation episode i of actor a in every round resets its env (and seeds the policy's "
                                "noise) with eval_seed_base + a * eval_episodes_per_round + i (the same episodes each "
                                "round); None: evaluation seeds continue the actor's own sequence.")
    dagger_seed_base: int | None = Field(
        None, ge=0, description="Likewise for the DAgger episodes: every round visits the same scenes, so the "
                                "intervention rate of successive policies is a paired comparison; None: fresh "
                                "scenes every episode. Its seeds must not overlap the evaluation seeds.")
    state_includes_object_pose: bool = Field(
        False, description="gr1_pick_place: append the named object's and target's xyz (pelvis frame) to the "
                           "state (embodiment gr1_pose), for policies that cannot find the object in images.")
    max_steps: int = Field(64, ge=8, description="Control steps per episode.")
    shuffle_layout: bool = Field(False, description="Reach task: shuffle the balls' places each episode (the policy must then find the named colour in the image).")
    demos_per_actor: int = Field(16, ge=1, description="Expert demonstrations each actor seeds into `pretrain`.")
    dagger_episodes_per_round: int = Field(3, ge=0, description="beta-mixture DAgger episodes per actor and round.")
    eval_episodes_per_round: int = Field(5, ge=1, description="Policy-only episodes per actor and round: the success rate (written to rollouts, never relabelled).")
    execute_steps: int = Field(8, ge=1, description="Steps of each predicted action chunk executed before re-planning.")
    weights_refresh: Literal["episode", "chunk"] = Field(
        "episode", description="When an actor swaps in the newest weights it received: at the start of each episode "
                               "(one version per episode), or also before planning each action chunk (fresher; each "
                               "written step keeps the version that acted there).")
    max_policy_lag: int = Field(3, ge=0, description="run.mode=async: an actor whose policy is more than this many "
                                                     "versions behind the newest published pauses (and says why) "
                                                     "instead of writing stale data.")
    demo_frame_every: int = Field(4, ge=1, description="Render a camera frame every N steps of a demonstration.")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per actor process.")
    niceness: int = Field(0, ge=0, le=19, description="Lowers each actor process's CPU priority by this much (a "
                                                      "Linux nice increment, capped at 19). Where actors share "
                                                      "cores with the learner (a local run), the learner then "
                                                      "trains at its own pace and the actors take the cycles it "
                                                      "leaves; on nodes of their own it changes nothing.")
    max_restarts: int = Field(3, ge=0, description="Times Ray restarts a crashed actor (and retries its interrupted call).")
    replay_retry_s: float = Field(300.0, gt=0, description="How long an actor retries an episode write the replay has not acknowledged (unreachable, paused, rate-limited) before its call fails; the episode stays held and is written first on the next try.")
    ray_resources: RayResources = Field(default_factory=dict, description="Custom Ray resources each env actor needs, e.g. {fleetloop_actor: 1} to place actors on the nodes that advertise them.")
    dagger: DaggerSection = Field(default_factory=DaggerSection)

    @model_validator(mode="after")
    def _check_robot(self) -> "ActorsSection":
        if self.robot == "bridge" and not self.dagger.gated:
            raise ValueError("actors.robot=bridge needs a gated actors.dagger.mode (hg-dagger): through a bridge only "
                             f"operator takeovers give corrections, got mode {self.dagger.mode!r}")
        if self.bridge_targets and len(self.bridge_targets) != self.num_actors:
            raise ValueError(f"actors.bridge_targets lists {len(self.bridge_targets)} bridge(s) for "
                             f"{self.num_actors} actor(s); give one per actor or none")
        if self.eval_seed_base is not None and self.dagger_seed_base is not None:
            evals = range(self.eval_seed_base, self.eval_seed_base + self.num_actors * self.eval_episodes_per_round)
            daggers = range(self.dagger_seed_base,
                            self.dagger_seed_base + self.num_actors * self.dagger_episodes_per_round)
            if daggers and max(evals.start, daggers.start) < min(evals.stop, daggers.stop):
                raise ValueError(f"actors.dagger_seed_base: DAgger seeds [{daggers.start}, {daggers.stop}) overlap the "
                                 f"evaluation seeds [{evals.start}, {evals.stop}); evaluate on scenes not trained on")
        if self.state_includes_object_pose and self.env != "gr1_pick_place":
            raise ValueError(f"actors.state_includes_object_pose applies to env gr1_pick_place, not {self.env!r}")
        return self


SEEDS_PER_ACTOR = 100_000
"""Episode seeds each actor draws from its own sequence (``FleetloopConfig.actor_seed_base``)."""


class EvaluatorSection(_Section):
    enabled: bool = Field(True, description="`fleetloop up` runs the evaluator role: each round's published version "
                                            "is evaluated on the fixed seeds below (evaluations.json, "
                                            "success_by_version, fleetloop_evaluator_* metrics).")
    episodes: int = Field(20, ge=1, description="Policy-only episodes per evaluation (`fleetloop eval`): success "
                                                "with a Wilson 95 % interval.")
    every_versions: int = Field(1, ge=1, description="run.mode=async: evaluate a newly published version once at "
                                                     "least this many versions came out since the last one evaluated "
                                                     "(one evaluation at a time; versions published meanwhile are "
                                                     "skipped). sync: every round's version.")
    seed_base: int = Field(2_000_000_000, ge=0,
                           description="Evaluation episode i resets its env (and seeds the policy's noise) with "
                                       "seed_base + i: every policy is evaluated on the same scenes (paired). Keep it "
                                       "away from the actors' own seeds, which train on their scenes.")
    ray_resources: RayResources = Field(default_factory=dict, description="Custom Ray resources the evaluator "
                                                                           "needs, e.g. {fleetloop_evaluator: 1} to "
                                                                           "place it on its own nodes (a KubeRay worker "
                                                                           "group's rayStartParams.resources), away from "
                                                                           "the learner's CPUs.")


class MetricsSection(_Section):
    host: str = Field("127.0.0.1", description="Bind address of every /metrics endpoint.")
    learner_port: int = Field(9400, ge=0, le=65535, description="Learner /metrics port (0 = any free port).")
    replay_port: int = Field(9401, ge=0, le=65535, description="Replay /metrics port (0 = any free port).")
    evaluator_port: int = Field(9402, ge=0, le=65535, description="Evaluator /metrics port (0 = any free port).")
    actor_base_port: int = Field(9410, ge=0, le=65535, description="Actor i serves /metrics on base + i * actor_port_stride (0 = any free port).")
    actor_port_stride: int = Field(1, ge=0, le=64, description="Port step between actors; 0 gives every actor the base port (one actor per host or pod, as on Kubernetes).")


class FleetloopConfig(_Section):
    """Everything a fleetloop run needs; see each section's field descriptions."""

    run: RunSection = Field(default_factory=RunSection)
    model: ModelSection = Field(default_factory=ModelSection)
    replay: ReplaySection = Field(default_factory=ReplaySection)
    learner: LearnerSection = Field(default_factory=LearnerSection)
    weights: WeightsSection = Field(default_factory=WeightsSection)
    bridge: BridgeSection = Field(default_factory=BridgeSection)
    actors: ActorsSection = Field(default_factory=ActorsSection)
    evaluator: EvaluatorSection = Field(default_factory=EvaluatorSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)

    @model_validator(mode="after")
    def _check_cross_fields(self) -> "FleetloopConfig":
        if self.learner.publish_every > self.learner.steps_per_round:
            raise ValueError(
                f"learner.publish_every ({self.learner.publish_every}) must be <= "
                f"learner.steps_per_round ({self.learner.steps_per_round})"
            )
        shared_port = self.metrics.actor_base_port and not self.metrics.actor_port_stride
        if shared_port and self.run.ray_address == "local" and self.actors.num_actors > 1:
            raise ValueError(f"metrics.actor_port_stride=0 gives all {self.actors.num_actors} actors port "
                             f"{self.metrics.actor_base_port}, but run.ray_address=local runs them on one machine; "
                             "use a stride >= 1 or actor_base_port=0")
        if self.weights.promotion == "evaluated" and not self.evaluator.enabled:
            raise ValueError("weights.promotion=evaluated needs evaluator.enabled=true: the evaluator scores the "
                             "versions the fleet may run")
        if self.run.target_success is not None and not self.evaluator.enabled:
            raise ValueError("run.target_success needs evaluator.enabled=true: the evaluator measures the success "
                             "the run stops on")
        if self.run.mode == "async":
            self._check_async_pacing()
        trained = range(self.actor_seed_base(0), self.actor_seed_base(self.actors.num_actors))
        evaluated = range(self.evaluator.seed_base, self.evaluator.seed_base + self.evaluator.episodes)
        if max(trained.start, evaluated.start) < min(trained.stop, evaluated.stop):
            raise ValueError(f"evaluator.seed_base: evaluation seeds [{evaluated.start}, {evaluated.stop}) overlap the "
                             f"actors' own seeds [{trained.start}, {trained.stop}) of run.seed {self.run.seed}, whose "
                             "scenes they train on; choose a seed_base outside that range")
        return self

    def _check_async_pacing(self) -> None:
        """run.mode=async: every rate-limited table the learner samples must be one the fleet keeps
        filling, or the learner would wait forever."""
        from fleetloop.replay import TableConfig

        for table, weight in self.replay.mixture.items():
            limited = TableConfig.from_dict(self.replay.tables.get(table, {})).samples_per_insert is not None
            if weight <= 0 or not limited:
                continue
            if table not in LOOP_TABLES:
                raise ValueError(f"replay.tables.{table}.samples_per_insert: run.mode=async samples {table!r} "
                                 f"(replay.mixture weight {weight:g}) but no actor writes to it during the loop, so "
                                 "its rate limiter could never let the learner sample; remove the limiter or set its "
                                 f"mixture weight to 0 (actors write {', '.join(LOOP_TABLES)})")
            if self.actors.dagger_episodes_per_round == 0:
                raise ValueError(f"actors.dagger_episodes_per_round: run.mode=async with a rate limiter on {table!r} "
                                 "needs the actors to roll out (> 0), or the learner would wait forever")

    def actor_seed_base(self, actor_index: int) -> int:
        """First episode seed of actor ``actor_index``'s own sequence (its demonstrations and every
        episode without a fixed seed base): episode i resets from this + i."""
        return (self.run.seed * 1000 + actor_index) * SEEDS_PER_ACTOR

    @property
    def total_learner_steps(self) -> int:
        """Derived: optimizer steps of the whole run (run.max_learner_steps, else run.rounds x
        learner.steps_per_round)."""
        return self.run.max_learner_steps or self.run.rounds * self.learner.steps_per_round

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def preset_names() -> list[str]:
    files = importlib.resources.files(PRESETS_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def _read_yaml(source: str) -> dict[str, Any]:
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {source} does not exist")
        document: bytes | str = read_limited(path, MAX_CONFIG_BYTES, ConfigError)
    elif source in preset_names():
        document = importlib.resources.files(PRESETS_PACKAGE).joinpath(f"{source}.yaml").read_text()
    else:
        raise ConfigError(f"config {source!r} is neither a file nor a preset; presets: {preset_names()}")
    try:
        data = yaml.safe_load(document) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {source} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {source} must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``key.path=value`` override in place; the value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    parts = key.strip().split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {assignment!r}: value is not valid YAML: {exc}") from None


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        got = f" (got {err['input']!r})" if err["type"] != "extra_forbidden" and "input" in err and not isinstance(err["input"], dict) else ""
        lines.append(f"  {path}: {msg}{got}")
    return "invalid configuration:\n" + "\n".join(lines)


def _merge(base: dict[str, Any], layer: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """``layer`` over ``base``: sections (``model``'s fields that are sections) merge field by field;
    any other value, mappings such as ``replay.mixture`` included, replaces the earlier one."""
    merged = dict(base)
    for key, value in layer.items():
        field = model.model_fields.get(key)
        section = field.annotation if field and isinstance(field.annotation, type) and issubclass(field.annotation, _Section) else None
        if section and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, section)
        else:
            merged[key] = value
    return merged


def load_config(source: str | list[str] | None = None, overrides: list[str] | None = None) -> FleetloopConfig:
    """Load a preset name or YAML file, or several layered in order (the default preset when None),
    and apply overrides."""
    sources = [source] if isinstance(source, str) else source or [DEFAULT_PRESET]
    data: dict[str, Any] = {}
    for name in sources:
        data = _merge(data, _read_yaml(name), FleetloopConfig)
    for assignment in overrides or []:
        apply_override(data, assignment)
    try:
        return FleetloopConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
