"""Session fixture: a real local cluster (etcd, kube-apiserver, controller-manager, scheduler,
kwok, and as root one real node: hack/realnode.py) of the tests' own, in a temporary folder.
Its teardown fails the run when the real node leaves anything behind on the machine.

The tests never touch a cluster they did not create: the kubeconfig is the fixture's own
and KUBECONFIG from the environment is ignored.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from hack.localcluster import BIN, LocalCluster
from tests.support.leak_sweep import SWEEP

T = TypeVar("T")


@dataclass(frozen=True)
class Cluster:
    """What a cluster test gets: the kubeconfig, an environment for subprocesses, kubectl."""

    local: LocalCluster

    @property
    def kubeconfig(self) -> Path:
        return self.local.kubeconfig

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; with check=True a failure raises with kubectl's stderr."""
        result = self.local.kubectl(*args, input=input, check=False, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result


def want_real_node() -> bool:
    """The real node needs root (containers, a bridge, iptables); `make test` leaves tests/e2e out
    without it. H2OGPT_TEST_REAL_NODE=0 leaves it out as root too: there is one per machine, so a
    second checkout running tests/cluster beside a full run must not ask for it."""
    if os.environ.get("H2OGPT_TEST_REAL_NODE", "") == "0":
        return False
    return os.geteuid() == 0


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # The audit log records who made each request: the least-privilege test compares the operator's
    # requests over the whole session with the chart's RBAC.
    local = LocalCluster(
        directory=tmp_path_factory.mktemp("cluster"), real_node=want_real_node(), audit_log=True
    )
    local.up()
    leaks: list[str] = []
    try:
        yield Cluster(local)
        # No generated credential anywhere else, over every stack of the session (leak_sweep.py).
        SWEEP.sweep(Cluster(local), None)
        leaks = SWEEP.leaks()
        print(f"\n{SWEEP.summary()}: {len(leaks)} found")
    finally:
        local.down()
    assert leaks == [], f"generated credentials found outside their Secrets: {leaks[:20]}"


def delete_namespace(cluster: Cluster, name: str) -> None:
    """Delete a test namespace without waiting for finalizers, after the leak sweep has read it."""
    SWEEP.sweep(cluster, name)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting for finalizers)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        delete_namespace(cluster, name)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def answers_ok(url: str) -> bool:
    """Whether `url` answers 200 within 2 s (a `wait_for` check for a server coming up)."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def get_json_or_none(cluster: Cluster, *args: str) -> dict[str, Any] | None:
    """`kubectl get ARGS -o json`, or None when kubectl fails (e.g. the object does not exist)."""
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def must_get_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    """`kubectl get ARGS -o json`; fails the test with kubectl's error when it fails."""
    loaded: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return loaded


def condition(cr: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """The status condition of type `kind` of a CR (as `kubectl get -o json` gives it), or None."""
    for cond in ((cr or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def llamacpp_cr(name: str, inference: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """An H2oGPTDeployment with llama.cpp inference (on kwok nodes its pods never run a process) and
    no Weaviate; `spec` adds or replaces other top-level fields (e.g. frontend)."""
    return {
        "apiVersion": "h2ogpt.dev/v1alpha1",
        "kind": "H2oGPTDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "org/model"},
            "inference": {"engine": "llamacpp", **inference},
            "retrieval": {"enabled": False},
            **spec,
        },
    }
