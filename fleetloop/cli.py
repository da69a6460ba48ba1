"""The `fleetloop` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

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
  config show     print the validated configuration (with --describe: every field explained)
  replay stats    show episodes and steps per replay table

Run `fleetloop COMMAND --help` for a command's options."""


def _state_options() -> argparse.ArgumentParser:
    """Options of every command that touches state."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("configuration and state")
    group.add_argument("--config", metavar="FILE",
                       help=f"YAML config file or preset name (presets: {', '.join(preset_names())}; default: default)")
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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    state = _state_options()

    up = commands.add_parser(
        "up", parents=[state], help="run the local continual-improvement loop",
        description="Start the replay (embedded Valkey unless --redis-url), a local Ray cluster, the DeepSpeed "
                    "learner with its gRPC WeightService, and the env actors; seed `pretrain` with expert "
                    "demonstrations; then run rounds of train -> publish -> roll out -> collect corrections. "
                    "Prints each round's success rate and leaves config, logs, checkpoints and plots in the run "
                    "directory. Ctrl-C stops every process it started.")
    up.add_argument("--summary-json", metavar="PATH", type=Path,
                    help="also write the run summary (steps, versions, episodes, success rates, endpoints) here")

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
        description="Show episodes and steps per replay table. Reads --redis-url, or the run directory's embedded "
                    "server (started for the duration of the command if it is not running).")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
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
    from fleetloop.launcher import run_up
    from fleetloop.rundir import RunDir

    run = RunDir.create(args.run_dir)
    print(f"fleetloop up: run directory {run.root}", file=sys.stderr)
    summary = run_up(cfg, run, args.redis_url or cfg.replay.url, args.summary_json)
    print(f"done in {summary['wall_seconds']:.0f} s: {summary['learner_steps']} learner steps, "
          f"{summary['weight_versions_published']} weight versions, episodes {summary['episodes']}, "
          f"success rate by round {[round(s, 2) for s in summary['success_rate_by_round']]}", file=sys.stderr)
    return 0


def _cmd_config_show(args: argparse.Namespace, cfg: FleetloopConfig) -> int:
    if args.describe:
        print("\n".join(_describe(FleetloopConfig)))
    else:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def _cmd_replay_stats(args: argparse.Namespace, cfg: FleetloopConfig) -> int:
    from fleetloop.replay import EmbeddedValkey, ReplayClient
    from fleetloop.rundir import RunDir

    url = args.redis_url or cfg.replay.url
    server = None
    if url is None:
        if not args.run_dir:
            raise ConfigError("replay stats needs --redis-url URL or --run-dir DIR (whose embedded replay to read)")
        run = RunDir(Path(args.run_dir).resolve())
        if not run.replay.is_dir():
            raise ConfigError(f"{run.root} is not a fleetloop run directory (no replay/ folder)")
        url = EmbeddedValkey.running_in(run.replay)
        if url is None:
            server = EmbeddedValkey(run.replay)
            server.start()
            url = server.url
    try:
        client = ReplayClient(url)
        stats = client.table_stats()
        client.close()
    finally:
        if server is not None:
            server.stop()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(f"{'table':<14}{'episodes':>10}{'steps':>10}")
        for table, row in stats.items():
            print(f"{table:<14}{row['episodes']:>10}{row['steps']:>10}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handlers = {"up": _cmd_up, "config": _cmd_config_show, "replay": _cmd_replay_stats}
    try:
        cfg = load_config(args.config, args.overrides)
        return handlers[args.command](args, cfg)
    except ConfigError as exc:
        print(f"fleetloop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fleetloop: interrupted; every process it started has been stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # one clear line for the operator; the traceback is in the run's log
        from fleetloop.launcher import LaunchError
        from fleetloop.replay.errors import ReplayError

        if not isinstance(exc, (LaunchError, ReplayError)):
            logging.getLogger("fleetloop").exception("unexpected error")
        print(f"fleetloop: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
