"""The Grafana dashboards: well-formed, every panel queries Prometheus through the datasource
variable, every expression parses (checked by promtool as recording rules) and names only metrics
fleetloop exports; and monitoring_refs extracts those names."""

import json
import re
from pathlib import Path

import pytest
from monitoring_refs import (
    substitute,
    declared_sample_names,
    PROMETHEUS_RULE,
    REPO,
    PromtoolError,
    dashboard_exprs,
    dashboard_files,
    metric_names_in_expr,
    metric_refs,
    panels,
    run_promtool,
)

UIDS = {"fleet.json": "fleetloop-fleet", "learner.json": "fleetloop-learner", "replay.json": "fleetloop-replay"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

EXPORTED = declared_sample_names()


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def graph_panels(dashboard: dict) -> list[dict]:
    return [panel for panel in panels(dashboard) if panel["type"] != "row"]


def recording_rules(path: Path, dashboard: dict) -> str:
    """A rule file with one group per panel target (named after the dashboard file, the panel and
    the target) that records the target's expression, variables substituted."""
    groups = [
        {"name": f"{path.name}: panel {panel['id']} {panel['title']!r}, target {target.get('refId', index)}",
         "rules": [{"record": f"dashboard:panel_{panel['id']}_{index}", "expr": substitute(target["expr"])}]}
        for panel in graph_panels(dashboard) for index, target in enumerate(panel.get("targets", []))
    ]
    return json.dumps({"groups": groups}, indent=1)


@pytest.fixture(params=dashboard_files(), ids=lambda path: path.name)
def dashboard_file(request) -> Path:
    return request.param


def test_the_three_dashboards_exist() -> None:
    assert sorted(path.name for path in dashboard_files()) == sorted(UIDS)


def test_dashboard_identity_and_variables(dashboard_file: Path) -> None:
    dashboard = load(dashboard_file)
    assert dashboard["uid"] == UIDS[dashboard_file.name]
    assert "fleetloop" in dashboard["tags"]
    assert dashboard["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["datasource"] == DATASOURCE
    for name, variable in variables.items():
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            assert metric_names_in_expr(query) <= EXPORTED and metric_names_in_expr(query), (
                f"{dashboard_file.name}: variable {name} queries {query!r}")


def test_panel_ids_are_unique(dashboard_file: Path) -> None:
    ids = [panel["id"] for panel in panels(load(dashboard_file))]
    assert len(ids) == len(set(ids)), f"{dashboard_file.name}: duplicate panel ids in {sorted(ids)}"


def panel_problems(name: str, dashboard: dict) -> list[str]:
    """What is wrong with a dashboard's panels, one line each, naming the file and the panel."""
    problems = []
    for panel in graph_panels(dashboard):
        where = f"{name}, panel {panel.get('title')!r}"
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"{where}: datasource is {panel.get('datasource')}, not {DATASOURCE}")
        if panel["type"] in {"timeseries", "stat"} and not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{where}: no unit")
        if not panel.get("targets"):
            problems.append(f"{where}: no targets")
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            if target.get("datasource") != DATASOURCE:
                problems.append(f"{where}, target {target.get('refId')}: datasource is {target.get('datasource')}")
            if not expr.strip():
                problems.append(f"{where}, target {target.get('refId')}: empty expr")
            elif not metric_names_in_expr(expr) and not re.search(r"\bup\b", expr):
                problems.append(f"{where}: {expr!r} uses no fleetloop_ metric (nor up)")
            elif unknown := metric_names_in_expr(expr) - EXPORTED:
                problems.append(f"{where}: {expr!r} uses {sorted(unknown)}, which fleetloop does not export")
    return problems


def test_panels_query_fleetloop_metrics_through_the_datasource_variable(dashboard_file: Path) -> None:
    problems = panel_problems(dashboard_file.name, load(dashboard_file))
    assert not problems, "\n".join(problems)


def test_a_panel_on_a_metric_no_role_exports_is_named() -> None:
    panel = {"id": 1, "type": "timeseries", "title": "Made up", "datasource": DATASOURCE,
             "fieldConfig": {"defaults": {"unit": "short"}},
             "targets": [{"refId": "A", "datasource": DATASOURCE, "expr": "rate(fleetloop_made_up_total[5m])"}]}
    assert panel_problems("fleet.json", {"panels": [panel]}) == [
        "fleet.json, panel 'Made up': 'rate(fleetloop_made_up_total[5m])' uses ['fleetloop_made_up_total'], "
        "which fleetloop does not export"]


def test_exprs_parse(dashboard_file: Path, tmp_path: Path) -> None:
    rules = tmp_path / f"{dashboard_file.name}.rules.yaml"
    rules.write_text(recording_rules(dashboard_file, load(dashboard_file)))
    output = run_promtool("check", rules)
    assert f"SUCCESS: {sum(len(panel['targets']) for panel in graph_panels(load(dashboard_file)))} rules" in output


def test_parse_check_names_the_dashboard_and_panel(tmp_path: Path) -> None:
    dashboard = {"panels": [{"id": 1, "type": "row", "title": "Row", "panels": [
        {"id": 2, "type": "timeseries", "title": "Broken panel",
         "targets": [{"refId": "A", "expr": 'sum(rate(fleetloop_learner_steps_total{namespace=~"$namespace"}[$__rate_interval])'}]},
    ]}]}
    rules = tmp_path / "broken.json.rules.yaml"
    rules.write_text(recording_rules(Path("broken.json"), dashboard))
    with pytest.raises(PromtoolError) as error:
        run_promtool("check", rules)
    assert "broken.json: panel 2 'Broken panel', target A" in str(error.value)
    assert "parse error" in str(error.value)


def test_substitute_fills_grafana_variables() -> None:
    expr = 'rate(x{namespace=~"$namespace", pod="${pod:regex}", job="[[job]]"}[$__rate_interval]) offset $__range'
    assert substitute(expr) == 'rate(x{namespace=~"fleet", pod="fleet", job="fleet"}[1m]) offset 6h'


def test_metric_names_in_expr() -> None:
    expr = ('histogram_quantile(0.9, sum by (le) (rate(fleetloop_a_seconds_bucket{reason="fleetloop_label_value"}[5m])))'
            " / on() fleetloop_b_total + up")
    assert metric_names_in_expr(expr) == {"fleetloop_a_seconds_bucket", "fleetloop_b_total"}


def test_dashboard_exprs_include_nested_panels_and_variables() -> None:
    dashboard = {
        "panels": [{"type": "row", "panels": [{"type": "stat", "targets": [{"expr": "fleetloop_nested"}]}]},
                   {"type": "timeseries", "targets": [{"expr": "fleetloop_top"}]}],
        "templating": {"list": [{"type": "query", "query": {"query": "label_values(fleetloop_var, namespace)"}},
                                {"type": "query", "query": "label_values(fleetloop_plain, namespace)"},
                                {"type": "datasource", "query": "prometheus"}]},
    }
    assert sorted(dashboard_exprs(dashboard)) == [
        "fleetloop_nested", "fleetloop_top", "label_values(fleetloop_plain, namespace)",
        "label_values(fleetloop_var, namespace)"]


def test_metric_refs_cover_every_file_with_exported_names() -> None:
    refs = metric_refs()
    files = [PROMETHEUS_RULE, *dashboard_files()]
    assert sorted(refs) == sorted(str(path.relative_to(REPO)) for path in files)
    for name, metrics in refs.items():
        assert metrics, f"{name} references no fleetloop_ metric"
        assert metrics <= EXPORTED, f"{name} references {sorted(metrics - EXPORTED)}, which fleetloop does not export"
    fleet = refs["deploy/k8s/base/monitoring/dashboards/fleet.json"]
    assert "fleetloop_bridge_requests_total" in fleet, "panels of the collapsed Robot bridges row are missed"
