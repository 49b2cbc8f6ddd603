"""The tests' ServiceMonitor -> Prometheus translation (tests/support/prometheus.py), on the objects
the chart and the operator really make; its output checked by `promtool check config`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from h2ogpt_operator import builders
from h2ogpt_operator.builders import Stack
from h2ogpt_operator.models import H2oGPTDeploymentSpec

from hack.localcluster import find_binary
from tests.support.prometheus import TranslationError, rule_file, scrape_configs

CHART = Path(__file__).resolve().parents[2] / "charts" / "h2ogpt-operator"


def chart_objects(kind: str) -> dict[str, Any]:
    rendered = subprocess.run(
        [find_binary("helm"), "template", "rel", str(CHART), "-n", "ops",
         "--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    (found,) = [doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == kind]
    return dict(found)


def stack_monitor() -> dict[str, Any]:
    spec = H2oGPTDeploymentSpec.model_validate(
        {
            "model": {"name": "org/model"},
            "monitoring": {"serviceMonitor": {"enabled": True, "interval": "7s"}},
        }
    )
    monitor = builders.build_service_monitor(Stack(name="demo", namespace="team-a"), spec)
    assert monitor is not None
    return monitor


def test_the_operators_service_monitor_keeps_its_selector_ports_interval_and_relabelings(
    tmp_path: Path,
) -> None:
    http, metrics = scrape_configs(stack_monitor(), tmp_path / "kubeconfig")
    assert http["job_name"] == "serviceMonitor/team-a/demo-metrics/0"
    assert metrics["job_name"] == "serviceMonitor/team-a/demo-metrics/1"
    assert http["kubernetes_sd_configs"] == [
        {
            "role": "endpointslice",
            "kubeconfig_file": str(tmp_path / "kubeconfig"),
            "namespaces": {"names": ["team-a"]},
        }
    ]
    assert http["scrape_interval"] == "7s"
    relabels = http["relabel_configs"]
    assert {
        "action": "keep",
        "regex": "(demo);true",
        "source_labels": [
            "__meta_kubernetes_service_label_app_kubernetes_io_instance",
            "__meta_kubernetes_service_labelpresent_app_kubernetes_io_instance",
        ],
    } in relabels
    component = next(r for r in relabels if "app_kubernetes_io_component" in r["source_labels"][0])
    assert component["action"] == "keep"
    assert component["regex"] == "(inference|openai|gradio|weaviate);true"
    assert {
        "action": "keep",
        "source_labels": ["__meta_kubernetes_endpointslice_port_name"],
        "regex": "http",
    } in relabels
    # The builder's own rule (Weaviate only on its metrics port), after the Operator's labels.
    assert relabels[-1] == {
        "action": "drop",
        "regex": "weaviate",
        "source_labels": ["__meta_kubernetes_service_label_app_kubernetes_io_component"],
    }
    assert {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"} in relabels


def test_the_translation_of_the_chart_and_the_operator_objects_is_a_valid_prometheus_config(
    tmp_path: Path,
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    chart_monitor = chart_objects("ServiceMonitor")
    (operator_job,) = scrape_configs(
        chart_monitor, kubeconfig, {("ops", "rel-h2ogpt-operator-metrics", "http-metrics"): "127.0.0.1:8080"}
    )
    assert operator_job["honor_labels"] is True  # the per-stack series keep their own namespace
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_file(chart_objects("PrometheusRule"))))
    config = {
        "rule_files": [str(tmp_path / "rules.yaml")],
        "scrape_configs": [operator_job, *scrape_configs(stack_monitor(), kubeconfig)],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [find_binary("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ({"port": "http", "tlsConfig": {"insecureSkipVerify": True}}, "fields not translated: ['tlsConfig']"),
        ({"targetPort": 8080}, "fields not translated: ['targetPort']"),
        ({"path": "/metrics"}, "only endpoints that name a Service port"),
        ({"port": "http", "relabelings": [{"action": "replace", "unknown": 1}]}, "['unknown']"),
    ],
)
def test_what_the_translation_does_not_do_is_an_error_never_dropped(
    tmp_path: Path, endpoint: dict[str, Any], message: str
) -> None:
    monitor = {"metadata": {"name": "m", "namespace": "n"}, "spec": {"selector": {}, "endpoints": [endpoint]}}
    with pytest.raises(TranslationError, match=re.escape(message)):
        scrape_configs(monitor, tmp_path / "kubeconfig")
