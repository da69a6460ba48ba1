"""The PrometheusRule's alerts: promtool accepts them, alerts.test.yaml's unit tests pass, and the
promtool helper reports a broken file by name."""

import shutil

import pytest
import yaml
from monitoring_refs import (
    ALERT_TESTS,
    PROMETHEUS_RULE,
    RULES_FILE_NAME,
    PromtoolError,
    rule_groups,
    run_promtool,
    write_rules_file,
)


def alerts() -> list[dict]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def test_prometheus_rule_resource() -> None:
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["metadata"]["name"] == "fleetloop-alerts"
    assert resource["metadata"]["labels"] == {
        "app.kubernetes.io/name": "fleetloop", "app.kubernetes.io/part-of": "fleetloop"}
    assert list(resource["spec"]) == ["groups"], "spec must be exactly a Prometheus rule file body"


def test_alerts_have_severity_and_runbook() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, name
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#alert-{name.lower()}", name


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    names = {rule["alert"] for rule in alerts()}
    assert {case["alertname"] for case in cases} <= names, "alerts.test.yaml tests an alert the rules lack"
    for name in names:
        own = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in own), f"{ALERT_TESTS.name}: no test where {name} fires"
        assert any(not case.get("exp_alerts") for case in own), f"{ALERT_TESTS.name}: no test where {name} stays quiet"


def test_rules_pass_promtool_check(tmp_path) -> None:
    output = run_promtool("check", write_rules_file(tmp_path))
    assert f"SUCCESS: {len(alerts())} rules found" in output, output


def test_alert_unit_tests_pass(tmp_path) -> None:
    write_rules_file(tmp_path)
    shutil.copy(ALERT_TESTS, tmp_path)
    assert "SUCCESS" in run_promtool("test", tmp_path / ALERT_TESTS.name)


def test_check_names_a_rules_file_with_a_syntax_error(tmp_path) -> None:
    groups = rule_groups()
    groups[0]["rules"][0]["expr"] = "sum(rate(fleetloop_learner_steps_total[10m])"
    broken = tmp_path / "broken.rules.yaml"
    broken.write_text(yaml.safe_dump({"groups": groups}))
    with pytest.raises(PromtoolError) as error:
        run_promtool("check", broken)
    assert str(broken) in str(error.value)
    assert "parse error" in str(error.value)


def test_unit_tests_catch_an_alert_that_never_fires(tmp_path) -> None:
    groups = rule_groups()
    replay_down = next(rule for group in groups for rule in group["rules"] if rule["alert"] == "FleetloopReplayDown")
    replay_down["expr"] = "max by (namespace) (fleetloop_replay_up) == 2"
    (tmp_path / RULES_FILE_NAME).write_text(yaml.safe_dump({"groups": groups}))
    tests = tmp_path / ALERT_TESTS.name
    shutil.copy(ALERT_TESTS, tests)
    with pytest.raises(PromtoolError) as error:
        run_promtool("test", tests)
    assert str(tests) in str(error.value)
    assert "alertname: FleetloopReplayDown" in str(error.value)
