"""The monitoring files under deploy/ (alert rules, Grafana dashboards), the fleetloop_* metric names
their PromQL references, and promtool to check them.

Imported by the tests of this folder as ``from monitoring_refs import ...`` (pytest puts the folder
of a test module on sys.path)."""

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import yaml
from tests.tools import require_tool

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "k8s" / "base" / "monitoring"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
ALERT_TESTS = MONITORING / "alerts.test.yaml"
RULES_FILE_NAME = "alerts.rules.yaml"
"""The name alerts.test.yaml's rule_files gives the extracted spec."""

_METRIC = re.compile(r"(?<![\w:])fleetloop_\w+")
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')


class PromtoolError(Exception):
    """promtool rejected a file; the message names the file and gives promtool's output."""


def rule_groups() -> list[dict]:
    """The rule groups of the PrometheusRule's spec (the body of a Prometheus rule file)."""
    return yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"]


def write_rules_file(directory: Path) -> Path:
    """Write the PrometheusRule's spec as a Prometheus rule file named RULES_FILE_NAME into directory."""
    path = Path(directory) / RULES_FILE_NAME
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def dashboard_files() -> list[Path]:
    """The Grafana dashboard JSON files, sorted."""
    return sorted((MONITORING / "dashboards").glob("*.json"))


def metric_names_in_expr(expr: str) -> set[str]:
    """Every fleetloop_* metric name in a PromQL expression, suffixes such as _bucket kept as written;
    names inside string literals (label values) do not count."""
    return set(_METRIC.findall(_STRING.sub('""', expr)))


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel of a dashboard, including those nested in (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)


def dashboard_exprs(dashboard: dict) -> Iterator[str]:
    """The PromQL of every panel target and of every query template variable."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield target.get("expr", "")
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query", "")
            yield query.get("query", "") if isinstance(query, dict) else query


def metric_refs() -> dict[str, set[str]]:
    """For the rule file and each dashboard (paths relative to the repo), the metric names its
    expressions use."""
    refs = {str(PROMETHEUS_RULE.relative_to(REPO)): {
        name for group in rule_groups() for rule in group["rules"] for name in metric_names_in_expr(rule["expr"])
    }}
    for path in dashboard_files():
        dashboard = json.loads(path.read_text())
        refs[str(path.relative_to(REPO))] = {name for expr in dashboard_exprs(dashboard)
                                             for name in metric_names_in_expr(expr)}
    return refs


def run_promtool(command: str, path: Path) -> str:
    """Run ``promtool <command> rules <file>`` (command: check or test) in the file's folder and
    return its output; raise PromtoolError naming the file when promtool fails."""
    promtool = require_tool("promtool", "apt-get install prometheus")
    result = subprocess.run([promtool, command, "rules", path.name], cwd=path.parent, check=False,
                            capture_output=True, text=True, timeout=120)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise PromtoolError(f"promtool {command} rules {path} failed (exit {result.returncode}):\n{output}")
    return output


METRIC_MODULES = ("fleetloop.learner.learner", "fleetloop.learner.publisher", "fleetloop.actors.env_actor",
                  "fleetloop.actors.subscriber", "fleetloop.actors.bridge.connection", "fleetloop.actors.bridge.episode",
                  "fleetloop.actors.bridge.metrics", "fleetloop.actors.evaluator", "fleetloop.replay.metrics",
                  "fleetloop.protos.security")
"""The modules that declare fleetloop's metrics."""


def declared_sample_names() -> set[str]:
    """Every sample name the code declares (counters with _total, histograms as _bucket/_sum/_count),
    read from prometheus_client's registry after importing METRIC_MODULES, plus those registered
    only where they are served (the loop endpoint's and a bridge's). A quick offline check; the end-to-end test checks a running system."""
    import importlib

    import prometheus_client

    for module in METRIC_MODULES:
        importlib.import_module(module)
    from fleetloop.launcher import ACTORS_CONFIGURED
    from fleetloop.replay.metrics import ReplayCollector

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    from fleetloop.actors.bridge import metrics as bridge_metrics

    bridge = [family for metric in bridge_metrics.ALL for family in metric.describe()]
    families = [*prometheus_client.REGISTRY.collect(), *ReplayCollector(None).describe(), *ACTORS_CONFIGURED.describe(),
                *bridge]
    return {family.name + suffix for family in families if family.name.startswith("fleetloop_")
            for suffix in suffixes[family.type]}


VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
"""A Grafana variable: ${name}, ${name:format}, $name or [[name]]."""
DURATIONS = {"__rate_interval": "1m", "__interval": "15s", "__range": "6h"}


def substitute(expr: str, value: str = "fleet") -> str:
    """``expr`` with Grafana's time variables replaced by durations and any other variable by ``value``
    (e.g. ".*" for a multi-value variable's "All"), so that Prometheus can parse it."""
    return VARIABLE.sub(lambda match: DURATIONS.get(next(filter(None, match.groups())), value), expr)
