#!/usr/bin/env python3
"""Check the chart's alert rules with Prometheus's own tools.

    python3 hack/alert_rules.py      # `make lint` runs it; exit 1 with promtool's output on a failure

The chart's PrometheusRule is rendered with its default values (release `rel`, namespace `ops`),
its `spec.groups` written as a Prometheus rule file, then:
- `promtool check rules` (syntax, templates);
- `promtool test rules tests/prometheus/alerts-test.yaml` (each alert fires and stays quiet on
  made-up series);
- every alert in the chart has, in that test file, an evaluation where it fires and one where it
  does not (a new alert without tests fails here).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "h2ogpt-operator"
TESTS = REPO / "tests" / "prometheus" / "alerts-test.yaml"
BIN = REPO / ".bin"


def tool(name: str) -> str:
    local = BIN / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"hack/alert_rules.py: '{name}' not found in .bin/ or on PATH: run 'make tools'")
    return found


def render_rule_groups() -> dict[str, object]:
    rendered = subprocess.run(
        [tool("helm"), "template", "rel", str(CHART), "--namespace", "ops",
         "--show-only", "templates/prometheusrule.yaml", "--set", "prometheusRule.enabled=true"],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    return {"groups": yaml.safe_load(rendered)["spec"]["groups"]}


def uncovered_alerts(groups: dict[str, object], tests: dict[str, object]) -> list[str]:
    """Alerts of the rule file without a test evaluation where they fire and one where they do not."""
    alerts = {rule["alert"] for group in groups["groups"] for rule in group["rules"] if "alert" in rule}  # type: ignore[attr-defined]
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in tests["tests"]:  # type: ignore[attr-defined]
        for check in test.get("alert_rule_test") or []:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    return sorted(f"{alert} (never {'fires' if alert not in fires else 'quiet'})"
                  for alert in alerts if alert not in fires or alert not in quiet)


def check() -> tuple[bool, str]:
    """(passed, what promtool and the coverage check said)."""
    groups = render_rule_groups()
    tests = yaml.safe_load(TESTS.read_text())
    with tempfile.TemporaryDirectory(prefix="alert-rules-") as tmp:
        (Path(tmp) / "rules.yaml").write_text(yaml.safe_dump(groups, sort_keys=False))
        shutil.copy(TESTS, Path(tmp) / TESTS.name)
        output = []
        passed = True
        for args in (["check", "rules", "rules.yaml"], ["test", "rules", TESTS.name]):
            result = subprocess.run([tool("promtool"), *args], cwd=tmp, capture_output=True, text=True,
                                    timeout=120, check=False)
            output.append(f"$ promtool {' '.join(args)}\n{result.stdout}{result.stderr}")
            passed = passed and result.returncode == 0
    missing = uncovered_alerts(groups, tests)
    if missing:
        output.append(f"alerts not tested both ways in {TESTS.relative_to(REPO)}: {', '.join(missing)}")
    return passed and not missing, "\n".join(output)


def main() -> int:
    passed, output = check()
    if not passed:
        print(output, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
