"""Security of a stack on the real control plane: names the apiserver refuses are refused at
`kubectl apply`, every pod is admitted where Pod Security `restricted` is enforced, the
NetworkPolicies select exactly their own stack's pods, and no generated credential shows up
anywhere but its Secret. One operator process (as the chart's ServiceAccount) for the module.

NetworkPolicies are checked as objects and by what their selectors select among real pods; no CNI
here enforces them (docs/security.md says why).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from h2ogpt_operator.naming import MAX_CR_NAME_LENGTH

from tests.cluster.operator_harness import (
    OperatorProcess,
    apply_manifest,
    get_json_or_none,
    install_crd,
    items,
    must_get_json,
    running_operator,
    sample,
    wait_for,
    wait_ready,
)
from tests.support.cluster import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

COMPONENT = "app.kubernetes.io/component"
INSTANCE = "app.kubernetes.io/instance"


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    # One volume per PVC of the module's stacks.
    with running_operator(cluster, tmp_path_factory.mktemp("operator"), "h2ogpt-security", 16) as process:
        yield process


def stack(name: str, **spec: Any) -> dict[str, Any]:
    """A CPU stack (llama.cpp): no GPU, no model cache PVC."""
    return {
        "apiVersion": "h2ogpt.dev/v1alpha1",
        "kind": "H2oGPTDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"name": "org/model"}, "inference": {"engine": "llamacpp"}, **spec},
    }


def selector_string(selector: dict[str, Any]) -> str:
    """A LabelSelector as kubectl's `-l` takes it, so the apiserver itself says what it selects."""
    terms = [f"{key}={value}" for key, value in selector.get("matchLabels", {}).items()]
    for expression in selector.get("matchExpressions", []):
        operator, key = expression["operator"], expression["key"]
        if operator in ("In", "NotIn"):
            terms.append(f"{key} {operator.lower()} ({','.join(expression['values'])})")
        else:
            terms.append(key if operator == "Exists" else f"!{key}")
    return ",".join(terms)


def selected(cluster: Cluster, namespace: str, selector: dict[str, Any]) -> set[str]:
    """`<instance>/<component>` of every live pod in `namespace` that `selector` selects."""
    return {
        f"{pod['metadata']['labels'][INSTANCE]}/{pod['metadata']['labels'][COMPONENT]}"
        for pod in items(cluster, "pods", namespace, selector_string(selector))
        if not pod["metadata"].get("deletionTimestamp")
    }


# --- item 10: names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a" * (MAX_CR_NAME_LENGTH + 1), f"metadata.name must be at most {MAX_CR_NAME_LENGTH} characters"),
        ("9lives", "metadata.name must start with a lowercase letter"),
        ("team.stack", "metadata.name must start with a lowercase letter"),
    ],
)
def test_a_name_whose_children_would_be_refused_is_refused_at_apply(
    cluster: Cluster, namespace: str, name: str, message: str
) -> None:
    install_crd(cluster)
    result = apply_manifest(cluster, namespace, stack(name), check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert get_json_or_none(cluster, "h2ogpt", name, "-n", namespace) is None


def test_the_longest_name_allowed_gets_a_whole_stack(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """43 characters: every child, the Weaviate pod (controller-revision-hash label) included, is created."""
    name = "l" * MAX_CR_NAME_LENGTH
    apply_manifest(cluster, namespace, stack(name))
    wait_ready(cluster, namespace, name, timeout=90)
    pods = items(cluster, "pods", namespace, f"{INSTANCE}={name}")
    assert {p["metadata"]["labels"][COMPONENT] for p in pods} == {"inference", "weaviate", "openai", "gradio"}
    # The headless Service has the longest name (61 characters); the Weaviate pod's revision label is
    # the tightest (up to 63): the pod exists, so the StatefulSet controller could label it.
    assert get_json_or_none(cluster, "service", f"{name}-weaviate-headless", "-n", namespace) is not None


# --- item 6: Pod Security `restricted` --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tgi-gpu", "vllm"])
def test_gpu_stacks_are_admitted_where_restricted_is_enforced(
    cluster: Cluster, namespace: str, operator: OperatorProcess, name: str
) -> None:
    """TGI and vLLM pods too (llamacpp: tests/cluster/test_operator.py): admission is the apiserver's."""
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    manifest = sample(name)
    cr = manifest["metadata"]["name"]
    apply_manifest(cluster, namespace, manifest)
    wait_ready(cluster, namespace, cr, timeout=90)
    pods = items(cluster, "pods", namespace, f"{INSTANCE}={cr}")
    # Every workload has all its pods (none refused by admission).
    workloads = items(cluster, "deployments,statefulsets", namespace, f"{INSTANCE}={cr}")
    assert {w["metadata"]["labels"][COMPONENT] for w in workloads} >= {"inference", "weaviate", "openai"}
    for workload in workloads:
        component = workload["metadata"]["labels"][COMPONENT]
        running = [p for p in pods if p["metadata"]["labels"][COMPONENT] == component]
        assert len(running) == workload["spec"]["replicas"], component
    inference = [p for p in pods if p["metadata"]["labels"][COMPONENT] == "inference"]
    assert inference
    assert all(p["spec"]["nodeName"] == "kwok-gpu-0" for p in inference)
    # Nothing was refused on the way (a refused pod leaves a FailedCreate event on its ReplicaSet).
    events = items(cluster, "events", namespace)
    assert [e["message"] for e in events if e.get("reason") == "FailedCreate"] == []
    # And the namespace would pass an audit at `restricted` as it stands.
    check = cluster.kubectl(
        "label", "--dry-run=server", "--overwrite", "namespace", namespace,
        "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest",
    )  # fmt: skip
    assert "violate" not in check.stderr, check.stderr


# --- item 5: NetworkPolicies ---------------------------------------------------------------------------


def test_network_policies_admit_only_their_own_stacks_api_pods(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    """Two stacks in one namespace: each policy selects its own component, and admits its own API pods."""
    apply_manifest(cluster, namespace, stack("alpha"))
    apply_manifest(cluster, namespace, stack("beta"))
    wait_ready(cluster, namespace, "alpha", timeout=90)
    wait_ready(cluster, namespace, "beta", timeout=90)
    for name, other in (("alpha", "beta"), ("beta", "alpha")):
        policies = {
            p["metadata"]["name"]: p["spec"]
            for p in items(cluster, "networkpolicies", namespace, f"{INSTANCE}={name}")
        }
        assert set(policies) == {f"{name}-inference", f"{name}-weaviate", f"{name}-api"}
        assert all(spec["policyTypes"] == ["Ingress"] for spec in policies.values())

        inference = policies[f"{name}-inference"]
        assert selected(cluster, namespace, inference["podSelector"]) == {f"{name}/inference"}
        [rule] = inference["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
        [source] = rule["from"]
        assert set(source) == {"podSelector"}  # this namespace only
        assert selected(cluster, namespace, source["podSelector"]) == {f"{name}/openai", f"{name}/gradio"}

        weaviate = policies[f"{name}-weaviate"]
        assert selected(cluster, namespace, weaviate["podSelector"]) == {f"{name}/weaviate"}
        clients, peers = weaviate["ingress"]
        assert [p["port"] for p in clients["ports"]] == [8080, 50051]
        assert selected(cluster, namespace, clients["from"][0]["podSelector"]) == {
            f"{name}/openai", f"{name}/gradio",
        }  # fmt: skip
        assert selected(cluster, namespace, peers["from"][0]["podSelector"]) == {f"{name}/weaviate"}
        assert f"{other}/openai" not in selected(cluster, namespace, clients["from"][0]["podSelector"])

        api = policies[f"{name}-api"]
        assert selected(cluster, namespace, api["podSelector"]) == {f"{name}/openai", f"{name}/gradio"}
        # No `apiFrom` in the spec: any source, on the API ports only.
        assert api["ingress"] == [
            {"ports": [{"protocol": "TCP", "port": 5000}, {"protocol": "TCP", "port": 7860}]}
        ]


def test_api_sources_come_from_the_spec_and_policies_can_be_turned_off(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    sources = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}},
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.96.0.0/16"]}},
    ]
    scraper = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    policy = {"apiFrom": sources, "metricsFrom": scraper}
    apply_manifest(cluster, namespace, stack("gamma", networkPolicy=policy))
    wait_ready(cluster, namespace, "gamma", timeout=90)
    api = must_get_json(cluster, "networkpolicy", "gamma-api", "-n", namespace)
    assert api["spec"]["ingress"][0]["from"] == sources
    inference = must_get_json(cluster, "networkpolicy", "gamma-inference", "-n", namespace)
    assert inference["spec"]["ingress"][1] == {"from": scraper, "ports": [{"protocol": "TCP", "port": 8000}]}

    apply_manifest(cluster, namespace, stack("gamma", networkPolicy={"enabled": False}))

    def pruned() -> bool:
        return not items(cluster, "networkpolicies", namespace, f"{INSTANCE}=gamma")

    wait_for(pruned, 30, "gamma's NetworkPolicies to be deleted")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}},
            "a network policy source is either ipBlock or podSelector/namespaceSelector",
        ),
        ({}, "a network policy source is either ipBlock or podSelector/namespaceSelector"),
        ({"ipBlock": {"cidr": "everywhere"}}, "spec.networkPolicy.apiFrom[0].ipBlock.cidr"),
    ],
)
def test_a_bad_network_source_is_refused_at_apply(
    cluster: Cluster, namespace: str, source: dict[str, Any], message: str
) -> None:
    install_crd(cluster)
    manifest = stack("delta", networkPolicy={"apiFrom": [source]})
    result = apply_manifest(cluster, namespace, manifest, check=False)
    assert result.returncode != 0
    assert message in result.stderr


# --- item 8: per-key limits from the CR ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"requestsPerMinute": -1}, "spec.auth.limits.requestsPerMinute: Invalid value: -1"),
        ({"tokensPerMinute": -5}, "should be greater than or equal to 0"),
        ({"tokensPerMinute": 10_000_000_001}, "should be less than or equal to 10000000000"),
        ({"requestsPerMinute": "many"}, 'spec.auth.limits.requestsPerMinute: Invalid value: "string"'),
    ],
)
def test_bad_limits_are_refused_at_apply(
    cluster: Cluster, namespace: str, limits: dict[str, Any], message: str
) -> None:
    install_crd(cluster)
    result = apply_manifest(cluster, namespace, stack("zeta", auth={"limits": limits}), check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert get_json_or_none(cluster, "h2ogpt", "zeta", "-n", namespace) is None


def test_limits_reach_the_api_pods_settings(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    limits = {"requestsPerMinute": 60, "tokensPerMinute": 9000}
    apply_manifest(cluster, namespace, stack("eta", auth={"limits": limits}))
    wait_ready(cluster, namespace, "eta", timeout=90)
    settings = must_get_json(cluster, "configmap", "eta-config", "-n", namespace)["data"]
    assert (settings["H2OGPT_REQUESTS_PER_MINUTE"], settings["H2OGPT_TOKENS_PER_MINUTE"]) == ("60", "9000")
    for component in ("openai", "gradio"):
        deployment = must_get_json(cluster, "deployment", f"eta-{component}", "-n", namespace)
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert {"configMapRef": {"name": "eta-config"}} in container["envFrom"]



# --- item 11: generated credentials stay in their Secret --------------------------------------------------


def test_generated_credentials_appear_in_no_configmap_event_status_or_log(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    apply_manifest(cluster, namespace, stack("epsilon"))
    wait_ready(cluster, namespace, "epsilon", timeout=90)
    secret = must_get_json(cluster, "secret", "epsilon-auth", "-n", namespace)
    data = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    generated = [json.loads(data["H2OGPT_H2OGPT_API_KEYS"])[0], data["WEAVIATE_API_KEY"]]
    assert all(len(token) >= 32 for token in generated)
    # Touch the stack so that it writes events and status again.
    apply_manifest(cluster, namespace, stack("epsilon", openai={"replicas": 2}))
    wait_ready(cluster, namespace, "epsilon", timeout=60)
    places = {
        "configmaps": json.dumps(items(cluster, "configmaps", namespace)),
        "events": json.dumps(items(cluster, "events", namespace)),
        "status": json.dumps(must_get_json(cluster, "h2ogpt", "epsilon", "-n", namespace).get("status")),
        "workloads": json.dumps(items(cluster, "deployments,statefulsets", namespace)),
        "operator log": operator.log_text(),
    }
    for token in generated:
        assert [where for where, text in places.items() if token in text] == []
