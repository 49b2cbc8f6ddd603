"""The operator gives the api pods of a stack with several inference replicas what their EndpointSlice
watch needs (builders.build_api_rbac, routing_settings), on the real control plane, and takes it away
when the stack goes back to one replica.

The token is checked twice: by the apiserver's own authorizer (`kubectl auth can-i` as the
ServiceAccount), and by a real `h2ogpt-api` run here with a kubeconfig holding only that
ServiceAccount's token, routing across TGI fakes on loopback that hand-made EndpointSlices stand for.
Those slices belong to a Service of their own: the stack's kwok inference pods have addresses that
nothing answers on, and the Role reads every slice of the namespace alike. The apiserver refuses
loopback addresses in an EndpointSlice ("may not be in the loopback range"), so the fakes listen on
one of this machine's other addresses (traffic stays on the machine).
"""

from __future__ import annotations

import array
import concurrent.futures
import fcntl
import ipaddress
import json
import re
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.cluster.operator_harness import (
    OperatorProcess,
    get_json_or_none,
    items,
    running_operator,
    service_account_kubeconfig,
    wait_for,
    wait_ready,
)
from tests.support.api_server import run_api_server
from tests.support.cluster import Cluster, llamacpp_cr
from tests.support.tgi_fake import RunningFake, TgiFake

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NAME = "routed"
INSTANCE = "app.kubernetes.io/instance"
ACCOUNT = f"{NAME}-api"
IDENTITY_KINDS = "serviceaccounts,roles,rolebindings"
HAND_SERVICE = "hand-inference"


@pytest.fixture
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with running_operator(cluster, tmp_path_factory.mktemp("routing"), "h2ogpt-routing", 0) as process:
        yield process


def stack(replicas: int) -> dict[str, Any]:
    return llamacpp_cr(NAME, {"replicas": replicas})


def identity(cluster: Cluster, namespace: str) -> list[str]:
    found = items(cluster, IDENTITY_KINDS, namespace, f"{INSTANCE}={NAME}")
    return sorted(f"{i['kind']}/{i['metadata']['name']}" for i in found)


def api_pod_specs(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    specs = {}
    for component in ("openai", "gradio"):
        deployment = get_json_or_none(cluster, "deployment", f"{NAME}-{component}", "-n", namespace) or {}
        specs[component] = deployment.get("spec", {}).get("template", {}).get("spec", {})
    return specs


def settings(cluster: Cluster, namespace: str) -> dict[str, str]:
    return dict(
        (get_json_or_none(cluster, "configmap", f"{NAME}-config", "-n", namespace) or {}).get("data") or {}
    )


def can_i(cluster: Cluster, verb: str, resource: str, namespace: str, as_namespace: str) -> str:
    account = f"system:serviceaccount:{as_namespace}:{ACCOUNT}"
    result = cluster.kubectl("auth", "can-i", verb, resource, f"--as={account}", "-n", namespace, check=False)
    return result.stdout.strip()


def local_address() -> str:
    """An IPv4 address of one of this machine's interfaces that an EndpointSlice may hold (not loopback,
    not link-local), read from the kernel (SIOCGIFCONF): no route and no packet needed."""
    siocgifconf, record, records = 0x8912, 40, 64  # struct ifreq is 40 bytes on 64-bit Linux
    buffer = array.array("B", b"\0" * record * records)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("iL", len(buffer), buffer.buffer_info()[0])
        length = struct.unpack("iL", fcntl.ioctl(sock.fileno(), siocgifconf, request))[0]
    data = buffer.tobytes()[:length]
    for offset in range(0, length, record):
        address = ipaddress.IPv4Address(data[offset + 20 : offset + 24])
        if not (address.is_loopback or address.is_link_local or address.is_unspecified):
            return str(address)
    pytest.fail("this machine has no IPv4 address but loopback: an EndpointSlice cannot point at it")


def apply_slice(cluster: Cluster, namespace: str, name: str, address: str, port: int) -> None:
    """A slice of HAND_SERVICE with one Ready endpoint (a TGI fake's address and port)."""
    manifest = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": HAND_SERVICE},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def test_several_replicas_give_the_api_pods_a_token_that_only_reads_endpointslices(
    cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    # 1. Three inference replicas: ServiceAccount, Role and RoleBinding, the setting, the pods' identity.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(stack(3)))
    expected = [f"Role/{ACCOUNT}", f"RoleBinding/{ACCOUNT}", f"ServiceAccount/{ACCOUNT}"]
    wait_for(
        lambda: identity(cluster, namespace) == expected,
        60,
        "the api pods' ServiceAccount, Role, RoleBinding",
    )
    role = get_json_or_none(cluster, "role", ACCOUNT, "-n", namespace) or {}
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = get_json_or_none(cluster, "rolebinding", ACCOUNT, "-n", namespace) or {}
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ACCOUNT}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": namespace}]
    for item in items(cluster, IDENTITY_KINDS, namespace, f"{INSTANCE}={NAME}"):
        owners = item["metadata"].get("ownerReferences") or []
        assert [o["kind"] for o in owners] == ["H2oGPTDeployment"], item["metadata"]

    def api_pods_named_it() -> bool:
        return all(s.get("serviceAccountName") == ACCOUNT for s in api_pod_specs(cluster, namespace).values())

    wait_for(api_pods_named_it, 60, "the api Deployments to name the ServiceAccount")
    for pod_spec in api_pod_specs(cluster, namespace).values():
        assert pod_spec["automountServiceAccountToken"] is True
    inference = get_json_or_none(cluster, "deployment", f"{NAME}-inference", "-n", namespace) or {}
    assert "serviceAccountName" not in inference["spec"]["template"]["spec"]
    assert (
        settings(cluster, namespace)["H2OGPT_INFERENCE_ENDPOINTSLICES"]
        == f"{namespace}/{NAME}-inference:http"
    )

    # At rest the children cost no write (the new kinds compare equal to what was applied), and a Role
    # deleted by hand comes back (it is watched like every child).
    wait_ready(cluster, namespace, NAME, timeout=90)
    wait_for(
        lambda: all(p["status"].get("phase") == "Running" for p in items(cluster, "pods", namespace)),
        30,
        "all pods Running (until then the status still changes)",
    )

    def writes() -> dict[str, float]:
        """Writes of children: not the leader Lease's renewals, nor status and its Events (on a busy
        machine a kwok pod's readiness can still change in the window, seen once in a long run)."""
        return {
            key: value
            for key, value in operator.metrics().items()
            if key.startswith("h2ogpt_operator_api_writes_total")
            and not any(f'kind="{kind}"' in key for kind in ("Lease", "H2oGPTDeployment", "Event"))
        }

    before = writes()
    reconciles = operator.metric_sum("h2ogpt_operator_reconciles_total")
    wait_for(
        lambda: operator.metric_sum("h2ogpt_operator_reconciles_total") >= reconciles + 3, 30, "three resyncs"
    )
    after = writes()
    assert after == before, {
        key: (before.get(key), value) for key, value in after.items() if before.get(key) != value
    }
    cluster.kubectl("delete", "role", ACCOUNT, "-n", namespace)
    wait_for(
        lambda: get_json_or_none(cluster, "role", ACCOUNT, "-n", namespace),
        30,
        "the Role deleted by hand restored",
    )

    # 2. What the token may do, as the apiserver's authorizer answers.
    assert [can_i(cluster, verb, "endpointslices.discovery.k8s.io", namespace, namespace)
            for verb in ("get", "list", "watch")] == ["yes"] * 3  # fmt: skip
    refused = [
        ("create", "endpointslices.discovery.k8s.io", namespace),
        ("delete", "endpointslices.discovery.k8s.io", namespace),
        ("get", "secrets", namespace),
        ("list", "secrets", namespace),
        ("list", "pods", namespace),
        ("list", "configmaps", namespace),
        ("list", "endpointslices.discovery.k8s.io", "default"),
        ("list", "endpointslices.discovery.k8s.io", "kube-system"),
    ]
    assert [can_i(cluster, verb, resource, where, namespace) for verb, resource, where in refused] == [
        "no"
    ] * len(refused)

    # 3. A real h2ogpt-api with only that token follows slices and routes across both replicas.
    address = local_address()
    fakes = [RunningFake(TgiFake(), host=address).start(), RunningFake(TgiFake(), host=address).start()]
    try:
        for index, fake in enumerate(fakes):
            apply_slice(cluster, namespace, f"hand-{index}", address, fake.port)
        kubeconfig = service_account_kubeconfig(cluster, namespace, ACCOUNT, tmp_path / "api.kubeconfig")
        denied = cluster.kubectl(
            "--kubeconfig", str(kubeconfig), "get", "secrets", "-n", namespace, check=False
        )
        assert denied.returncode != 0, denied.stdout
        assert "forbidden" in denied.stderr.lower(), denied.stderr
        args = [
            "--inference_server", f"http://{HAND_SERVICE}.{namespace}.svc:80",
            "--inference_endpointslices", f"{namespace}/{HAND_SERVICE}:http",
            "--base_model", "org/model", "--langchain_modes", "['LLM']",
        ]  # fmt: skip
        with (
            run_api_server(args, env={"KUBECONFIG": str(kubeconfig)}) as api,
            OpenAI(base_url=api.openai_url, api_key="EMPTY", max_retries=0, timeout=30) as client,
        ):
            asked = iter(range(10_000))

            def both_replicas_answered() -> bool:
                index = next(asked)
                answer = client.chat.completions.create(
                    model="org/model",
                    messages=[{"role": "user", "content": f"question {index}"}],
                    max_tokens=4,
                    extra_headers={"X-Session-ID": f"session-{index}"},
                )
                assert f"question {index}" in (answer.choices[0].message.content or "")
                return all(fake.fake.stats.started > 0 for fake in fakes)

            wait_for(both_replicas_answered, 60, "requests to reach both replicas the slices name")
            log = api.log()
        # No apiserver answer was 403 (a bare "403" also matched a watch's resourceVersion=8403 once).
        assert not re.search(r"HTTP/[\d.]+ 403\b", log), log
        assert "Forbidden" not in log, log
    finally:
        for fake in fakes:
            fake.stop()

    # 4. Back to one replica: the identity is pruned, the setting and the pods' identity go.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(stack(1)))
    wait_for(
        lambda: identity(cluster, namespace) == [],
        60,
        "the api pods' ServiceAccount, Role, RoleBinding pruned",
    )
    wait_for(lambda: "H2OGPT_INFERENCE_ENDPOINTSLICES" not in settings(cluster, namespace), 30,
             "the setting removed from the ConfigMap")  # fmt: skip
    for pod_spec in api_pod_specs(cluster, namespace).values():
        assert "serviceAccountName" not in pod_spec
        assert "serviceAccount" not in pod_spec  # the deprecated alias would bring the name back
        assert "automountServiceAccountToken" not in pod_spec


def test_an_autoscaled_stacks_api_settings_hold_at_once_and_forward_to_the_first_ready_endpoint(
    cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    """What the operator gives the api pods of a stack that autoscales from zero across several replicas
    (hold, the EndpointSlice watch, the demand Lease, their token) runs a real h2ogpt-api: with no Ready
    endpoint a request is held at once and the Lease renewed; the moment a slice names a Ready endpoint
    the request goes there. Until this test, hold and watch together stopped h2ogpt-api at start."""
    autoscaled = llamacpp_cr(NAME, {"autoscaling": {"minReplicas": 0, "maxReplicas": 3, "holdSeconds": 120}})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(autoscaled))
    wait_ready(cluster, namespace, NAME, timeout=90)
    data = settings(cluster, namespace)
    assert data["H2OGPT_HOLD_SECONDS"] == "120"
    assert data["H2OGPT_INFERENCE_ENDPOINTSLICES"] == f"{namespace}/{NAME}-inference:http"
    assert data["H2OGPT_DEMAND_LEASE"] == f"{namespace}/{NAME}-demand"
    kubeconfig = service_account_kubeconfig(cluster, namespace, ACCOUNT, tmp_path / "api.kubeconfig")
    env = {
        **data,
        # The stack's kwok inference pods answer nothing: the slices of a Service of our own stand in.
        "H2OGPT_INFERENCE_ENDPOINTSLICES": f"{namespace}/{HAND_SERVICE}:http",
        # The API key comes from the stack's Secret in a pod; none is needed to ask it here.
        "H2OGPT_ENFORCE_H2OGPT_API_KEY": "False",
        "KUBECONFIG": str(kubeconfig),
    }
    address = local_address()
    fake = RunningFake(TgiFake(), host=address)
    with (
        run_api_server([], env=env) as api,
        OpenAI(base_url=api.openai_url, api_key="EMPTY", max_retries=0, timeout=60) as client,
        concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool,
    ):
        asked_at = time.monotonic()
        answer = pool.submit(
            client.chat.completions.create,
            model="org/model", messages=[{"role": "user", "content": "held until a replica"}], max_tokens=16,
        )  # fmt: skip
        wait_for(lambda: api.metric("h2ogpt_api_held_requests") == 1, 10, "the request held")
        held_after = time.monotonic() - asked_at
        wait_for(lambda: (get_json_or_none(cluster, "lease", f"{NAME}-demand", "-n", namespace) or {})
                 .get("spec", {}).get("renewTime"), 10, "the demand Lease renewed")  # fmt: skip
        fake.start()
        try:
            apply_slice(cluster, namespace, "hand-0", address, fake.port)
            announced_at = time.monotonic()
            reply = answer.result(timeout=30)
            forwarded_after = time.monotonic() - announced_at
        finally:
            fake.stop()
        log = api.log()
    assert "held until a replica" in (reply.choices[0].message.content or "")
    # At once: no connect to wait out first (nothing to connect to is known), and no backoff after.
    assert held_after < 3, f"held {held_after:.2f} s after the request"
    assert forwarded_after < 3, f"answered {forwarded_after:.2f} s after the slice was applied"
    print(f"held {held_after:.2f} s after the request; answered {forwarded_after:.2f} s after the slice")
    assert not re.search(r"HTTP/[\d.]+ 403\b", log), log
