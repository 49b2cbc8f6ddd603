"""The per-stack NetworkPolicies (pure builders) and the CR name limit that keeps every child name valid.

What the policies select among real pods is checked on the control plane
(tests/cluster/test_stack_security.py); here: which policies a spec gets, and their rules.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from h2ogpt_operator import builders, naming
from h2ogpt_operator.builders import Stack
from h2ogpt_operator.crd import build_crd
from h2ogpt_operator.models import H2oGPTDeploymentSpec, NetworkPolicyPeer
from pydantic import ValidationError

STACK = Stack(name="demo", namespace="team-a")
API_PODS = {
    "podSelector": {
        "matchLabels": {"app.kubernetes.io/name": "h2ogpt", "app.kubernetes.io/instance": "demo"},
        "matchExpressions": [
            {"key": "app.kubernetes.io/component", "operator": "In", "values": ["openai", "gradio"]}
        ],
    }
}


def policies(**sections: Any) -> dict[str, dict[str, Any]]:
    spec = H2oGPTDeploymentSpec.model_validate({"model": {"name": "org/model"}, **sections})
    return {p["metadata"]["name"]: p["spec"] for p in builders.build_network_policies(STACK, spec)}


def test_a_default_stack_gets_three_ingress_policies() -> None:
    found = policies()
    assert set(found) == {"demo-inference", "demo-weaviate", "demo-api"}
    assert all(p["policyTypes"] == ["Ingress"] for p in found.values())
    # TGI's port, from this stack's API pods only (a podSelector without namespaceSelector: this namespace).
    assert found["demo-inference"]["ingress"] == [
        {"from": [API_PODS], "ports": [{"protocol": "TCP", "port": 80}]}
    ]
    clients, peers = found["demo-weaviate"]["ingress"]
    assert clients == {
        "from": [API_PODS],
        "ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 50051}],
    }
    assert peers["from"][0]["podSelector"]["matchExpressions"][0]["values"] == ["weaviate"]
    assert "ports" not in peers  # memberlist gossips over TCP and UDP
    # Any source, but only on the two API ports.
    assert found["demo-api"]["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": 5000}, {"protocol": "TCP", "port": 7860}]}
    ]


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        (
            {"inference": {"engine": "external", "external": {"url": "http://x"}}},
            {"demo-weaviate", "demo-api"},
        ),
        ({"retrieval": {"enabled": False}}, {"demo-inference", "demo-api"}),
        ({"retrieval": {"externalUrl": "http://weaviate:8080"}}, {"demo-inference", "demo-api"}),
        ({"networkPolicy": {"enabled": False}}, set()),
    ],
)
def test_only_components_that_run_here_get_a_policy(sections: dict[str, Any], expected: set[str]) -> None:
    assert set(policies(**sections)) == expected


def test_a_disabled_frontend_leaves_only_the_openai_port_open() -> None:
    found = policies(frontend={"enabled": False})
    assert found["demo-api"]["podSelector"]["matchExpressions"][0]["values"] == ["openai"]
    assert found["demo-api"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 5000}]}]
    assert set(policies(frontend={"enabled": False}, openai={"enabled": False})) == {
        "demo-inference", "demo-weaviate",
    }  # fmt: skip


def test_api_and_metrics_sources_come_from_the_spec() -> None:
    api_from = [
        {"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {}},
        {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}},
    ]
    metrics_from = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    found = policies(networkPolicy={"apiFrom": api_from, "metricsFrom": metrics_from})
    assert found["demo-api"]["ingress"][0]["from"] == api_from
    assert found["demo-inference"]["ingress"][1] == {
        "from": metrics_from,
        "ports": [{"protocol": "TCP", "port": 80}],
    }
    # Weaviate's metrics listener, which the stack's ServiceMonitor scrapes, admits them too.
    assert found["demo-weaviate"]["ingress"][2] == {
        "from": metrics_from,
        "ports": [{"protocol": "TCP", "port": 2112}],
    }


@pytest.mark.parametrize(
    "peer",
    [{}, {"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0"}}],
)
def test_a_bad_source_is_refused(peer: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        NetworkPolicyPeer.model_validate(peer)


def test_the_source_rule_in_the_crd_decides_like_the_model() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    peer = spec["properties"]["networkPolicy"]["properties"]["apiFrom"]["items"]
    [rule] = peer["x-kubernetes-validations"]
    assert rule["rule"] == "has(self.ipBlock) != (has(self.podSelector) || has(self.namespaceSelector))"
    assert set(peer["properties"]) == {"podSelector", "namespaceSelector", "ipBlock"}


# --- the CR name limit ---------------------------------------------------------------------------------


def _longest_children(cr_name: str) -> list[tuple[str, str, int]]:
    """(what, value, limit) for every name and label value that grows with the CR name."""
    spec = H2oGPTDeploymentSpec.model_validate({"model": {"name": "org/model"}})
    children = builders.build_children(
        Stack(name=cr_name, namespace="ns"), spec, builders.OperatorConfig(), {}
    )
    found = [("Service", c["metadata"]["name"], 63) for c in children if c["kind"] == "Service"]
    statefulset = next(c["metadata"]["name"] for c in children if c["kind"] == "StatefulSet")
    # The StatefulSet controller labels each pod with `<statefulset>-<revision hash (up to 10)>`.
    found.append(("controller-revision-hash", f"{statefulset}-{'h' * naming.REVISION_HASH_MAX}", 63))
    found += [("label", value, 63) for c in children for value in c["metadata"]["labels"].values()]
    return found


def test_the_longest_allowed_name_keeps_every_child_within_its_limit() -> None:
    assert naming.MAX_CR_NAME_LENGTH == 43
    for what, value, limit in _longest_children("n" * naming.MAX_CR_NAME_LENGTH):
        assert len(value) <= limit, (what, value)
    # One more character and the revision label no longer fits: the limit is tight, not arbitrary.
    too_long = _longest_children("n" * (naming.MAX_CR_NAME_LENGTH + 1))
    assert [w for w, value, limit in too_long if len(value) > limit] == ["controller-revision-hash"]


def test_the_crd_refuses_such_names_with_the_limit_in_the_message() -> None:
    root = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = {rule["rule"]: rule["message"] for rule in root["x-kubernetes-validations"]}
    assert "at most 43 characters" in rules["self.metadata.name.size() <= 43"]
    pattern = re.search(r"matches\('(.*)'\)", next(r for r in rules if "matches" in r))
    assert pattern is not None
    for name, ok in [("mistral", True), ("a-1", True), ("9lives", False), ("a.b", False), ("a-", False)]:
        assert bool(re.match(pattern.group(1), name)) is ok, name
