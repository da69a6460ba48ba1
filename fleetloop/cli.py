"""The `fleetloop` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import yaml
from tqdm import tqdm

# MuJoCo renders offscreen (eval, robot-bridge): EGL unless the operator chose another backend.
# Set before anything imports mujoco, which reads it once.
os.environ.setdefault("MUJOCO_GL", "egl")
# torch's OpenMP threads sleep rather than spin between parallel regions (docs/design.md, CPU
# sharing): on a node shared with other roles or jobs, spinning threads collapse a learner's pace.
# Set before torch loads; Ray workers get it from the loop's runtime env.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fleetloop.config import ConfigError, FleetloopConfig, load_config, preset_names

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
fleetloop trains a GR00T-N1-style vision-language-action policy continually: a DeepSpeed
learner trains from a Redis-backed replay, Ray actors roll the newest weights out in MuJoCo,
and DAgger corrections flow back into the replay.

commands:
  up              run the local continual-improvement loop (embedded Valkey, Ray, learner, actors)
  learner         run the learner role alone: DeepSpeed ranks training from the replay, WeightService
  eval            evaluate a policy file or a run's checkpoints on fixed seeds (success, 95 % interval, PNG)
  config show     print the validated configuration (with --describe: every field explained)
  replay stats    show episodes and steps per replay table
  ingest          load a LeRobot/GR00T dataset into a replay table
  export          write a replay table as a LeRobot v2.1 dataset
  model convert-gr00t   convert a released GR00T-N1 checkpoint into a fleetloop policy
  robot-bridge    serve a robot (the MuJoCo twin) over the gRPC RobotService

Run `fleetloop COMMAND --help` for a command's options."""


def _state_options() -> argparse.ArgumentParser:
    """Options of every command that touches state."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("configuration and state")
    group.add_argument("--config", metavar="FILE", action="append",
                       help=f"YAML config file or preset name (presets: {', '.join(preset_names())}; default: default); "
                            "repeat to layer files, later ones overriding earlier ones field by field")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override one config field, e.g. --set learner.steps_per_round=50 (repeatable)")
    group.add_argument("--run-dir", metavar="DIR",
                       help="run directory (logs, checkpoints, plots, embedded replay data); default: runs/<timestamp> for up")
    group.add_argument("--redis-url", metavar="URL",
                       help="replay server, e.g. redis://host:6379/0 (default: the run directory's embedded Valkey)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetloop", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # The deepspeed launcher passes --local_rank=N before the command; ranks read LOCAL_RANK instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    state = _state_options()

    up = commands.add_parser(
        "up", parents=[state], help="run the local continual-improvement loop",
        description="Start the replay (embedded Valkey unless --redis-url), a local Ray cluster, the DeepSpeed "
                    "learner with its gRPC WeightService, and the env actors; seed `pretrain` with expert "
                    "demonstrations; then, with run.mode=sync (the default), run rounds of train -> publish -> "
                    "roll out -> collect corrections, or with run.mode=async train and roll out at the same time, "
                    "the actors taking each new version as it comes out, until run.max_learner_steps, "
                    "run.duration_s or run.target_success. Prints each round's (or evaluation's) success rate and "
                    "leaves config, logs, checkpoints and plots in the run directory. Ctrl-C stops every process "
                    "it started.")
    up.add_argument("--summary-json", metavar="PATH", type=Path,
                    help="also write the run summary (steps, versions, episodes, success rates, endpoints) here")
    up.add_argument("--resume", action="store_true",
                    help="continue the run in --run-dir after a crash: its config, replay data and newest learner "
                         "checkpoint; completed rounds are kept and the weight version keeps counting up")

    learner = commands.add_parser(
        "learner", parents=[state], help="run the learner role alone (what a cluster deploys)",
        description="Train the policy from the replay with DeepSpeed and serve each new version over the gRPC "
                    "WeightService, publishing every learner.publish_every steps and checkpointing every "
                    "learner.checkpoint_every steps. One process is one rank; --ranks N runs N data-parallel ranks "
                    "as Ray Train workers, all restarted from the newest checkpoint when one dies (at most "
                    "learner.max_restarts times); under the deepspeed launcher (`deepspeed --module "
                    "fleetloop.cli learner ...`) each launched process is one rank. Rank 0 serves the WeightService and /metrics. "
                    "SIGTERM or Ctrl-C stops at the next publish boundary after a final checkpoint. The replay is "
                    "--redis-url, replay.url, or (one process only) the run directory's embedded server; "
                    "`pretrain` must hold data.")
    learner.add_argument("--steps", type=int, metavar="N",
                         help="train until optimizer step N (default: run.rounds x learner.steps_per_round; "
                              "0: until stopped)")
    learner.add_argument("--resume", action="store_true",
                         help="continue from the newest checkpoint in --run-dir: step, optimizer, data-sampler state "
                              "and weight version carry on")
    learner.add_argument("--ranks", type=int, default=None, metavar="N",
                         help="data-parallel ranks to start as Ray Train workers (default: learner.ranks, 1: this "
                              "process); a rank that dies restarts them all from the newest checkpoint")
    learner.add_argument("--summary-json", metavar="PATH", type=Path, help="also write the final status here")

    evaluate = commands.add_parser(
        "eval", parents=[state], help="evaluate a policy file or a run's checkpoints on fixed seeds",
        description="Run policy-only episodes of actors.env on the seeds evaluator.seed_base + i (the same scenes "
                    "and noise for every policy: paired) and report the success rate with a Wilson 95 % interval. "
                    "TARGET is a policy file or a run directory (its newest checkpoint; --all: every kept one). "
                    "Without --config the run's config.yaml is used. Results are merged into evaluations.json and "
                    "plots/evaluations.png of --run-dir (default: TARGET's run directory, else runs/eval-<time>).")
    evaluate.add_argument("target", type=Path, metavar="CHECKPOINT|RUN_DIR",
                          help="a policy .safetensors file, or a run directory holding checkpoints/")
    evaluate.add_argument("--episodes", type=int, metavar="N", help="episodes per policy (default: evaluator.episodes)")
    evaluate.add_argument("--all", action="store_true", dest="every",
                          help="RUN_DIR: evaluate every kept checkpoint (a curve), not only the newest")
    evaluate.add_argument("--json", action="store_true", help="print the evaluations as JSON")

    config = commands.add_parser("config", help="inspect the configuration",
                                 description="Inspect the configuration.")
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    show = config_commands.add_parser("show", parents=[state], help="print the validated configuration as YAML",
                                      description="Validate the configuration (preset or file plus --set overrides) "
                                                  "and print it as YAML.")
    show.add_argument("--describe", action="store_true", help="list every field with its type, default and meaning")

    replay = commands.add_parser("replay", help="inspect the replay", description="Inspect the replay.")
    replay_commands = replay.add_subparsers(dest="replay_command", metavar="SUBCOMMAND", required=True)
    stats = replay_commands.add_parser(
        "stats", parents=[state], help="episodes and steps per table",
        description="Show per replay table: episodes, steps, bytes, sources, embodiments and policy versions. Reads --redis-url, or the run directory's embedded "
                    "server (started for the duration of the command if it is not running).")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")

    ingest = commands.add_parser(
        "ingest", parents=[state], help="load a LeRobot/GR00T dataset into a replay table",
        description="Read a LeRobot v2.0/v2.1 dataset in GR00T's layout (meta/, data/ parquet, videos/ mp4), check "
                    "every episode (modality slices, frame counts, NaN/inf, video integrity), then write its episodes "
                    "into a replay table. Nothing is written if any check fails; re-ingesting the same dataset adds "
                    "nothing. Needs --redis-url or --run-dir (created if missing).")
    ingest.add_argument("path", type=Path, help="dataset root (holds meta/info.json)")
    ingest.add_argument("--embodiment", required=True, help="embodiment tag of the robot, e.g. gr1")
    ingest.add_argument("--table", default="pretrain", help="replay table to fill (default: pretrain)")
    ingest.add_argument("--camera", help="video key to store when the dataset has several cameras")

    export = commands.add_parser(
        "export", parents=[state], help="write a replay table as a LeRobot v2.1 dataset",
        description="Write the episodes of a replay table as a LeRobot v2.1 dataset in GR00T's layout "
                    "(parquet + H.264 mp4 + meta/ with modality.json and statistics).")
    export.add_argument("table", help="replay table to export, e.g. corrections")
    export.add_argument("out_dir", type=Path, help="folder to create the dataset in")
    export.add_argument("--embodiment", help="export only this embodiment's episodes (needed for mixed tables)")
    export.add_argument("--fps", type=float, default=20.0, help="frame rate written to the dataset (default: 20)")

    model = commands.add_parser("model", help="model checkpoints", description="Model checkpoints.")
    model_commands = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    convert = model_commands.add_parser(
        "convert-gr00t", help="convert a released GR00T-N1 checkpoint to a fleetloop policy",
        description="Map every tensor of a GR00T-N1 checkpoint (safetensors, sharded or not, any float dtype) onto "
                    "fleetloop's model of the same architecture and write OUT_DIR/policy.safetensors. Tensors the "
                    "model does not use are listed; a missing or mis-shaped tensor is an error and nothing is "
                    "written. Normalisation statistics start as pass-through: fit them before acting.")
    convert.add_argument("src_dir", type=Path, help="folder holding the GR00T checkpoint's .safetensors files")
    convert.add_argument("out_dir", type=Path, help="folder to write policy.safetensors into")
    convert.add_argument("--preset", default="n1-2b", help="fleetloop model preset with that architecture (default: n1-2b)")
    convert.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                         help="dtype of the written parameters (default: float32)")

    bridge = commands.add_parser(
        "robot-bridge", help="serve a robot over the gRPC RobotService (the robot bridge)",
        description="Serve a robot backend over the gRPC RobotService, so an actor drives a simulated twin or a real "
                    "robot through the same calls (GetInfo, Reset, Observe, Act, StreamInterventions; see "
                    "docs/robot_bridge.md). The mujoco-twin backend simulates --env with its scripted expert as the "
                    "operator who takes over when the policy diverges, built as the actors build their env "
                    "(actors.max_steps, the camera size of model.preset, the gate of actors.dagger). Prints the "
                    "address it listens on, answers gRPC health checks, and uses the bridge.* config (TLS, token, "
                    "limits). Serves until SIGTERM "
                    "(exit 0) or Ctrl-C (exit 130).")
    bridge.add_argument("--backend", required=True, choices=("mujoco-twin",), help="robot backend to serve")
    bridge.add_argument("--env", help="env the twin simulates (default: bridge.env, reach)")
    bridge.add_argument("--host", help="bind address (default: bridge.host)")
    bridge.add_argument("--port", type=int, help="port, 0 for any free one (default: bridge.port)")
    bridge.add_argument("--config", metavar="FILE", action="append",
                        help="YAML config file or preset name (default: default); repeat to layer files")
    bridge.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override one config field, e.g. --set bridge.realtime=true (repeatable)")
    return parser


def _describe(model: type, prefix: str = "") -> list[str]:
    lines = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            lines += _describe(annotation, f"{prefix}{name}.")
            continue
        default = field.default_factory() if field.default_factory else field.default
        type_name = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
        lines.append(f"{prefix}{name}: {type_name} = {default!r}\n    {field.description or ''}")
    return lines


def _cmd_up(args: argparse.Namespace, cfg: FleetloopConfig) -> int:
    from fleetloop.launcher import preflight, run_up
    from fleetloop.rundir import RunDir

    if args.resume:
        _require_run_dir(args, "--resume")
    preflight(cfg)  # a refused configuration leaves no run directory behind
    run = RunDir.create(args.run_dir)
    print(f"fleetloop up: run directory {run.root}{' (resuming)' if args.resume else ''}", file=sys.stderr)
    summary = run_up(cfg, run, args.redis_url or cfg.replay.url, args.summary_json, resume=args.resume)
    success = {v: round(rate, 2) for v, rate in summary["success_by_version"].items()}
    print(f"done in {summary['wall_seconds']:.0f} s ({summary['mode']}, stopped by {summary['stopped_by']}): "
          f"{summary['learner_steps']} learner steps, {summary['weight_versions_published']} weight versions, "
          f"episodes {summary['episodes']}, learner busy {summary['learner_busy_fraction']:.0%}, actors busy "
          f"{summary['actor_busy_fraction']:.0%}, success by round "
          f"{[round(s, 2) for s in summary['success_rate_by_round']]}, evaluator success by version {success}",
          file=sys.stderr)
    return 0


def _require_run_dir(args: argparse.Namespace, why: str) -> Path:
    if not args.run_dir:
        raise ConfigError(f"{why} needs --run-dir DIR")
    root = Path(args.run_dir)
    if args.resume and not (root / "checkpoints").is_dir():
        raise ConfigError(f"--run-dir: {root} holds no checkpoints/ folder to resume from")
    return root


def _cmd_learner(args: argparse.Namespace, cfg: FleetloopConfig) -> int:
    from fleetloop.learner.role import run_learner
    from fleetloop.rundir import RunDir, log_to_file

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    ranks = cfg.learner.ranks if args.ranks is None else args.ranks
    if ranks < 1:
        raise ConfigError(f"--ranks: expected at least 1, got {ranks}")
    if world > 1 and ranks > 1:
        raise ConfigError(f"--ranks (learner.ranks): the launcher already started WORLD_SIZE={world} ranks; "
                          "leave --ranks out and keep learner.ranks at 1")
    if args.resume:
        _require_run_dir(args, "--resume")
    if (world > 1 or ranks > 1) and not args.run_dir:
        raise ConfigError("--run-dir: every rank writes checkpoints to one run directory; give it explicitly")
    if args.steps is not None and args.steps < 0:
        raise ConfigError(f"--steps: expected 0 (until stopped) or more, got {args.steps}")
    if cfg.weights.promotion != "every":
        raise ConfigError("weights.promotion=evaluated: `fleetloop learner` runs no evaluator to promote versions, "
                          "so its fleet would never get weights; use `fleetloop up`, or weights.promotion=every")
    run = RunDir.create(args.run_dir or Path("runs") / time.strftime("learner-%Y%m%d-%H%M%S"))
    if rank == 0:
        run.write_config(cfg.to_dict())
        print(f"fleetloop learner: run directory {run.root}", file=sys.stderr)
    log_to_file(run.logs, f"learner-rank{rank}")
    steps = cfg.total_learner_steps if args.steps is None else args.steps
    with contextlib.ExitStack() as stack:
        url = _replay_url(args, cfg, stack, "learner", allow_embedded=world == 1)
        if ranks > 1:
            from fleetloop.learner.role import run_learner_group

            status = run_learner_group(cfg, str(run.root), url, ranks=ranks, steps=steps, resume=args.resume)
        else:
            status = run_learner(cfg, str(run.root), url, steps=steps, resume=args.resume)
    if rank == 0:
        text = json.dumps(status, indent=2)
        (run.root / "learner_status.json").write_text(text)
        if args.summary_json:
            args.summary_json.write_text(text)
        resumed = "" if status["resumed_from_step"] is None else f" (resumed at step {status['resumed_from_step']})"
        if status.get("restarts"):
            resumed += f" after {status['restarts']} restart(s) of its ranks (see logs/)"
        print(f"learner stopped at step {status['step']}{resumed}: weights version {status['version']}, "
              f"{status['world_size']} rank(s), last loss {status['loss']:.4f}", file=sys.stderr)
    return 0


def _cmd_eval(args: argparse.Namespace, cfg: FleetloopConfig) -> int:
    from fleetloop.evaluate import policy_files, run_eval, run_root_of
    from fleetloop.rundir import log_to_file

    if args.episodes is not None and args.episodes < 1:
        raise ConfigError(f"--episodes: expected at least 1, got {args.episodes}")
    files = policy_files(args.target, every=args.every)
    out = Path(args.run_dir or run_root_of(args.target) or Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S"))
    (out / "logs").mkdir(parents=True, exist_ok=True)
    log_to_file(out / "logs", "eval")
    episodes = args.episodes or cfg.evaluator.episodes
    with tqdm(total=episodes * len(files), desc="eval", unit="episode") as bar:
        def advance(name: str, success: bool) -> None:
            bar.set_postfix_str(name)
            bar.update()

        results = run_eval(cfg, files, out, episodes=args.episodes, on_episode=advance)
    if args.json:
        print(json.dumps(results, indent=2))
    for r in results:
        step = "" if r["step"] is None else f" (step {r['step']})"
        print(f"{Path(r['policy']).name}{step}: {r['successes']}/{r['episodes']} = {r['success_rate']:.2f} "
              f"(95 % CI {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}) on {r['env']}, seeds from {r['seed_base']}",
              file=sys.stderr)
    print(f"evaluations in {out / 'evaluations.json'}, plot {out / 'plots' / 'evaluations.png'}", file=sys.stderr)
    return 0


def _cmd_config_show(args: argparse.Namespace, cfg: FleetloopConfig) -> int:
    if args.describe:
        print("\n".join(_describe(FleetloopConfig)))
    else:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def _replay_url(args: argparse.Namespace, cfg: FleetloopConfig, stack: contextlib.ExitStack, command: str,
                create: bool = False, allow_embedded: bool = True) -> str:
    """--redis-url, the config's URL, or the run directory's embedded server.

    A run directory's server that is not running is started until ``stack`` closes
    (``create`` also makes a new run directory).
    """
    from fleetloop.replay import EmbeddedValkey
    from fleetloop.rundir import RunDir

    url = args.redis_url or cfg.replay.url
    if url is not None:
        return url
    if not allow_embedded:
        raise ConfigError(f"{command} with several ranks needs --redis-url URL (or replay.url): "
                          "ranks cannot share one run directory's embedded server")
    if not args.run_dir:
        raise ConfigError(f"{command} needs --redis-url URL or --run-dir DIR (whose embedded replay to use)")
    root = Path(args.run_dir).resolve()
    if create:
        run = RunDir.create(root)
    elif (root / "replay").is_dir():
        run = RunDir(root)
    else:
        raise ConfigError(f"{root} is not a fleetloop run directory (no replay/ folder)")
    url = EmbeddedValkey.running_in(run.replay)
    if url is None:
        server = EmbeddedValkey(run.replay, appendfsync=cfg.replay.appendfsync, password=cfg.replay.password()).start()
        stack.callback(server.stop)
        url = server.url
    return url


@contextlib.contextmanager
def _open_replay(args: argparse.Namespace, cfg: FleetloopConfig, command: str, create: bool = False):
    """A ReplayClient for ``_replay_url``."""
    from fleetloop.replay import ReplayClient

    with contextlib.ExitStack() as stack:
        client = ReplayClient(_replay_url(args, cfg, stack, command, create=create), **cfg.replay.client_options())
        stack.callback(client.close)
        yield client


def _progress_bar(desc: str, unit: str):
    bar = tqdm(desc=desc, unit=unit, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def _cmd_replay_stats(args: argparse.Namespace, cfg: FleetloopConfig) -> int:
    with _open_replay(args, cfg, "replay stats") as client:
        stats = client.table_stats(detailed=True)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0

    def counts(mapping: dict) -> str:
        return ", ".join(f"{key} {value}" for key, value in sorted(mapping.items())) or "-"

    print(f"{'table':<12}{'episodes':>9}{'steps':>9}{'MB':>9}  {'versions':<9} sources / embodiments")
    for table, row in stats.items():
        versions = "-" if row["policy_version_min"] is None else f"{row['policy_version_min']}..{row['policy_version_max']}"
        print(f"{table:<12}{row['episodes']:>9}{row['steps']:>9}{row['bytes'] / 1e6:>9.1f}  {versions:<9} "
              f"{counts(row['sources'])} / {counts(row['embodiments'])}")
    return 0


def _cmd_ingest(args: argparse.Namespace, cfg: FleetloopConfig) -> int:
    from fleetloop.replay import ingest_dataset
    from fleetloop.system import EMBODIMENT_TAGS

    with _open_replay(args, cfg, "ingest", create=True) as client:
        bar, update = _progress_bar(f"ingest {args.path.name}", "pass")
        with bar:
            report = ingest_dataset(client, args.path, args.embodiment, args.table, known_embodiments=EMBODIMENT_TAGS,
                                    camera=args.camera, progress=update)
    print(f"ingested {args.path} into table {report.table!r}: {report.written} episodes written, "
          f"{report.skipped} already present, {report.steps} steps (statistics: {report.stats_source})", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace, cfg: FleetloopConfig) -> int:
    from fleetloop.replay import export_table
    from fleetloop.replay.lerobot import Modality
    from fleetloop.system.embodiment import embodiment_layout

    # The embodiment's registered layout names the slices of modality.json (else one key each).
    modality = None
    if args.embodiment:
        layout = embodiment_layout(args.embodiment)
        modality = Modality(state=dict(layout.state), action=dict(layout.action))
    with _open_replay(args, cfg, "export") as client:
        bar, update = _progress_bar(f"export {args.table}", "episode")
        with bar:
            report = export_table(client, args.table, args.out_dir, progress=update, fps=args.fps,
                                  embodiment=args.embodiment, modality=modality)
    print(f"exported {len(report.episode_ids)} episodes ({report.steps} steps) of table {report.table!r} to "
          f"{report.out_dir} as a LeRobot v2.1 dataset ({report.codec} video)", file=sys.stderr)
    return 0


def _cmd_model(args: argparse.Namespace, cfg: FleetloopConfig) -> int:
    import torch

    from fleetloop.system.gr00t_conversion import convert_gr00t

    report = convert_gr00t(args.src_dir, args.out_dir / "policy.safetensors", preset=args.preset,
                           dtype=getattr(torch, args.dtype))
    print(report.summary(), file=sys.stderr)
    return 0


def _cmd_robot_bridge(args: argparse.Namespace, cfg: FleetloopConfig) -> int:
    import signal
    import threading

    import prometheus_client as prom

    from fleetloop.actors.bridge import MujocoTwinBackend, RobotBridgeServer
    from fleetloop.actors.envs import EXPERTS

    env = args.env or cfg.bridge.env
    if env not in EXPERTS:
        raise ConfigError(f"--env: no mujoco-twin for env {env!r}; choose from {sorted(EXPERTS)}")
    tls, token = cfg.bridge.credentials()
    twin = MujocoTwinBackend.from_sections(cfg.bridge, cfg.actors, cfg.model, env)
    server = RobotBridgeServer(twin, host=args.host or cfg.bridge.host,
                               port=cfg.bridge.port if args.port is None else args.port,
                               max_message_bytes=cfg.bridge.max_message_bytes, tls=tls, token=token)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server.start()
        if cfg.bridge.metrics_port is not None:
            metrics, _ = prom.start_http_server(cfg.bridge.metrics_port, addr=cfg.metrics.host)
            print(f"fleetloop robot-bridge: metrics on http://{cfg.metrics.host}:{metrics.server_port}/metrics",
                  file=sys.stderr)
        print(f"fleetloop robot-bridge: {args.backend} (env {env}) serving on {server.address}", flush=True)
        while not stop.wait(0.5):  # wake regularly: a signal may land on another thread than this one
            pass
    finally:
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the console stays at warnings when run logs go to a file at INFO
        handler.setLevel(logging.WARNING)
    handlers = {"up": _cmd_up, "learner": _cmd_learner, "eval": _cmd_eval, "config": _cmd_config_show, "replay": _cmd_replay_stats, "ingest": _cmd_ingest,
                "export": _cmd_export, "model": _cmd_model, "robot-bridge": _cmd_robot_bridge}
    try:
        cfg = load_config(_config_source(args), getattr(args, "overrides", []))
        return handlers[args.command](args, cfg)
    except ConfigError as exc:
        print(f"fleetloop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fleetloop: interrupted; every process it started has been stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not isinstance(exc, _operator_errors()):  # a bug: keep the traceback too
            logging.getLogger("fleetloop").exception("unexpected error")
        print(f"fleetloop: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _config_source(args: argparse.Namespace) -> list[str] | None:
    """--config (each, in order), else (when resuming) the run directory's saved config.yaml, else
    (eval) the config.yaml of TARGET's run, else the default preset."""
    config = getattr(args, "config", None)
    run_dir = args.run_dir if getattr(args, "resume", False) else None
    if args.command == "eval":
        from fleetloop.evaluate import run_root_of

        run_dir = run_root_of(args.target)
    if config is None and run_dir:
        saved = Path(run_dir) / "config.yaml"
        if saved.is_file():
            return [str(saved)]
    return config


def _operator_errors() -> tuple[type[Exception], ...]:
    """Errors whose message alone tells the operator what is wrong (imported lazily: --help stays fast)."""
    from fleetloop.ray_calls import LaunchError
    from fleetloop.learner.learner import ResumeError
    from fleetloop.learner.role import LearnerRoleError
    from fleetloop.replay.errors import ReplayError
    from fleetloop.replay.lerobot import DatasetError
    from fleetloop.actors.evaluator import EvaluationError
    from fleetloop.system.errors import CheckpointMismatchError

    return (LaunchError, ResumeError, LearnerRoleError, ReplayError, DatasetError, CheckpointMismatchError,
            EvaluationError, FileNotFoundError, ValueError)


if __name__ == "__main__":
    sys.exit(main())
