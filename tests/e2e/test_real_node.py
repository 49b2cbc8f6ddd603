"""The local cluster's real node (hack/realnode.py): containerd + runc + kubelet registered to the
apiserver, a bridge pod network, kube-proxy, NetworkPolicies enforced by kube-router, CoreDNS, a
default StorageClass with a dynamic provisioner, and the kubelet's TLS API behind
`kubectl logs/exec/port-forward`.

Pods here use the busybox image the node makes for itself, so this tier needs no image build.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hack import realnode
from tests.support.cluster import Cluster, must_get_json, wait_for
from tests.support.e2e import e2e_namespace, fetch_from_pod, port_forward

pytestmark = [pytest.mark.e2e]

BUSYBOX = realnode.HELPER_IMAGE


@pytest.fixture
def node_namespace(cluster: Cluster) -> Iterator[str]:
    with e2e_namespace(cluster, "node") as name:
        yield name


def web_pod(name: str, text: str) -> dict[str, Any]:
    script = f"mkdir -p /tmp/www && echo {text} > /tmp/www/index.html && echo serving {text} && " \
             "exec httpd -f -p 8080 -h /tmp/www"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": [{"name": "web", "image": BUSYBOX, "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", script],
                                     "ports": [{"containerPort": 8080, "name": "http"}],
                                     "readinessProbe": {"httpGet": {"path": "/", "port": 8080},
                                                        "periodSeconds": 1}}]}}


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": "http"}]}}


def apply(cluster: Cluster, namespace: str, *manifests: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifests)}))


def wait_ready(cluster: Cluster, namespace: str, pod: str) -> None:
    cluster.kubectl("wait", "--for=condition=Ready", f"pod/{pod}", "-n", namespace, "--timeout=120s",
                    timeout=130)


def test_the_node_is_registered_ready_tainted_and_runs_containerd_2(cluster: Cluster) -> None:
    node = must_get_json(cluster, "node", realnode.NODE_NAME)
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready
    info = node["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://2."), info
    assert info["kubeletVersion"].startswith("v1.34."), info
    assert node["metadata"]["labels"][realnode.NODE_LABEL[0]] == realnode.NODE_LABEL[1]
    assert {"key": realnode.NODE_TAINT_KEY, "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == realnode.NODE_IP


def test_services_route_from_the_host_and_between_pods_by_dns_name(
    cluster: Cluster, node_namespace: str
) -> None:
    apply(cluster, node_namespace, web_pod("web", "hello-from-a-real-pod"), service("web"))
    wait_ready(cluster, node_namespace, "web")
    pod = must_get_json(cluster, "pod", "web", "-n", node_namespace)
    assert pod["spec"]["nodeName"] == realnode.NODE_NAME
    assert pod["status"]["podIP"].startswith("10.244.0.")
    cluster_ip = must_get_json(cluster, "svc", "web", "-n", node_namespace)["spec"]["clusterIP"]
    # From the host, through kube-proxy's rules for the ClusterIP.
    answer = wait_for(lambda: _get(f"http://{cluster_ip}/"), 30, "the ClusterIP to answer from the host")
    assert answer == "hello-from-a-real-pod\n"
    # From another pod, by the Service's DNS name (CoreDNS), through kube-proxy again.
    client = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
              "spec": {"restartPolicy": "Never", "containers": [{
                  "name": "client", "image": BUSYBOX, "imagePullPolicy": "Never",
                  "command": ["sh", "-c", f"wget -qO- http://web.{node_namespace}.svc.cluster.local/ && "
                                          f"wget -qO- http://web.{node_namespace}.svc/"]}]}}
    apply(cluster, node_namespace, client)
    wait_for(lambda: must_get_json(cluster, "pod", "client", "-n", node_namespace)["status"]["phase"]
         in ("Succeeded", "Failed"), 90, "the client pod to finish")
    logs = cluster.kubectl("logs", "client", "-n", node_namespace).stdout
    assert logs == "hello-from-a-real-pod\n" * 2, logs
    assert must_get_json(cluster, "pod", "client", "-n", node_namespace)["status"]["phase"] == "Succeeded"


def test_network_policies_are_enforced_between_pods(cluster: Cluster, node_namespace: str) -> None:
    apply(cluster, node_namespace, web_pod("web", "only-for-friends"), service("web"))
    wait_ready(cluster, node_namespace, "web")
    url = f"http://web.{node_namespace}.svc/"
    # A Ready pod is not yet an endpoint kube-proxy routes to: until its next sync the ClusterIP refuses
    # connections (CI saw a stranger refused there under load). Once the host is answered through the
    # ClusterIP, only a policy can keep a pod out.
    cluster_ip = must_get_json(cluster, "svc", "web", "-n", node_namespace)["spec"]["clusterIP"]
    wait_for(lambda: _get(f"http://{cluster_ip}/"), 30, "the ClusterIP to answer from the host")
    assert fetch_from_pod(cluster, node_namespace, "stranger-before", url) == "REACHED"
    only_friends = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": "web-friends-only"},
                    "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                             "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}],
                                          "ports": [{"port": 8080, "protocol": "TCP"}]}]}}
    apply(cluster, node_namespace, only_friends)
    # kube-router applies a policy on its watch event; give it a few seconds the first time.
    wait_for(lambda: fetch_from_pod(cluster, node_namespace, "stranger", url) == "REFUSED" or None, 60,
             "the policy to refuse a pod it does not list")
    # A new pod joins the policy's allowed set on kube-router's next sync after its watch event: a
    # friend started a moment after the policy may be refused until then (seen once under load).
    wait_for(lambda: fetch_from_pod(cluster, node_namespace, "friend", url, {"role": "friend"}) == "REACHED"
             or None, 60, "the policy to let a pod it lists through")
    # The node itself (kubelet probes, the host's clients) is never cut off.
    assert _get(f"http://{cluster_ip}/") == "only-for-friends\n"
    cluster.kubectl("delete", "networkpolicy", "web-friends-only", "-n", node_namespace)
    wait_for(lambda: fetch_from_pod(cluster, node_namespace, "stranger-after", url) == "REACHED" or None, 60,
             "the pod to be reached again once the policy is gone")


def phase(cluster: Cluster, namespace: str, pod: str) -> str:
    return str(must_get_json(cluster, "pod", pod, "-n", namespace)["status"]["phase"])


def _get(url: str) -> str | None:
    try:
        return httpx.get(url, timeout=3).text
    except httpx.HTTPError:
        return None


def test_logs_exec_and_port_forward_reach_the_kubelet(cluster: Cluster, node_namespace: str) -> None:
    apply(cluster, node_namespace, web_pod("web", "via-the-kubelet"))
    wait_ready(cluster, node_namespace, "web")
    assert "serving via-the-kubelet" in cluster.kubectl("logs", "web", "-n", node_namespace).stdout
    exec_result = cluster.kubectl("exec", "web", "-n", node_namespace, "--", "cat", "/tmp/www/index.html")
    assert exec_result.stdout == "via-the-kubelet\n"
    user = cluster.kubectl("exec", "web", "-n", node_namespace, "--", "id", "-u").stdout.strip()
    assert user == "0"  # busybox image has no USER: the runtime's default, in the container's own namespaces
    with port_forward(cluster, node_namespace, "pod/web", 8080) as port:
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text == "via-the-kubelet\n"


def test_a_pvc_binds_through_the_default_storage_class_and_keeps_data(
    cluster: Cluster, node_namespace: str
) -> None:
    classes = must_get_json(cluster, "storageclass")["items"]
    default_key = "storageclass.kubernetes.io/is-default-class"
    default = [c["metadata"]["name"] for c in classes
               if c["metadata"].get("annotations", {}).get(default_key) == "true"]
    assert default == [realnode.STORAGE_CLASS]
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}

    def writer(name: str, command: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"restartPolicy": "Never",
                         "containers": [{"name": "c", "image": BUSYBOX, "imagePullPolicy": "Never",
                                         "command": ["sh", "-c", command],
                                         "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                         "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}

    apply(cluster, node_namespace, claim, writer("first", "echo kept > /data/note"))
    wait_for(lambda: phase(cluster, node_namespace, "first") == "Succeeded", 120, "the first pod to write")
    assert must_get_json(cluster, "pvc", "data", "-n", node_namespace)["status"]["phase"] == "Bound"
    cluster.kubectl("delete", "pod", "first", "-n", node_namespace)
    apply(cluster, node_namespace, writer("second", "cat /data/note"))
    wait_for(lambda: phase(cluster, node_namespace, "second") == "Succeeded", 120, "the second pod to read")
    assert cluster.kubectl("logs", "second", "-n", node_namespace).stdout == "kept\n"


def test_kwok_pods_stay_off_the_real_node(cluster: Cluster, namespace: str) -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fake"},
                  "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "fake"}},
                           "template": {"metadata": {"labels": {"app": "fake"}},
                                        "spec": {"containers": [{"name": "c",
                                                                 "image": "example.invalid/x:1"}]}}}}
    apply(cluster, namespace, deployment)
    cluster.kubectl("rollout", "status", "deployment/fake", "-n", namespace, "--timeout=60s", timeout=70)
    nodes = {p["spec"]["nodeName"] for p in must_get_json(cluster, "pods", "-n", namespace)["items"]}
    assert nodes
    assert all(n.startswith("kwok-") for n in nodes), nodes
