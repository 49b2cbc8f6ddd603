"""The Helm chart, checked with the real `helm` binary (no cluster): lint, render every
ci/*-values.yaml, the schema's rejections, RBAC shape, and the dashboard's and alerts'
metric names against the metrics contract in docs/architecture.md."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from hack.localcluster import find_binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "h2ogpt-operator"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [find_binary("helm"), *args], check=False, capture_output=True, text=True, timeout=60
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def render(*set_args: str, values: Path | None = None, namespace: str = "ops") -> list[dict[str, Any]]:
    """`helm template` with --set arguments; the manifests as dicts (empty documents dropped)."""
    args = ["template", "rel", str(CHART), "--namespace", namespace]
    if values is not None:
        args += ["--values", str(values)]
    for item in set_args:
        args += ["--set", item]
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def rules_as_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName or "*") tuples: an order-free view of a Role's rules."""
    return {
        (group, resource, verb, name)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        for name in rule.get("resourceNames", ["*"])
    }


def expand(
    groups: tuple[str, ...], resources: tuple[str, ...], verbs: str, name: str = "*"
) -> set[tuple[str, str, str, str]]:
    return {(g, r, v, name) for g in groups for r in resources for v in verbs.split()}


# What the operator's reconcile loop uses in a watched namespace, as measured from the audit log by
# tests/cluster/test_rbac_least_privilege.py (docs/security.md); the chart grants exactly this.
CHILD = "list watch create patch"
OPERATOR_NAMESPACED_RULES = (
    expand(("h2ogpt.dev",), ("h2ogptdeployments",), "list watch")
    | expand(("h2ogpt.dev",), ("h2ogptdeployments/status",), "patch")
    | expand(("h2ogpt.dev",), ("h2ogptdeployments/finalizers",), "update")
    | expand(("",), ("configmaps", "persistentvolumeclaims"), CHILD)
    | expand(("",), ("secrets",), "get list watch create patch")
    | expand(("",), ("services",), f"{CHILD} delete")
    | expand(("",), ("pods",), "list watch patch")
    | expand(("",), ("pods/proxy",), "get")
    | expand(("",), ("events",), "create")
    | expand(("apps",), ("deployments", "statefulsets"), f"{CHILD} delete")
    | expand(("networking.k8s.io",), ("networkpolicies",), f"{CHILD} delete")
    | expand(("monitoring.coreos.com",), ("servicemonitors",), "list watch create patch delete")
    # The api pods' identity (stacks with several inference replicas) ...
    | expand(("",), ("serviceaccounts",), f"{CHILD} delete")
    | expand(("rbac.authorization.k8s.io",), ("roles", "rolebindings"), f"{CHILD} delete")
    # ... and what its Role grants, held so that the operator may grant it (no escalate, no bind).
    | expand(("discovery.k8s.io",), ("endpointslices",), "get list watch")
    # The demand Lease of a stack its autoscaling can grow (its patch is also what the api Role grants).
    | expand(("coordination.k8s.io",), ("leases",), f"{CHILD} delete")
)
# Reading every CRD (is ServiceMonitor served?), patching only its own (the CRD applied at start).
CRD_READ_RULES = expand(("apiextensions.k8s.io",), ("customresourcedefinitions",), "get list watch") | expand(
    ("apiextensions.k8s.io",), ("customresourcedefinitions",), "patch", "h2ogptdeployments.h2ogpt.dev"
)
# Given namespaces, kopf lists and watches Namespace objects (measured: test_rbac_least_privilege.py).
NAMESPACE_READ_RULES = expand(("",), ("namespaces",), "list watch")
LEASE_RULES = expand(("coordination.k8s.io",), ("leases",), "get create update")


def test_chart_lints_clean_in_strict_mode() -> None:
    for extra in ([], ["--values", str(CHART / "ci" / "monitoring-values.yaml")]):
        result = helm("lint", "--strict", str(CHART), *extra)
        assert "0 chart(s) failed" in result.stdout
        assert "[WARNING]" not in result.stdout
        assert "[ERROR]" not in result.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_every_ci_values_file_renders_a_complete_release(values: Path) -> None:
    manifests = render(values=values)
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "ServiceAccount", "Service", "Role", "RoleBinding"} <= kinds
    for manifest in manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "rel"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_ci_values_cover_every_optional_template() -> None:
    rendered = {m["kind"] for values in CI_VALUES for m in render(values=values)}
    assert {"ServiceMonitor", "PrometheusRule", "PodDisruptionBudget", "ConfigMap", "ClusterRole"} <= rendered


def test_operator_pod_is_locked_down() -> None:
    (deployment,) = by_kind(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http-metrics": 8080, "http-health": 8081}
    assert container["image"] == "ghcr.io/h2ogpt-platform/h2ogpt-operator:0.1.0"
    # No --namespace: every namespace. The Lease names the pod.
    assert container["args"] == ["--identity=$(POD_NAME)", "--log-level=info"]


def test_watch_namespaces_and_extras_reach_the_container() -> None:
    manifests = render(
        "watchNamespaces={team-a,team-b}",
        "extraArgs={--workers=8}",
        "logLevel=debug",
        "extraEnv[0].name=TZ",
        "extraEnv[0].value=UTC",
        "stackImages.api=registry.example/h2ogpt-api:1.2.3",
        "image.digest=sha256:" + "a" * 64,
    )
    (deployment,) = by_kind(manifests, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == [
        "--identity=$(POD_NAME)",
        "--log-level=debug",
        "--namespace",
        "team-a",
        "--namespace",
        "team-b",
        "--workers=8",
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TZ"] == "UTC"
    assert env["H2OGPT_OPERATOR_API_IMAGE"] == "registry.example/h2ogpt-api:1.2.3"
    assert "H2OGPT_OPERATOR_TGI_IMAGE" not in env  # empty: the operator's own default
    assert container["image"] == "ghcr.io/h2ogpt-platform/h2ogpt-operator@sha256:" + "a" * 64


def test_all_namespaces_mode_grants_exactly_the_operator_rules_cluster_wide() -> None:
    manifests = render()
    (cluster_role,) = by_kind(manifests, "ClusterRole")
    assert rules_as_set(cluster_role["rules"]) == OPERATOR_NAMESPACED_RULES | CRD_READ_RULES
    (lease_role,) = by_kind(manifests, "Role")
    assert lease_role["metadata"]["namespace"] == "ops"
    assert rules_as_set(lease_role["rules"]) == LEASE_RULES
    (binding,) = by_kind(manifests, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-h2ogpt-operator", "namespace": "ops"}
    ]


def test_namespaced_mode_grants_nothing_cluster_wide_but_reading_crds_and_namespaces() -> None:
    manifests = render("watchNamespaces={team-a,team-b}")
    (cluster_role,) = by_kind(manifests, "ClusterRole")
    assert rules_as_set(cluster_role["rules"]) == CRD_READ_RULES | NAMESPACE_READ_RULES
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in by_kind(manifests, "Role")}
    assert set(roles) == {
        ("team-a", "rel-h2ogpt-operator"),
        ("team-b", "rel-h2ogpt-operator"),
        ("ops", "rel-h2ogpt-operator-leader-election"),
    }
    assert rules_as_set(roles["team-a", "rel-h2ogpt-operator"]["rules"]) == OPERATOR_NAMESPACED_RULES
    bindings = by_kind(manifests, "RoleBinding")
    assert {b["metadata"]["namespace"] for b in bindings} == {"team-a", "team-b", "ops"}
    for binding in bindings:
        assert binding["subjects"][0]["namespace"] == "ops"


def test_rbac_and_serviceaccount_can_be_left_to_the_user() -> None:
    manifests = render("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=ops-sa")
    assert not {"ClusterRole", "Role", "RoleBinding", "ClusterRoleBinding", "ServiceAccount"} & {
        m["kind"] for m in manifests
    }
    (deployment,) = by_kind(manifests, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "ops-sa"


def test_optional_integrations_are_off_until_toggled() -> None:
    kinds = {m["kind"] for m in render("grafanaDashboard.enabled=false", "tests.enabled=false")}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "ConfigMap", "H2oGPTDeployment", "Pod"}
    toggled = render(
        "serviceMonitor.enabled=true", "prometheusRule.enabled=true", "serviceMonitor.namespace=mon"
    )
    (monitor,) = by_kind(toggled, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "mon"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    (service,) = by_kind(toggled, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_helm_test_pod_checks_the_metrics_service() -> None:
    manifests = render()
    (pod,) = by_kind(manifests, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (service,) = by_kind(manifests, "Service")
    script = pod["spec"]["containers"][0]["command"][-1]
    assert f"http://{service['metadata']['name']}.ops.svc:8080/metrics" in script
    compile(script, "helm-test", "exec")  # the script the pod runs is valid Python


def test_optional_stack_renders_the_spec_in_a_watched_namespace() -> None:
    manifests = render(
        "stack.enabled=true", "stack.name=chat", "stack.spec.model.name=HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    (stack,) = by_kind(manifests, "H2oGPTDeployment")
    assert stack["apiVersion"] == "h2ogpt.dev/v1alpha1"
    assert stack["metadata"]["name"] == "chat"
    assert stack["metadata"]["labels"]["app.kubernetes.io/component"] == "stack"
    assert stack["spec"] == {"model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"}}
    refused = helm(
        "template",
        "rel",
        str(CHART),
        "--set",
        "stack.enabled=true",
        "--set",
        "watchNamespaces={team-a}",
        check=False,
    )
    assert refused.returncode != 0
    assert 'stack.namespace "default" is not in watchNamespaces' in refused.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("replicaCount=-1", "replicaCount: Must be greater than or equal to 0"),
        ("replicaCount=two", "replicaCount: Invalid type. Expected: integer, given: string"),
        ("image.pullPolicy=Sometimes", 'image.pullPolicy must be one of the following: "Always"'),
        ("watchNamespaces={Team_A}", "watchNamespaces.0: Does not match pattern"),
        ("replicas=2", "Additional property replicas is not allowed"),
        ("logLevel=trace", 'logLevel must be one of the following: "debug"'),
        ("image.digest=latest", "image.digest: Does not match pattern"),
        ("serviceMonitor.interval=30", "serviceMonitor.interval: Invalid type. Expected: string"),
        (
            "prometheusRule.apiErrorRatioThreshold=5",
            "apiErrorRatioThreshold: Must be less than or equal to 1",
        ),
        ("service.type=Ingress", 'service.type must be one of the following: "ClusterIP"'),
        ("stack.name=My_Stack", "stack.name: Does not match pattern"),
    ],
)
def test_schema_rejects_bad_values_with_a_clear_message(setting: str, message: str) -> None:
    result = helm("template", "rel", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def test_every_value_is_documented_and_in_the_schema() -> None:
    text = (CHART / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param (\S+) ", text, flags=re.MULTILINE))
    values = yaml.safe_load(text)
    schema = json.loads((CHART / "values.schema.json").read_text())

    def leaves(node: dict[str, Any], prefix: str = "") -> set[str]:
        """Documented keys: maps whose keys are chart settings are walked; free-form maps are leaves."""
        found: set[str] = set()
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and f"{path}" not in documented:
                found |= leaves(value, f"{path}.")
            else:
                found.add(path)
        return found

    assert leaves(values) == documented
    for path in documented:
        node = schema
        for part in path.split("."):
            if "properties" not in node and node.get("additionalProperties") is not False:
                # A free-form map (e.g. `podSecurityContext`, `grafanaDashboard.labels`) validates
                # its keys itself; its entries are documented one by one for the values table.
                break
            assert part in node["properties"], f"{path} is not described by values.schema.json"
            node = node["properties"][part]


CONTRACT_METRIC = re.compile(r"`(h2ogpt_(?:api|operator)_[a-z_]+)")
USED_METRIC = re.compile(r"\b(h2ogpt_(?:api|operator)_[a-z_]+)")


def contract_metrics() -> set[str]:
    return set(CONTRACT_METRIC.findall((REPO / "docs" / "architecture.md").read_text()))


def series_name(name: str) -> str:
    """A histogram's series name back to the metric it belongs to."""
    return re.sub(r"_(bucket|sum|count)$", "", name)


def test_dashboard_queries_parse_and_use_only_contract_metrics() -> None:
    dashboard = json.loads((CHART / "dashboards" / "h2ogpt-platform.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 10
    used = set()
    for expr in exprs:
        promql_parser.parse(expr.replace("$namespace", ".*"))
        used |= {series_name(m) for m in USED_METRIC.findall(expr)}
    # Every metric of the contract is on the dashboard, and nothing else is.
    assert used == contract_metrics()
    (configmap,) = by_kind(render(), "ConfigMap")
    assert json.loads(configmap["data"]["h2ogpt-platform.json"]) == dashboard
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_alert_rules_parse_and_use_only_contract_metrics() -> None:
    (rule,) = by_kind(render("prometheusRule.enabled=true"), "PrometheusRule")
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert {a["alert"] for a in alerts} >= {
        "H2oGPTOperatorDown",
        "H2oGPTStackNotReady",
        "H2oGPTAPIHighErrorRate",
    }
    for alert in alerts:
        promql_parser.parse(alert["expr"])
        assert {series_name(m) for m in USED_METRIC.findall(alert["expr"])} <= contract_metrics()
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"]
    (down,) = [a for a in alerts if a["alert"] == "H2oGPTOperatorDown"]
    assert 'job="rel-h2ogpt-operator-metrics"' in down["expr"]


# Engine metric names as each engine documents them (checked by hand against the pages named;
# update with the page when an engine renames one). Weaviate's are checked against a running
# weaviate-server instead (tests/integration/test_dashboard_weaviate.py).
DOCUMENTED_ENGINE_METRICS = {
    # huggingface.co/docs/text-generation-inference/reference/metrics
    "tgi": {
        "tgi_queue_size", "tgi_batch_current_size", "tgi_batch_current_max_tokens",
        "tgi_request_mean_time_per_token_duration", "tgi_request_duration", "tgi_request_count",
        "tgi_request_generated_tokens", "tgi_request_input_length", "tgi_request_queue_duration",
    },
    # docs.vllm.ai/en/stable/usage/metrics (V1 engine names)
    "vllm": {
        "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
        "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
    },
    # NVIDIA dcgm-exporter's default counters (etc/default-counters.csv)
    "dcgm": {
        "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_MEM_COPY_UTIL",
    },
}
ENGINE_METRIC = re.compile(r"\b((?:tgi_|DCGM_FI_)[A-Za-z_]+|vllm:[a-z_]+)")
WEAVIATE_METRIC = re.compile(r"\b(object_count|queries_durations_ms_bucket|requests_total)\b")


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((CHART / "dashboards" / "h2ogpt-platform.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_engine_rows_use_only_documented_engine_metrics() -> None:
    used = {series_name(name) for expr in dashboard_exprs() for name in ENGINE_METRIC.findall(expr)}
    documented = set().union(*DOCUMENTED_ENGINE_METRICS.values())
    assert used <= documented, sorted(used - documented)
    # Each engine has a row: at least two of its metrics are shown.
    for engine, names in DOCUMENTED_ENGINE_METRICS.items():
        assert len(used & names) >= 2, engine
    assert {n for e in dashboard_exprs() for n in WEAVIATE_METRIC.findall(e)} == {
        "object_count", "queries_durations_ms_bucket", "requests_total",
    }
