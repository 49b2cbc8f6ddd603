"""A real Prometheus operates the platform on the control plane: it is configured from the chart's and
the operator's ServiceMonitor and PrometheusRule objects read back from the apiserver
(tests/support/prometheus.py), scrapes the operator, the API services, the TGI fake and a real
Weaviate, and every dashboard panel and alert is evaluated against what it scraped.

Pods on kwok nodes run no container, so the processes the tests run stand in for them: the operator
process (the tests' own, with the chart's RBAC) for the chart's metrics Service, `h2ogpt-api` for the
stack's openai and gradio Services, the TGI fake for its inference Service, a weaviate-server with its
metrics port on for its weaviate Service. Discovery, selection, ports and labels are the real ones;
only the address scraped is the stand-in's. `h2ogpt-api` routes across two TGI fakes (two inference
replicas, `--inference_server a,b`) and holds requests while neither answers, so the routing and
scale-from-zero panels are drawn from what it did; a second, autoscaled stack feeds the autoscaler's.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from h2ogpt_api.retrieval.base import Identity
from h2ogpt_api.retrieval.weaviate_process import WeaviatePorts, free_port, weaviate_environment
from openai import APIStatusError, OpenAI

from hack.localcluster import find_binary
from tests.cluster.operator_harness import (
    OperatorProcess,
    get_json_or_none,
    install_crd,
    provide_volumes,
    remove_volumes,
    wait_for,
    wait_ready,
)
from tests.support.api_server import ApiServer, run_api_server
from tests.support.cluster import Cluster, answers_ok, condition
from tests.support.documents import DocumentLoader
from tests.support.e2e import helm
from tests.support.prometheus import Prometheus, has_data, screenshot_graph_page, selector_text, selectors
from tests.support.tgi_fake import RunningFake, TgiFake
from tests.support.weaviate import weaviate_binary_or_fail

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "h2ogpt-operator"
DASHBOARD = CHART / "dashboards" / "h2ogpt-platform.json"
RELEASE = "obs"
OPERATOR_SERVICE = f"{RELEASE}-h2ogpt-operator-metrics"
STACK = "watched"
MODEL = "org/model"
KEY = "sk-obs-test-key"  # named `ops` below; the name, never the key, is a metric label
# Panels that cannot have data in this run, each with the reason. Every other panel must.
NO_ENGINE_HERE = {
    "vLLM requests waiting and running": "no vLLM runs here (it needs a GPU); the one fake speaks TGI",
    "vLLM KV-cache usage": "no vLLM runs here (it needs a GPU); the one fake speaks TGI",
    "GPU utilization": "no GPU and no DCGM exporter on this machine",
    "GPU memory used": "no GPU and no DCGM exporter on this machine",
    "GPU power": "no GPU and no DCGM exporter on this machine",
}
# A second stack, autoscaled, for the autoscaler's panel: inference only (llama.cpp: no GPU, no volume),
# so it has no API pod to read and the autoscaler keeps (and publishes) its one replica.
AUTOSCALED = "autoscaled"
# The query with data only while a stack is not Ready (the "Stacks not Ready" time series): checked
# during the drill instead.
ONLY_WHILE_NOT_READY = "h2ogpt_operator_stack_ready == 0"
# The picture in docs/observability.md, refreshed only on request so that a test run leaves the tree
# clean: `make dashboard-picture` (H2OGPT_UPDATE_SCREENSHOTS=1, Prometheus's UI built).
DOCS_PICTURE = REPO / "docs" / "screenshots" / "prometheus-dashboard.png"
PICTURED = (  # (panel title, which of the queries of the panels so titled)
    ("Requests per second", 0), ("Time to first token", 1), ("TGI time per token", 1),
    ("Reconciles per second", 0), ("Stacks not Ready", 1),
)  # fmt: skip


@dataclass
class Observed:
    namespace: str
    prometheus: Prometheus
    operator: OperatorProcess
    api: ApiServer
    replicas: list[RunningFake]  # the API's two inference replicas; [0] stands in for the inference Service
    weaviate_url: str
    weaviate_metrics: str


@pytest.fixture(scope="module")
def weaviate_with_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A weaviate-server with its Prometheus endpoint on: (--weaviate_url, metrics address).

    Both endpoints must answer. Ports are picked free before Weaviate binds them, so another process
    may take one meanwhile: once, the REST API came up and the metrics port refused connections for
    the whole test. Then it starts again on other ports (up to 3 tries)."""
    for _ in range(3):
        data = tmp_path_factory.mktemp("weaviate-metrics")
        ports = WeaviatePorts.pick_free()
        metrics_port = free_port()
        metrics, rest = f"127.0.0.1:{metrics_port}", f"http://127.0.0.1:{ports.http}"
        with _weaviate_running(data, ports, metrics_port):
            wait_for(functools.partial(answers_ok, f"{rest}/v1/.well-known/ready"), 120, "weaviate-server")
            try:
                wait_for(functools.partial(answers_ok, f"http://{metrics}/metrics"), 30, "its metrics")
            except AssertionError:
                continue  # stopped on the way out; again on other ports
            yield f"{rest}?grpc_port={ports.grpc}", metrics
            return
    raise AssertionError(
        f"weaviate-server's metrics never answered; its log:\n{(data / 'weaviate.log').read_text()[-3000:]}"
    )


@contextlib.contextmanager
def _weaviate_running(data: Path, ports: WeaviatePorts, metrics_port: int) -> Iterator[None]:
    """weaviate-server on `ports`, its Prometheus endpoint on `metrics_port`, logging into `data`."""
    env = {
        **weaviate_environment(data, ports),
        "PROMETHEUS_MONITORING_ENABLED": "true",
        "PROMETHEUS_MONITORING_PORT": str(metrics_port),
    }
    with (data / "weaviate.log").open("w") as log:
        process = subprocess.Popen(
            [str(weaviate_binary_or_fail()), "--host", "127.0.0.1", "--port", str(ports.http),
             "--scheme", "http"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)



def stack_manifest(gpus: int) -> str:
    return json.dumps({
        "apiVersion": "h2ogpt.dev/v1alpha1", "kind": "H2oGPTDeployment", "metadata": {"name": STACK},
        "spec": {
            "model": {"name": MODEL}, "inference": {"engine": "tgi", "gpus": gpus},
            "monitoring": {"serviceMonitor": {"enabled": True, "interval": "1s"}},
        },
    })  # fmt: skip


DEMAND_LEASE = "obs-demand"


def autoscaled_manifest() -> str:
    return json.dumps({
        "apiVersion": "h2ogpt.dev/v1alpha1", "kind": "H2oGPTDeployment", "metadata": {"name": AUTOSCALED},
        "spec": {
            "model": {"name": MODEL},
            "inference": {"engine": "llamacpp", "autoscaling": {"minReplicas": 1, "maxReplicas": 2}},
            "retrieval": {"enabled": False}, "frontend": {"enabled": False}, "openai": {"enabled": False},
        },
    })  # fmt: skip


def netloc(url: str) -> str:
    return httpx.URL(url).netloc.decode()


@pytest.fixture(scope="module")
def observed(
    cluster: Cluster,
    prometheus: Prometheus,
    weaviate_with_metrics: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Observed]:
    """The chart installed (its ServiceMonitor and PrometheusRule on), the operator process, a TGI
    stack with its ServiceMonitor, `h2ogpt-api` in front of the TGI fake and Weaviate, and
    Prometheus configured from the namespace's monitoring objects with every target up."""
    install_crd(cluster)
    namespace = f"obs-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    tag = uuid.uuid4().hex[:6]
    provide_volumes(cluster, 4, tag)
    operator = OperatorProcess(
        cluster, tmp_path_factory.mktemp("obs-operator"), f"h2ogpt-operator-{tag}", "--namespace", namespace,
        "--autoscale-interval-seconds", "1",
    )  # fmt: skip
    replicas = [RunningFake(TgiFake()).start(), RunningFake(TgiFake()).start()]
    weaviate_url, weaviate_metrics = weaviate_with_metrics
    api_args = [
        "--inference_server", ",".join(fake.url for fake in replicas), "--hold_seconds", "60",
        "--base_model", MODEL, "--weaviate_url", weaviate_url,
        "--gradio", "True", "--h2ogpt_api_keys", json.dumps({"ops": KEY}),
        "--enforce_h2ogpt_api_key", "True", "--requests_per_minute", "12",
        # A held request renews it (h2ogpt_api_demand_renewals_total); made by hand below.
        "--demand_lease", f"{namespace}/{DEMAND_LEASE}",
    ]  # fmt: skip
    try:
        # The chart as a user with the Prometheus Operator installs it; short intervals for a test.
        helm(
            cluster,
            "install",
            RELEASE,
            str(CHART),
            "-n",
            namespace,
            "--wait",
            "--timeout",
            "180s",
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "serviceMonitor.interval=1s",
            "--set",
            "serviceMonitor.scrapeTimeout=1s",
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "prometheusRule.stackNotReadyFor=5s",
        )
        operator.start()
        wait_for(operator.is_leader, 30, "the operator to take the Lease")
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=stack_manifest(gpus=1))
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": DEMAND_LEASE}}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(lease))
        wait_ready(cluster, namespace, STACK)
        with run_api_server(api_args, {"KUBECONFIG": str(cluster.kubeconfig)}) as api:
            assert api.openai_url
            assert api.gradio_url
            stand_ins = {
                (namespace, OPERATOR_SERVICE, "http-metrics"): f"127.0.0.1:{operator.metrics_port}",
                (namespace, f"{STACK}-openai", "http"): netloc(api.openai_url),
                (namespace, f"{STACK}-gradio", "http"): netloc(api.gradio_url),
                (namespace, f"{STACK}-inference", "http"): netloc(replicas[0].url),
                (namespace, f"{STACK}-weaviate", "metrics"): weaviate_metrics,
            }
            wait_for(
                lambda: get_json_or_none(cluster, "servicemonitor", f"{STACK}-metrics", "-n", namespace),
                30,
                "the stack's ServiceMonitor",
            )
            prometheus.configure([namespace], stand_ins)
            # Three scrape jobs: the chart's one endpoint and the stack's two (http, Weaviate's metrics).
            prometheus.wait_targets_up(jobs=3)
            yield Observed(namespace, prometheus, operator, api, replicas, weaviate_url, weaviate_metrics)
    finally:
        operator.stop()
        for fake in replicas:
            fake.stop()
        helm(cluster, "uninstall", RELEASE, "-n", namespace, timeout=120, check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        remove_volumes(cluster, tag)


def traffic(client: OpenAI, loader: DocumentLoader) -> None:
    """Answers streamed and not, and a document query (Weaviate's search)."""
    messages = [{"role": "user", "content": "say the words one two three four five"}]
    client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, stream=True,  # type: ignore[arg-type]
    )  # fmt: skip
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    client.chat.completions.create(
        model=MODEL, max_tokens=16,
        messages=[{"role": "user", "content": "What colour is Zorbon's sky?"}],
        extra_body={"langchain_mode": "UserData", "langchain_action": "Query", "top_k_docs": 1},
    )  # fmt: skip


def held_until_a_replica_is_back(client: OpenAI, observed: Observed) -> None:
    """Both inference replicas stop: a request is held (Prometheus sees it), then forwarded and
    answered once they are back on their ports, as in a scale from zero."""
    replicas = observed.replicas
    for fake in replicas:
        fake.stop()
    question = [{"role": "user", "content": "held for a replica"}]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        asked = pool.submit(client.chat.completions.create, model=MODEL, max_tokens=2, messages=question)
        try:
            held = "h2ogpt_api_held_requests == 1"
            wait_for(lambda: observed.prometheus.query(held), 30, "the held request scraped")
        finally:
            for index, fake in enumerate(replicas):
                replicas[index] = fake.started_again()
        assert asked.result(timeout=60).choices[0].message.content


def run_workload(cluster: Cluster, observed: Observed) -> None:
    """What an operated platform sees: answers streamed and not, document queries, routed across two
    inference replicas, a request held while neither answers, a backend failure, a key over its
    limit, an autoscaled stack, and a stack whose children the apiserver refuses."""
    prometheus = observed.prometheus
    namespace = observed.namespace
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=autoscaled_manifest())
    loader = DocumentLoader(observed.weaviate_url, ["UserData", "MyData", "LLM"])
    loader.add_text("Zorbon's sky is green at noon.", "UserData", Identity("guest"), source="zorbon.txt")
    with OpenAI(base_url=observed.api.openai_url, api_key=KEY, max_retries=0) as client:
        # Twice, with a scrape between: a histogram born with its first observations has no rate
        # until it grows again (Prometheus sees no increase before a series' first sample).
        traffic(client, loader)
        held_until_a_replica_is_back(client, observed)
        for scraped in (
            "h2ogpt_api_time_to_first_token_seconds_count",
            "queries_durations_ms_count",
            'h2ogpt_api_routing_prefix_total{result="hit"}',
            'h2ogpt_api_held_wait_seconds_count{outcome="forwarded"}',
        ):
            wait_for(lambda scraped=scraped: prometheus.query(scraped), 30, f"{scraped} scraped")  # type: ignore[misc]
        traffic(client, loader)
        held_until_a_replica_is_back(client, observed)
        messages = [{"role": "user", "content": "say the words one two three four five"}]
        with pytest.raises(APIStatusError) as failed:
            client.chat.completions.create(
                model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "FAKE:500 fail please"}],
            )  # fmt: skip
        assert failed.value.status_code >= 500

        def refused() -> bool:
            try:
                client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)  # type: ignore[arg-type]
            except APIStatusError as error:
                if error.status_code != 429:
                    raise
                return True
            return False

        wait_for(refused, 60, "a 429 from the per-key limit", interval=0)

    # The autoscaled stack (applied first) is Ready, and the autoscaler has published its figures.
    wait_ready(cluster, namespace, AUTOSCALED)
    wait_for(
        lambda: prometheus.query(f'h2ogpt_operator_autoscaler_current_replicas{{name="{AUTOSCALED}"}} == 1'),
        30,
        "the autoscaler's replica counts scraped",
    )

    # A quota of zero Deployments: the operator's apply of a new stack's Deployments is refused.
    quota = {
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-deployments"},
        "spec": {"hard": {"count/deployments.apps": "0"}},
    }  # fmt: skip
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(quota))
    refused_stack = json.loads(stack_manifest(gpus=1))
    refused_stack["metadata"]["name"] = "refused"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(refused_stack))
    wait_for(
        lambda: observed.operator.metric_sum('h2ogpt_operator_reconciles_total{result="error"}') > 0,
        30,
        "a refused reconcile",
    )
    cluster.kubectl("delete", "h2ogpt", "refused", "-n", namespace)
    cluster.kubectl("delete", "resourcequota", "no-deployments", "-n", namespace)


def dashboard_targets(namespace: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel query, the namespace variable set as a user would."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"].replace("$namespace", namespace))
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


@pytest.fixture(scope="module")
def after_workload(cluster: Cluster, observed: Observed) -> Observed:
    run_workload(cluster, observed)
    # The workload's last counters scraped at least twice, so that every rate() over them has two
    # points (1 s scrape intervals).
    for last in (
        "h2ogpt_api_rate_limited_total",
        'h2ogpt_operator_reconciles_total{result="error"}',
        'h2ogpt_api_held_wait_seconds_count{outcome="forwarded"}',
        'h2ogpt_api_demand_renewals_total{result="sent"}',
    ):
        wait_for(
            lambda last=last: observed.prometheus.query(f"count_over_time({last}[5m]) >= 3"),  # type: ignore[misc]
            30,
            f"{last} scraped after the workload",
        )
    return observed


@pytest.fixture(scope="module", autouse=True)
def dashboard_picture(observed: Observed) -> Iterator[None]:
    """After the module's tests (the drill's not-Ready stack included), on request only: Prometheus's
    graph page with some of the dashboard's queries over the run, as docs/observability.md shows."""
    yield
    if os.environ.get("H2OGPT_UPDATE_SCREENSHOTS") != "1":
        return
    queries: dict[str, list[str]] = {}
    for title, expr in dashboard_targets(observed.namespace):
        queries.setdefault(title, []).append(expr)
    exprs = [queries[title][index] for title, index in PICTURED]
    screenshot_graph_page(observed.prometheus, exprs, minutes=2, out=DOCS_PICTURE)


# ---- the tests ------------------------------------------------------------------------------------------


def test_targets_are_the_monitoring_objects_services_with_the_operators_labels(observed: Observed) -> None:
    """Each target is a Service the ServiceMonitors select, labelled as the Prometheus Operator
    labels it (job = the Service; namespace, service, endpoint), and up."""
    found = {
        (t["labels"]["job"], t["labels"]["service"], t["labels"]["namespace"], t["labels"]["endpoint"])
        for t in observed.prometheus.targets()
    }
    ns = observed.namespace
    assert found == {
        (OPERATOR_SERVICE, OPERATOR_SERVICE, ns, "http-metrics"),
        (f"{STACK}-inference", f"{STACK}-inference", ns, "http"),
        (f"{STACK}-openai", f"{STACK}-openai", ns, "http"),
        (f"{STACK}-gradio", f"{STACK}-gradio", ns, "http"),
        (f"{STACK}-weaviate", f"{STACK}-weaviate", ns, "metrics"),
    }
    pools = {t["scrapePool"] for t in observed.prometheus.targets()}
    assert pools == {
        f"serviceMonitor/{ns}/{RELEASE}-h2ogpt-operator/0",
        f"serviceMonitor/{ns}/{STACK}-metrics/0",
        f"serviceMonitor/{ns}/{STACK}-metrics/1",
    }


def test_every_dashboard_panel_shows_data_after_a_workload(after_workload: Observed) -> None:
    prometheus, namespace = after_workload.prometheus, after_workload.namespace
    # The dashboard's namespace variable: label_values(h2ogpt_api_requests_total, namespace).
    assert namespace in prometheus.api("label/namespace/values", **{"match[]": "h2ogpt_api_requests_total"})
    empty, engines_with_data = [], []
    for title, expr in dashboard_targets(namespace):
        tree = prometheus.parse(expr)  # a syntax error fails here, naming the expression
        found = {selector_text(s): bool(prometheus.query(selector_text(s))) for s in selectors(tree)}
        if title in NO_ENGINE_HERE:
            if any(found.values()):
                engines_with_data.append(title)
            continue
        missing = [s for s, has in found.items() if not has]
        if missing:
            empty.append(f"{title}: no series for {missing}")
        elif expr != ONLY_WHILE_NOT_READY and not has_data(prometheus.query(expr)):
            empty.append(f"{title}: {expr} has no value")
    assert not empty, "panels that show no data:\n" + "\n".join(empty)
    assert not engines_with_data, f"listed as impossible here, yet with data: {engines_with_data}"


def test_every_alert_rule_is_loaded_from_the_prometheusrule_and_its_series_exist(
    after_workload: Observed,
) -> None:
    prometheus = after_workload.prometheus
    groups = prometheus.api("rules", type="alert")["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    rendered = yaml.safe_load(helm_template_rules())
    expected = {r["alert"] for g in rendered["spec"]["groups"] for r in g["rules"]}
    assert set(rules) == expected
    empty = []
    for name, rule in rules.items():
        assert rule["health"] != "err", (name, rule.get("lastError"))
        for selector in selectors(prometheus.parse(rule["query"])):
            if not prometheus.query(selector_text(selector)):
                empty.append(f"{name}: {selector_text(selector)}")
    assert not empty, f"alert expressions that select nothing: {empty}"
    # Nothing is wrong after the workload but the operator's own metrics Service in the chart
    # (its pod is a kwok fake, its stand-in answers): no alert fires.
    firing = [a["labels"]["alertname"] for a in prometheus.alerts() if a["state"] == "firing"]
    assert "H2oGPTOperatorDown" not in firing


def helm_template_rules() -> str:
    return subprocess.run(
        [find_binary("helm"), "template", RELEASE, str(CHART), "--show-only", "templates/prometheusrule.yaml",
         "--set", "prometheusRule.enabled=true"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip


def test_a_stack_made_not_ready_fires_the_alert_naming_it_which_resolves_when_it_recovers(
    cluster: Cluster, after_workload: Observed
) -> None:
    prometheus, namespace = after_workload.prometheus, after_workload.namespace
    wanted = {"alertname": "H2oGPTStackNotReady", "namespace": namespace, "name": STACK}

    def alert(state: str) -> dict[str, Any] | None:
        return next(
            (a for a in prometheus.alerts()
             if a["state"] == state and wanted.items() <= a["labels"].items()), None,
        )  # fmt: skip

    assert alert("firing") is None
    assert alert("pending") is None
    # More GPUs than any node has: the new inference pod cannot be scheduled.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=stack_manifest(gpus=16))

    def unschedulable() -> bool:
        ready = condition(get_json_or_none(cluster, "h2ogpt", STACK, "-n", namespace), "Ready")
        return bool(ready and ready["status"] == "False")

    wait_for(unschedulable, 45, "the stack not Ready")
    panel = ONLY_WHILE_NOT_READY
    assert panel in [expr for _, expr in dashboard_targets(namespace)]
    shown = wait_for(lambda: prometheus.query(panel), 15, "the 'Stacks not Ready' panel to show it")
    assert [(s["metric"]["namespace"], s["metric"]["name"]) for s in shown] == [(namespace, STACK)]
    firing = wait_for(lambda: alert("firing"), 40, "H2oGPTStackNotReady firing")
    assert f"{namespace}/{STACK}" in firing["annotations"]["description"]

    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=stack_manifest(gpus=1))
    wait_ready(cluster, namespace, STACK)
    wait_for(lambda: alert("firing") is None and alert("pending") is None, 30, "the alert to resolve")
    assert not prometheus.query(panel)
