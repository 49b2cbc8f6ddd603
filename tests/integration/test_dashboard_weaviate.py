"""The dashboard's Weaviate row reads metric names a real weaviate-server exports (the build in
.bin/, with its Prometheus endpoint on, after a write and a query)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from h2ogpt_api.retrieval.weaviate_process import WeaviatePorts, free_port, weaviate_environment
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import wait_for
from tests.support.weaviate import weaviate_binary_or_fail

CHART = Path(__file__).resolve().parents[2] / "charts" / "h2ogpt-operator"
DASHBOARD = CHART / "dashboards" / "h2ogpt-platform.json"
WEAVIATE_METRIC = re.compile(r"\b(object_count|queries_durations_ms_bucket|requests_total)\b")


@pytest.fixture(scope="module")
def weaviate_metrics_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data = tmp_path_factory.mktemp("weaviate-metrics")
    ports = WeaviatePorts.pick_free()
    metrics_port = free_port()
    env = {**weaviate_environment(data, ports), "PROMETHEUS_MONITORING_ENABLED": "true",
           "PROMETHEUS_MONITORING_PORT": str(metrics_port)}
    log = (data / "weaviate.log").open("w")
    process = subprocess.Popen(
        [str(weaviate_binary_or_fail()), "--host", "127.0.0.1", "--port", str(ports.http),
         "--scheme", "http"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    rest = f"http://127.0.0.1:{ports.http}"
    try:
        wait_for(lambda: _ready(rest), timeout=120, what="weaviate-server ready")
        yield rest, f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _ready(rest: str) -> bool:
    try:
        return httpx.get(f"{rest}/v1/.well-known/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_every_weaviate_metric_on_the_dashboard_is_exported(weaviate_metrics_url: tuple[str, str]) -> None:
    rest, metrics_url = weaviate_metrics_url
    schema = {"class": "Doc", "vectorizer": "none"}
    httpx.post(f"{rest}/v1/schema", json=schema, timeout=30).raise_for_status()
    httpx.post(f"{rest}/v1/objects", json={"class": "Doc", "properties": {}, "vector": [0.1, 0.2]},
               timeout=30).raise_for_status()
    query = {"query": "{Get{Doc(nearVector:{vector:[0.1,0.2]}){_additional{id}}}}"}
    httpx.post(f"{rest}/v1/graphql", json=query, timeout=30).raise_for_status()

    exported = {
        sample.name
        for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=10).text)
        for sample in family.samples
    }
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for panel in dashboard["panels"] for target in panel.get("targets", [])
            for name in WEAVIATE_METRIC.findall(target["expr"])}
    assert used == {"object_count", "queries_durations_ms_bucket", "requests_total"}
    assert used <= exported, sorted(used - exported)
