"""Helpers for the operator's cluster tests: run `h2ogpt-operator` as a real process, poll the cluster.

Not a fixture module: the test modules build their own fixtures from these (one operator per module).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from hack.localcluster import find_binary
from tests.support.cluster import Cluster, condition, get_json_or_none, must_get_json, wait_for
from tests.support.leak_sweep import SWEEP

__all__ = ["condition", "get_json_or_none", "must_get_json", "wait_for"]  # re-exported for the test modules

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "h2ogpt-operator"
CRD_FILE = REPO / "crds" / "h2ogptdeployments.h2ogpt.dev.yaml"
SAMPLES = REPO / "crds" / "samples"
LEASE_NAMESPACE = "default"
# The operator in these tests runs as the chart's ServiceAccount with exactly the chart's RBAC, from
# `helm template` in LEASE_NAMESPACE: release `h2ogpt-operator` when it watches every namespace,
# `h2ogpt-operator-ns` (watchNamespaces) with --namespace. A request the chart does not grant fails the
# test that needs it, and the audit log attributes every request to one of these two users
# (tests/cluster/test_rbac_least_privilege.py).
ALL_NAMESPACES_RELEASE = "h2ogpt-operator"
NAMESPACED_RELEASE = "h2ogpt-operator-ns"
RBAC_TEMPLATES = ("templates/serviceaccount.yaml", "templates/rbac.yaml")


def operator_user(release: str) -> str:
    """The ServiceAccount of a release whose name holds the chart's: named like the release."""
    return f"system:serviceaccount:{LEASE_NAMESPACE}:{release}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def install_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    wait_established(cluster, "h2ogptdeployments.h2ogpt.dev")


def wait_established(cluster: Cluster, crd: str) -> None:
    """Polled rather than `kubectl wait`: right after a create a CRD has no status.conditions yet,
    and `kubectl wait --for condition=Established` fails on that instead of waiting."""

    def established() -> bool:
        found = condition(get_json_or_none(cluster, "crd", crd), "Established")
        return bool(found and found["status"] == "True")

    wait_for(established, 30, f"CRD {crd} to be Established")


def render_chart_rbac(release: str, watch_namespaces: list[str] | None = None) -> list[dict[str, Any]]:
    """The chart's ServiceAccount, ClusterRoles, Roles and bindings, as `helm install` would create them."""
    args = [find_binary("helm"), "template", release, str(CHART), "-n", LEASE_NAMESPACE]
    for template in RBAC_TEMPLATES:
        args += ["--show-only", template]
    if watch_namespaces:
        args += ["--set", f"watchNamespaces={{{','.join(watch_namespaces)}}}"]
    rendered = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def operator_kubeconfig(cluster: Cluster, directory: Path, watch_namespaces: list[str]) -> Path:
    """A kubeconfig for the chart's ServiceAccount (its RBAC for these namespaces applied first)."""
    release = NAMESPACED_RELEASE if watch_namespaces else ALL_NAMESPACES_RELEASE
    manifests = render_chart_rbac(release, watch_namespaces)
    accounts = [m["metadata"]["name"] for m in manifests if m["kind"] == "ServiceAccount"]
    assert accounts == [release], accounts
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=tests", "-f", "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
    )  # fmt: skip
    return service_account_kubeconfig(cluster, LEASE_NAMESPACE, release, directory / "operator.kubeconfig")


def service_account_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig at `path` that acts as ServiceAccount `namespace/account` (a token it was issued)."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=6h").stdout.strip()
    config = json.loads(cluster.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = account
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def audit_events(cluster: Cluster, users: set[str]) -> list[dict[str, Any]]:
    """Every completed request (stage ResponseComplete) these users made in the session, from the
    apiserver's audit log (tests/support/cluster.py turns it on)."""
    events = (json.loads(line) for line in cluster.local.audit_log_path.read_text().splitlines())
    return [
        event
        for event in events
        if event.get("stage") == "ResponseComplete" and event.get("user", {}).get("username") in users
    ]


def items(cluster: Cluster, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
    args = [kind, "-n", namespace] + (["-l", selector] if selector else [])
    found = get_json_or_none(cluster, *args)
    return list(found["items"]) if found else []


def wait_ready(cluster: Cluster, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        cr = get_json_or_none(cluster, "h2ogpt", name, "-n", namespace)
        cond = condition(cr, "Ready")
        generation = (cr or {}).get("metadata", {}).get("generation")
        if (
            cond
            and cond["status"] == "True"
            and (cr or {}).get("status", {}).get("observedGeneration") == generation
        ):
            return cr
        return None

    return wait_for(ready, timeout, f"{namespace}/{name} Ready")


def provide_volumes(cluster: Cluster, count: int, tag: str) -> None:
    """hostPath PersistentVolumes for PVCs to bind to: the local control plane has no provisioner."""
    for index in range(count):
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"pv-{tag}-{index}", "labels": {"h2ogpt-test": tag}},
            "spec": {
                "capacity": {"storage": "1Ti"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": f"/tmp/pv-{tag}-{index}"},
            },
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(pv))


def remove_volumes(cluster: Cluster, tag: str) -> None:
    cluster.kubectl("delete", "pv", "-l", f"h2ogpt-test={tag}", "--wait=false", check=False)


class OperatorProcess:
    """`h2ogpt-operator` as a subprocess with the cluster's kubeconfig; killable and restartable."""

    def __init__(
        self,
        cluster: Cluster,
        log_dir: Path,
        lease_name: str,
        *extra_args: str,
        kubeconfig: Path | None = None,
    ) -> None:
        """`kubeconfig`: whose credentials it runs with (default: the chart's ServiceAccount, its
        RBAC rendered and applied here)."""
        self.cluster = cluster
        self.log_dir = log_dir
        self.lease_name = lease_name
        self.extra_args = list(extra_args)
        self.identity = f"op-{uuid.uuid4().hex[:6]}"
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kubeconfig: Path | None = kubeconfig
        pairs = zip(self.extra_args, self.extra_args[1:], strict=False)
        self.watch_namespaces = [value for flag, value in pairs if flag == "--namespace"]

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.identity}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        argv = [
            sys.executable, "-m", "h2ogpt_operator.cli",
            "--metrics-port", str(self.metrics_port),
            "--liveness-port", str(self.liveness_port),
            "--resync-seconds", "3",
            "--retry-seconds", "1",
            "--lease-seconds", "6",
            "--leader-election-namespace", LEASE_NAMESPACE,
            "--leader-election-name", self.lease_name,
            "--identity", self.identity,
            *self.extra_args,
        ]  # fmt: skip
        if self.kubeconfig is None:
            self.kubeconfig = operator_kubeconfig(self.cluster, self.log_dir, self.watch_namespaces)
        env = {
            **self.cluster.env,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": f"{REPO / 'operator'}{os.pathsep}{REPO}",
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        SWEEP.keep_log(f"operator log {self.log_path.name}", self.log_path)
        wait_for(self._live, 30, f"operator {self.identity} liveness")

    def _live(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"operator exited early:\n{self.log_text()[-3000:]}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # Its /metrics page is gone with it: the leak sweep reads it now.
        with contextlib.suppress(OSError):
            metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(metrics_url, timeout=5) as response:
                page = response.read().decode()
            SWEEP.add_place(f"/metrics of operator {self.identity}-{self.starts}", page)
        if not kill:  # every thread's stack into its log first: what it was doing if a test waited on it
            self.process.send_signal(signal.SIGUSR1)
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> dict[str, float]:
        """Samples of the operator's /metrics as {'name{labels}': value} (only h2ogpt_operator_*)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("h2ogpt_operator_"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def metric_sum(self, prefix: str) -> float:
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix))

    def is_leader(self) -> bool:
        return self.metrics().get("h2ogpt_operator_leader", 0.0) == 1.0


@contextlib.contextmanager
def running_operator(
    cluster: Cluster, log_dir: Path, lease_prefix: str, volumes: int, *extra_args: str
) -> Iterator[OperatorProcess]:
    """One operator process for a test module, as the chart's ServiceAccount, holding its own Lease:
    the CRD installed, `volumes` hostPath PersistentVolumes for its stacks' PVCs (one per PVC: a
    released volume is not bound again), stopped and the volumes removed afterwards."""
    install_crd(cluster)
    tag = uuid.uuid4().hex[:6]
    provide_volumes(cluster, volumes, tag)
    process = OperatorProcess(cluster, log_dir, f"{lease_prefix}-{tag}", *extra_args)
    try:
        process.start()
        wait_for(process.is_leader, 30, "the operator to take the Lease")
        yield process
    finally:
        process.stop()
        remove_volumes(cluster, tag)


def sample(name: str) -> dict[str, Any]:
    """A CR from crds/samples/ by file name (without .yaml)."""
    loaded: dict[str, Any] = yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())
    return loaded


def apply_manifest(
    cluster: Cluster, namespace: str, manifest: dict[str, Any], check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`kubectl apply` one manifest into `namespace` (check=False: the refusal is the test's to read)."""
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=check)
