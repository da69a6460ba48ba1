"""A real Prometheus (Debian's package) scrapes a running `fleetloop up` with robot bridges:
PromQL answers for loss, replay size and success rate; every metric the rules and dashboards
use is in the roles' /metrics output; the alert rules evaluate without errors on real data;
every dashboard query runs."""

import json
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from tests.tools import require_tool
from monitoring_refs import metric_refs, panels, dashboard_files, substitute, write_rules_file

from tests.integration.test_loop import free_ports, scrape, start_up

pytestmark = pytest.mark.integration

ROUNDS_WANTED = 2
"""Rounds to observe before stopping the run: the success rate is set after a round's evaluation."""
QUERIES = {"learner loss": "fleetloop_learner_loss", "replay size": 'fleetloop_replay_episodes{table="pretrain"}',
           "actor success rate": "fleetloop_actor_success_rate",
           "evaluator success rate": "fleetloop_evaluator_success_rate"}
SAMPLE = re.compile(r"^(\w+)(?:\{.*\})? \S+")
TYPE = re.compile(r"^# TYPE (\w+) (\w+)")


def exposition_names(text: str) -> set[str]:
    """Names a /metrics text offers: its sample names, plus for a family with no samples yet (a
    labelled metric never incremented) the names its TYPE line promises."""
    names = set()
    for line in text.splitlines():
        if match := SAMPLE.match(line):
            names.add(match.group(1))
        elif match := TYPE.match(line):
            name, kind = match.groups()
            names |= {"counter": {name if name.endswith("_total") else f"{name}_total"},
                      "histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count"}}.get(kind, {name})
    return names


def prometheus_api(base: str, path: str, **params) -> dict:
    url = f"{base}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def write_prometheus_config(directory: Path, targets: dict[str, list[str]]) -> Path:
    rules = write_rules_file(directory)
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(rules)],
              "scrape_configs": [{"job_name": f"fleetloop-{role}", "static_configs": [{"targets": hosts}]}
                                 for role, hosts in targets.items()]}
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """Run `fleetloop up` (smoke, bridges) under a scraping Prometheus until ROUNDS_WANTED rounds
    are done; returns what /metrics served, the query results and Prometheus' address."""
    prometheus = require_tool("prometheus", "apt-get install prometheus (Debian's package)")
    tmp = tmp_path_factory.mktemp("monitoring")
    bridge_port, prometheus_port = free_ports(2)
    proc, endpoints = start_up(tmp / "run", "--set", "run.rounds=100", "--set", "actors.robot=bridge",
                               "--set", "actors.dagger.mode=hg-dagger", "--set", f"bridge.metrics_port={bridge_port}")
    endpoints |= {f"bridge-{i}": f"http://127.0.0.1:{bridge_port + i}/metrics" for i in range(2)}
    targets: dict[str, list[str]] = {}
    for name, url in endpoints.items():
        targets.setdefault(name.split("-")[0], []).append(urllib.parse.urlsplit(url).netloc)
    config = write_prometheus_config(tmp, targets)
    server = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "w"))
    base = f"http://127.0.0.1:{prometheus_port}"
    names: dict[str, set[str]] = {name: set() for name in endpoints}
    rounds = tmp / "run" / "rounds.json"
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            for name, url in endpoints.items():
                names[name] |= exposition_names(scrape(url) or "")
            if rounds.exists() and len(json.loads(rounds.read_text())) >= ROUNDS_WANTED:
                break
            time.sleep(1)
        else:
            pytest.fail(f"{ROUNDS_WANTED} rounds did not finish in time")
        time.sleep(3)  # a few more scrapes and rule evaluations on the final values
        results = {what: prometheus_api(base, "query", query=query)["data"]["result"]
                   for what, query in QUERIES.items()}
        up = prometheus_api(base, "query", query="up")["data"]["result"]
        yield {"names": names, "results": results, "up": up, "base": base, "prometheus_log": tmp / "prometheus.log"}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=300)
        server.terminate()
        server.wait(timeout=30)


def test_promql_returns_loss_replay_size_and_success_rate(observed):
    results = observed["results"]
    assert len(results["learner loss"]) == 1 and float(results["learner loss"][0]["value"][1]) > 0
    assert float(results["replay size"][0]["value"][1]) == 4, "smoke: 2 actors x 2 demonstrations"
    rates = {r["metric"]["actor"]: float(r["value"][1]) for r in results["actor success rate"]}
    assert set(rates) == {"actor-0", "actor-1"} and all(0 <= rate <= 1 for rate in rates.values())
    assert {r["metric"]["task"] for r in results["actor success rate"]} == {"reach"}
    [evaluated] = results["evaluator success rate"]
    assert 0 <= float(evaluated["value"][1]) <= 1
    down = [r["metric"] for r in observed["up"] if r["value"][1] != "1"]
    assert len(observed["up"]) == 7 and not down, f"targets down: {down}"  # learner, replay, evaluator, 2 actors, 2 bridges


def test_each_role_serves_its_own_metrics(observed):
    owners = {"learner": "fleetloop_learner_loss", "replay": "fleetloop_replay_episodes",
              "actor": "fleetloop_actor_success_rate", "bridge": "fleetloop_bridge_requests_total",
              "evaluator": "fleetloop_evaluator_success_rate"}
    for endpoint, names in observed["names"].items():
        role = endpoint.split("-")[0]
        for owner, metric in owners.items():
            assert (metric in names) == (owner == role), f"{endpoint} {'lacks' if owner == role else 'serves'} {metric}"


def test_every_metric_in_rules_and_dashboards_is_exported(observed):
    served = set().union(*observed["names"].values())
    assert all(observed["names"].values()), f"endpoints that served nothing: {observed['names']}"
    missing = {path: sorted(used - served) for path, used in metric_refs().items() if used - served}
    assert not missing, f"metrics no running role exports: {missing}"


def test_alert_rules_evaluate_on_real_data(observed):
    groups = prometheus_api(observed["base"], "rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules, f"Prometheus loaded no rules; see {observed['prometheus_log']}"
    failing = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not failing, failing
    firing = [a["labels"]["alertname"] for a in prometheus_api(observed["base"], "alerts")["data"]["alerts"]
              if a["state"] == "firing"]
    assert "FleetloopActorsMissing" not in firing and "FleetloopReplayDown" not in firing, firing


def test_every_dashboard_query_runs(observed):
    failures, empty = [], []
    for path in dashboard_files():
        dashboard = json.loads(path.read_text())
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                query = substitute(target["expr"], value=".*")
                reply = prometheus_api(observed["base"], "query", query=query)
                if reply["status"] != "success":
                    failures.append(f"{path.name} {panel['title']!r}: {reply}")
                elif not reply["data"]["result"]:
                    empty.append(f"{path.name} {panel['title']!r}")
    assert not failures, failures
    for title in ("learner.json 'Loss'", "replay.json 'Episodes'", "fleet.json 'Success rate by task'"):
        assert title not in empty, f"{title} shows no data on a running system"
