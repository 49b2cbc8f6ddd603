"""Fixtures of the end-to-end tier: the locally built images in the real node's containerd, the chart
installed from this checkout, and namespaces whose pods all land on the real node.

The session's cluster (tests/support/cluster.py) has one real node (hack/realnode.py) beside the kwok
ones; it is tainted, so only pods of an `e2e_namespace` (PodNodeSelector + PodTolerationRestriction
annotations) run there, and the cluster tier's pods stay on kwok.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hack import realnode
from hack.localcluster import find_binary
from tests.support.cluster import Cluster, delete_namespace, must_get_json, wait_for

if TYPE_CHECKING:  # a plugin module of its own: importing it here would register it too early
    from tests.support.images import ImagesBuild

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "h2ogpt-operator"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
STACK_IMAGES = ("operator", "api", "weaviate", "llamacpp")


def version_ref(name: str) -> str:
    """What the chart and the operator name by default, and what `make images` tags."""
    return f"ghcr.io/h2ogpt-platform/h2ogpt-{name}:{VERSION}"


@pytest.fixture(scope="session")
def node_images(cluster: Cluster, built_images: ImagesBuild) -> list[str]:
    """The four images built by hack/images.sh, loaded into the real node's containerd (no registry)."""
    assert set(STACK_IMAGES) <= set(built_images.images), built_images.output[-3000:]
    refs = [version_ref(name) for name in STACK_IMAGES]
    cluster.local.node.load_images(refs, engine=built_images.engine)
    return refs


def helm(
    cluster: Cluster, *args: str, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([find_binary("helm"), *args], check=False, capture_output=True, text=True,
                            env=cluster.env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr.strip()}\n"
                             f"{result.stdout[-2000:]}")
    return result


def create_e2e_namespace(cluster: Cluster, prefix: str, labels: dict[str, str] | None = None) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    manifest = {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels or {},
                             "annotations": realnode.e2e_namespace_annotations()}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    return name


@contextmanager
def e2e_namespace(cluster: Cluster, prefix: str, labels: dict[str, str] | None = None) -> Iterator[str]:
    name = create_e2e_namespace(cluster, prefix, labels)
    try:
        yield name
    finally:
        delete_namespace(cluster, name)


def diagnose(cluster: Cluster, namespace: str) -> str:
    """Pods, events and the last log lines of each container: printed when an e2e wait fails."""
    events = cluster.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False)
    parts = [cluster.kubectl("get", "pods,pvc,svc", "-n", namespace, "-o", "wide", check=False).stdout,
             events.stdout[-4000:]]
    for pod in must_get_json(cluster, "pods", "-n", namespace)["items"]:
        name = pod["metadata"]["name"]
        logs = cluster.kubectl("logs", "-n", namespace, name, "--all-containers", "--tail=20", check=False)
        parts.append(f"--- logs of {name}:\n{logs.stdout}{logs.stderr}")
    return "\n".join(parts)


@contextmanager
def port_forward(cluster: Cluster, namespace: str, target: str, port: int) -> Iterator[int]:
    """`kubectl port-forward` to `target`'s `port` on a free local port; yields the local port."""
    process = subprocess.Popen(
        [find_binary("kubectl"), f"--kubeconfig={cluster.kubeconfig}", "-n", namespace, "port-forward",
         target, f":{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not found:
            process.kill()
            _, err = process.communicate(timeout=10)
            raise AssertionError(f"kubectl port-forward {target} printed {line!r}: {err}")
        yield int(found.group(1))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def fetch_from_pod(cluster: Cluster, namespace: str, name: str, url: str,
                   labels: dict[str, str] | None = None) -> str:
    """What a pod with `labels`, run to completion in `namespace`, got from `url` within 5 s: REACHED (an
    HTTP answer, any status), NO ADDRESS (the name did not resolve: DNS, not a policy) or REFUSED (no
    answer: refused, dropped or timed out). The pod passes Pod Security `restricted`."""
    # busybox's own `wget -T` crashes (1.35, Debian's static build): `timeout` bounds it instead.
    script = (f"out=$(timeout 5 wget -O /dev/null {url} 2>&1); rc=$?; "
              'case "$out" in *"server returned error"*) rc=0;; esac; echo "$out"; '
              'case "$out" in *"bad address"*) rc=NO_ADDRESS;; esac; '
              'if [ $rc = 0 ]; then echo REACHED; elif [ $rc = NO_ADDRESS ]; then echo NO ADDRESS; '
              'else echo REFUSED; fi')
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
           "spec": {"restartPolicy": "Never",
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65534,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{"name": "client", "image": realnode.HELPER_IMAGE,
                                    "imagePullPolicy": "Never", "command": ["sh", "-c", script],
                                    "securityContext": {"allowPrivilegeEscalation": False,
                                                        "capabilities": {"drop": ["ALL"]}}}]}}
    cluster.kubectl("delete", "pod", name, "-n", namespace, "--ignore-not-found", "--wait=true")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))

    def finished() -> bool | None:
        phase = must_get_json(cluster, "pod", name, "-n", namespace)["status"].get("phase")
        return True if phase in ("Succeeded", "Failed") else None

    wait_for(finished, 90, f"pod {name} to finish")
    return cluster.kubectl("logs", name, "-n", namespace).stdout.strip().splitlines()[-1]
