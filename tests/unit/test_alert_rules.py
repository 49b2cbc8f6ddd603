"""The chart's alert rules through promtool: `check rules`, and `test rules` with
tests/prometheus/alerts-test.yaml, where every alert fires once and stays quiet once
(hack/alert_rules.py, which `make lint` runs too)."""

from __future__ import annotations

import yaml

from hack import alert_rules


def test_promtool_checks_and_tests_every_alert_of_the_chart() -> None:
    passed, output = alert_rules.check()
    assert passed, output
    assert "SUCCESS" in output


def test_an_alert_without_a_test_both_ways_is_reported() -> None:
    groups = alert_rules.render_rule_groups()
    tests = yaml.safe_load(alert_rules.TESTS.read_text())
    assert alert_rules.uncovered_alerts(groups, tests) == []
    only_firing = {"tests": [
        {"alert_rule_test": [{"alertname": "H2oGPTStackNotReady", "exp_alerts": [{"exp_labels": {}}]}]},
    ]}  # fmt: skip
    missing = alert_rules.uncovered_alerts(groups, only_firing)
    assert "H2oGPTStackNotReady (never quiet)" in missing
    assert "H2oGPTOperatorDown (never fires)" in missing
