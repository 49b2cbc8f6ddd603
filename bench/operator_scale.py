"""Operator at scale: 10, 100 and 300 H2oGPTDeployments on the local control plane.

For each size, a fresh local control plane (real etcd, kube-apiserver, controller-manager,
scheduler and kwok, from `hack/localcluster.py`) with the apiserver's audit log on. The operator
runs as a user runs it: the `h2ogpt-operator` console script with the Helm chart's flags
(`--identity`, `--log-level info`, `POD_NAMESPACE`), all namespaces, under the chart's own
ServiceAccount and RBAC (rendered with `helm template`), so that every request it makes is in the
audit log under its own user name: attribution is exact, not inferred. Only `--resync-seconds` is
shortened, so that the steady-state window holds several resyncs.

H2OGPT_BENCH_OPERATOR_SIZES picks the sizes; H2OGPT_BENCH_OPERATOR_KCM_ARGS adds flags to
kube-controller-manager (its client limits, for an experiment; the report says so).

With H2OGPT_BENCH_OPERATOR_BASELINE=<git ref> each size runs twice, side by side: first the
operator package of that commit (`git archive`, run with `python -m h2ogpt_operator.cli` on the
same virtualenv), then this tree's, each on its own fresh control plane.

Measured: from `kubectl apply` of N CRs to all their children created (the operator's last
create, from the audit log) and to all N Ready (a watch on the CRs); the operator's requests
per CR by verb; every write in a steady-state window after everything is Ready; the operator's
RSS and CPU.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import urllib3
import yaml
from kubernetes import client, config, watch

from bench.common import (
    REPO_ROOT,
    BackgroundProcess,
    background_process,
    bench_main,
    free_port,
    markdown_table,
    median,
    package_versions,
    percentile,
    secs,
    tool_path,
    wait_http_ok,
)
from hack.localcluster import LocalCluster

TITLE = "Operator at scale: 10, 100 and 300 H2oGPTDeployments"
SIZES = (10, 100, 300)
QUICK_SIZES = (10,)
# The steady-state window: a full minute where the target is (100 CRs); half a minute (still two
# full resyncs) at the other sizes, to keep the whole bench near six minutes on two cores.
STEADY_S = {10: 30.0, 100: 60.0, 300: 30.0}
QUICK_STEADY_S = 16.0
RESYNC_S = 15.0  # the default is 60 s; shortened so one steady minute holds four full resyncs
SETTLE_S = 3.0  # after the last CR turns Ready, before the steady-state window opens
READY_TIMEOUT_S = 900.0  # generous: on a shared 2-core machine the control plane alone can take minutes
TARGET_N = 100
DEFAULT_WORKERS = 4  # the operator's default --workers
LEASE_S = 15  # the operator's default --lease-seconds; it renews every third of it
TARGET_READY_S = 60.0
# Issue 16's targets for an operator served from its watches.
TARGET_READY_LAG_S = 2.0  # the last CR Ready after its last pod, at the largest size
TARGET_STEADY_READS_PER_RECONCILE = 1.0
# Written by kube-controller-manager's deployment and statefulset controllers (audit log resources).
WORKLOAD_STATUS = ("deployments/status", "statefulsets/status")
BASELINE_ENV = "H2OGPT_BENCH_OPERATOR_BASELINE"
SIZES_ENV = "H2OGPT_BENCH_OPERATOR_SIZES"  # e.g. "300,100": these sizes, in this order
# e.g. "--kube-api-qps=100 --kube-api-burst=150": kube-controller-manager's client limits, to see
# what its defaults (20/s, bursts of 30) bound. Unset: the defaults, as on most clusters.
KCM_ARGS_ENV = "H2OGPT_BENCH_OPERATOR_KCM_ARGS"

CRD_FILE = REPO_ROOT / "crds" / "h2ogptdeployments.h2ogpt.dev.yaml"
SAMPLE_FILE = REPO_ROOT / "crds" / "samples" / "external-openai.yaml"
CHART_DIR = REPO_ROOT / "charts" / "h2ogpt-operator"
GROUP, VERSION, PLURAL = "h2ogpt.dev", "v1alpha1", "h2ogptdeployments"
RELEASE = "bench"
OPERATOR_NAMESPACE = "h2ogpt-system"
SERVICE_ACCOUNT = f"{RELEASE}-h2ogpt-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"
STACK_NAMESPACE = "bench-stacks"
UPSTREAM_SECRET = "upstream-openai"  # noqa: S105 (a Secret's name, as in the sample)
# The fake nodes of the local control plane hold 3 x 110 pods; each stack here runs three
# (Weaviate, Gradio, OpenAI). One more fake node, only in this bench, holds the rest.
EXTRA_NODE = "kwok-bench-pods"
EXTRA_NODE_PODS = 1000

READ_VERBS = frozenset({"get", "list", "watch"})
CHILD_RESOURCES = frozenset({"configmaps", "secrets", "services", "deployments", "statefulsets",
                             "persistentvolumeclaims"})
CHILD_KINDS_FOR_KUBECTL = "configmaps,secrets,services,deployments,statefulsets"
VERB_COLUMNS = ("get", "list", "watch", "create", "patch", "update", "delete")


def controller_manager_args() -> tuple[str, ...]:
    """The kube-controller-manager flags this run adds (KCM_ARGS_ENV); () for none."""
    return tuple(os.environ.get(KCM_ARGS_ENV, "").split())


# ---------------------------------------------------------------------------------------------
# The audit log
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One API request as the apiserver's audit log saw it (Metadata level)."""

    received: float  # epoch seconds
    completed: float
    user: str
    user_agent: str
    verb: str
    resource: str  # "deployments", "h2ogptdeployments/status", "" for non-resource URLs
    namespace: str
    code: int

    @property
    def is_write(self) -> bool:
        return self.verb not in READ_VERBS

    @property
    def family(self) -> str:
        """What the write was for: the Lease, Events, the CR's status, or a child object."""
        base = self.resource.split("/", 1)[0]
        if base == "leases":
            return "lease"
        if base == "events":
            return "event"
        if self.resource == f"{PLURAL}/status":
            return "status"
        return "child" if base in CHILD_RESOURCES else base


def parse_timestamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_audit_log(path: Path) -> list[Request]:
    """Every request once (a watch logs ResponseStarted and later ResponseComplete), by auditID."""
    latest: dict[str, dict[str, Any]] = {}
    with path.open() as lines:
        for line in lines:
            event = json.loads(line)
            latest[event["auditID"]] = event
    requests = []
    for event in latest.values():
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        requests.append(Request(
            received=parse_timestamp(event["requestReceivedTimestamp"]),
            completed=parse_timestamp(event["stageTimestamp"]),
            user=event["user"]["username"],
            user_agent=event.get("userAgent", ""),
            verb=event["verb"],
            resource=resource,
            namespace=ref.get("namespace", ""),
            code=int((event.get("responseStatus") or {}).get("code", 0)),
        ))
    requests.sort(key=lambda r: r.received)
    return requests


def between(requests: Sequence[Request], start: float, end: float) -> list[Request]:
    return [r for r in requests if start <= r.received < end]


# ---------------------------------------------------------------------------------------------
# The operator process
# ---------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS now, peak RSS) in MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def scrape_metrics(port: int) -> dict[str, float]:
    """The operator's own samples, `name{labels}` -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("h2ogpt_operator_"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def metric_sum(samples: Mapping[str, float], prefix: str, exclude: str = "\x00") -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix) and exclude not in k)


@dataclass(frozen=True)
class OperatorRun:
    process: BackgroundProcess
    metrics_port: int

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def metrics(self) -> dict[str, float]:
        self.process.check_alive()
        return scrape_metrics(self.metrics_port)


def operator_workers(extra_args: Sequence[str]) -> int:
    """The operator's --workers: its default (4) unless an experiment passes one."""
    for index, arg in enumerate(extra_args):
        if arg.startswith("--workers="):
            return int(arg.split("=", 1)[1])
        if arg == "--workers":
            return int(extra_args[index + 1])
    return DEFAULT_WORKERS


@dataclass(frozen=True)
class OperatorBuild:
    """Which operator runs: this tree's console script, or the package of an earlier commit."""

    label: str
    source: Path | None = None  # a folder holding that commit's `operator/`; None: this tree


THIS_TREE = OperatorBuild("this tree")


@contextlib.contextmanager
def baseline_build(ref: str) -> Iterator[OperatorBuild]:
    """The operator package as it was at `ref`, extracted from git into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="bench-operator-baseline-") as folder:
        archive = subprocess.run(["git", "archive", ref, "operator"], cwd=REPO_ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO_ROOT, check=True,
                                capture_output=True, text=True).stdout.strip()
        yield OperatorBuild(f"baseline {commit}", Path(folder))


def operator_command(metrics_port: int, liveness_port: int, extra_args: Sequence[str] = (),
                     build: OperatorBuild = THIS_TREE) -> list[str]:
    if build.source is None:
        program = [str(Path(sys.executable).parent / "h2ogpt-operator")]
    else:
        program = [sys.executable, "-m", "h2ogpt_operator.cli"]
    # The chart's arguments (templates/deployment.yaml), ports of our own, a shorter resync.
    return [*program, f"--identity={RELEASE}-operator-0", "--log-level=info",
            f"--metrics-port={metrics_port}", f"--liveness-port={liveness_port}",
            f"--resync-seconds={RESYNC_S:g}", *extra_args]


@contextlib.contextmanager
def operator_process(kubeconfig: Path, extra_args: Sequence[str] = (),
                     build: OperatorBuild = THIS_TREE) -> Iterator[OperatorRun]:
    metrics_port, liveness_port = free_port(), free_port()
    env = {"KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": OPERATOR_NAMESPACE}
    if build.source is not None:
        env["PYTHONPATH"] = str(build.source / "operator")
    command = operator_command(metrics_port, liveness_port, extra_args, build)
    with background_process("h2ogpt-operator", command, env) as running:
        wait_http_ok(f"http://127.0.0.1:{liveness_port}/healthz", running)
        run = OperatorRun(running, metrics_port)
        deadline = time.monotonic() + 60
        while run.metrics().get("h2ogpt_operator_leader", 0.0) != 1.0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not take the Lease:\n{running.log_tail()}")
            time.sleep(0.2)
        yield run


# ---------------------------------------------------------------------------------------------
# The cluster around it
# ---------------------------------------------------------------------------------------------


def kubectl(cluster: LocalCluster, *args: str, input: str | None = None, timeout: float = 120) -> str:
    result = cluster.kubectl(*args, input=input, check=False, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def as_list(items: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)})


def extra_node() -> dict[str, Any]:
    capacity = {"cpu": "1000", "memory": "4Ti", "pods": str(EXTRA_NODE_PODS)}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": EXTRA_NODE,
                     "labels": {"kubernetes.io/hostname": EXTRA_NODE, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", "type": "kwok"},
                     "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def volumes(count: int) -> list[dict[str, Any]]:
    """hostPath PersistentVolumes for the Weaviate PVCs: the local control plane has no provisioner."""
    return [{
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": f"pv-bench-{index:04d}"},
        "spec": {"capacity": {"storage": "1Ti"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "hostPath": {"path": f"/tmp/pv-bench-{index:04d}"}},  # noqa: S108 (never mounted: kwok)
    } for index in range(count)]


def stacks(count: int) -> list[dict[str, Any]]:
    """`count` copies of the external-engine sample (no GPU), named stack-000 ..."""
    sample: dict[str, Any] = yaml.safe_load(SAMPLE_FILE.read_text())
    manifests = []
    for index in range(count):
        manifest = copy.deepcopy(sample)
        manifest["metadata"] = {"name": f"stack-{index:03d}", "namespace": STACK_NAMESPACE}
        manifests.append(manifest)
    return manifests


def operator_kubeconfig(cluster: LocalCluster, path: Path) -> None:
    """A kubeconfig holding a token of the chart's ServiceAccount: the operator acts as itself."""
    token = kubectl(cluster, "create", "token", SERVICE_ACCOUNT, "-n", OPERATOR_NAMESPACE,
                    "--duration=2h").strip()
    kubeconfig = json.loads(cluster.kubeconfig.read_text())
    kubeconfig["users"] = [{"name": SERVICE_ACCOUNT, "user": {"token": token}}]
    kubeconfig["contexts"][0]["context"]["user"] = SERVICE_ACCOUNT
    path.write_text(json.dumps(kubeconfig))
    path.chmod(0o600)


def prepare(cluster: LocalCluster, count: int, workdir: Path) -> Path:
    """CRD, the chart's RBAC, room for the pods, volumes, the stacks' namespace and Secret."""
    kubectl(cluster, "apply", "--server-side", "-f", str(CRD_FILE))
    kubectl(cluster, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")
    helm = tool_path("helm")
    if helm is None:
        raise RuntimeError("helm not found in .bin/ or on PATH: run 'make tools'")
    rbac = subprocess.run(
        [str(helm), "template", RELEASE, str(CHART_DIR), "-n", OPERATOR_NAMESPACE,
         "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    kubectl(cluster, "create", "namespace", OPERATOR_NAMESPACE)
    kubectl(cluster, "create", "namespace", STACK_NAMESPACE)
    kubectl(cluster, "apply", "-f", "-", input=rbac)
    kubectl(cluster, "create", "-f", "-", input=as_list([extra_node(), *volumes(count)]))
    kubectl(cluster, "wait", "--for=condition=Ready", f"node/{EXTRA_NODE}", "--timeout=60s")
    kubectl(cluster, "create", "secret", "generic", UPSTREAM_SECRET, "-n", STACK_NAMESPACE,
            "--from-literal=OPENAI_API_KEY=sk-bench-not-a-real-key")
    path = workdir / "operator.kubeconfig"
    operator_kubeconfig(cluster, path)
    return path


class ReadyWatch:
    """Watches the CRs in a thread; records when each first reports Ready for its generation."""

    def __init__(self, kubeconfig: Path) -> None:
        # The local control plane's kubeconfig skips TLS verification; say nothing per request.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self.api = client.CustomObjectsApi(config.new_client_from_config(config_file=str(kubeconfig)))  # type: ignore[no-untyped-call]
        self.ready_at: dict[str, float] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ready-watch", daemon=True)

    def __enter__(self) -> ReadyWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _see(self, body: Mapping[str, Any]) -> None:
        name = body["metadata"]["name"]
        if name in self.ready_at:
            return
        status = body.get("status") or {}
        conditions = status.get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        if ready and status.get("observedGeneration") == body["metadata"].get("generation"):
            self.ready_at[name] = time.time()

    def _run(self) -> None:
        try:
            resource_version = ""
            while not self._stop.is_set():
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self.api.list_namespaced_custom_object, GROUP, VERSION, STACK_NAMESPACE, PLURAL,
                    resource_version=resource_version, timeout_seconds=5)
                for event in stream:
                    body = event["object"]
                    resource_version = body["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._see(body)
                    if self._stop.is_set():
                        break
        except BaseException as exc:  # reported by wait_all, in the bench's main thread
            self.error = exc

    def wait_all(self, count: int, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while len(self.ready_at) < count:
            if self.error is not None:
                raise RuntimeError(f"watching the CRs failed: {self.error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(self.ready_at)} of {count} CRs were Ready "
                                   f"after {timeout_s:.0f} s")
            time.sleep(0.1)
        return max(self.ready_at.values())


# ---------------------------------------------------------------------------------------------
# One size
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientLoad:
    client: str
    requests: int
    writes: int
    peak_per_s: int  # the most requests it made in one second


def client_name(user_agent: str) -> str:
    """'kube-controller-manager/v1.34.3 (linux/amd64) kubernetes/abc/deployment-controller'
    -> 'kube-controller-manager deployment-controller'; 'kwok/v0.7 ...' -> 'kwok'."""
    words = user_agent.split(" ")
    program = words[0].split("/", 1)[0]
    segments = words[-1].split("/")
    if len(words) > 1 and segments[0] == "kubernetes" and len(segments) > 2:
        return f"{program} {segments[-1]}"
    return program


def busiest_clients(requests: Sequence[Request], top: int = 4) -> list[ClientLoad]:
    by_client: dict[str, list[Request]] = {}
    for request in requests:
        by_client.setdefault(client_name(request.user_agent), []).append(request)
    loads = []
    for name, made in by_client.items():
        per_second = Counter(int(r.received) for r in made)
        writes = sum(1 for r in made if r.is_write)
        loads.append(ClientLoad(name, len(made), writes, max(per_second.values())))
    return sorted(loads, key=lambda load: load.requests, reverse=True)[:top]


@dataclass
class SizeResult:
    count: int
    apply_s: float  # kubectl apply of the N CRs returned
    children_s: float  # the operator's last child create completed
    pods_ready_s: float  # kwok's last pod status write before the last CR went Ready
    # The Deployment and StatefulSet controllers' last status write before then: the readiness the
    # operator reads (readyReplicas, updatedReplicas, revisions) is theirs, not the pods'.
    workloads_ready_s: float
    ready_s: float  # all N CRs Ready
    ready_p50_s: float
    children: int
    converge: list[Request]
    steady: list[Request]
    steady_s: float
    steady_reconciles: float
    steady_metric_writes: float  # the operator's own counter (Lease excluded) over the window
    converge_cpu_s: float
    converge_reconciles: float
    converge_reconcile_s: float  # summed duration of those reconciles
    converge_s: float  # from kubectl apply to the steady-state window
    workers: int
    steady_cpu_s: float
    rss_mib: float
    peak_rss_mib: float
    user_agents: Counter[str] = field(default_factory=Counter)
    busiest: list[ClientLoad] = field(default_factory=list)  # the control plane's, while converging
    label: str = THIS_TREE.label
    side_by_side: bool = False  # a baseline ran too: name the build in every row

    @property
    def row(self) -> str:
        return f"{self.count} ({self.label})" if self.side_by_side else str(self.count)

    @property
    def steady_reads(self) -> list[Request]:
        """GET and LIST in the steady window, the Lease's left out (watches are not reads here)."""
        return [q for q in self.steady if q.verb in ("get", "list") and q.family != "lease"]

    def per_cr(self, requests: Sequence[Request], verb: str) -> float:
        return sum(1 for r in requests if r.verb == verb) / self.count


def measure(count: int, steady_s: float, extra_args: Sequence[str] = (),
            build: OperatorBuild = THIS_TREE) -> SizeResult:
    """One size on a fresh control plane; `extra_args` go to the operator (for experiments)."""
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as work:
        workdir = Path(work)
        cluster = LocalCluster(directory=workdir / "cluster", audit_log=True,
                               controller_manager_args=controller_manager_args())
        cluster.up()
        try:
            return _measure_on(cluster, workdir, count, steady_s, extra_args, build=build)
        finally:
            cluster.down()


def _measure_on(
    cluster: LocalCluster, workdir: Path, count: int, steady_s: float, extra_args: Sequence[str],
    *, build: OperatorBuild,
) -> SizeResult:
    operator_config = prepare(cluster, count, workdir)
    with (operator_process(operator_config, extra_args, build) as operator,
          ReadyWatch(cluster.kubeconfig) as ready_watch):
        cpu_before = cpu_seconds(operator.pid)
        applied_at = time.time()
        kubectl(cluster, "apply", "-f", "-", input=as_list(stacks(count)), timeout=300)
        apply_done = time.time()
        last_ready = ready_watch.wait_all(count, READY_TIMEOUT_S)
        time.sleep(max(0.0, last_ready + SETTLE_S - time.time()))
        steady_start = time.time()
        cpu_at_steady = cpu_seconds(operator.pid)
        metrics_before = operator.metrics()
        time.sleep(steady_s)
        steady_end = time.time()
        metrics_after = operator.metrics()
        cpu_after = cpu_seconds(operator.pid)
        rss, peak = memory_mib(operator.pid)
        ready_times = [t - applied_at for t in ready_watch.ready_at.values()]
    children = len(kubectl(cluster, "get", CHILD_KINDS_FOR_KUBECTL, "-n", STACK_NAMESPACE, "-o", "name",
                           "-l", "app.kubernetes.io/managed-by=h2ogpt-operator").split())
    requests = read_audit_log(cluster.audit_log_path)
    ours = [r for r in requests if r.user == OPERATOR_USER]
    converge = between(ours, applied_at, steady_start)
    created = [r for r in converge if r.code == 201 and r.namespace == STACK_NAMESPACE
               and r.resource in CHILD_RESOURCES]
    if len(created) != children:
        raise RuntimeError(f"the operator created {len(created)} children but {children} exist: "
                           "a child was created twice or by someone else")
    pod_status_writes = [r for r in between(requests, applied_at, last_ready + 0.001)
                         if r.user_agent.startswith("kwok") and r.resource == "pods/status"
                         and r.namespace == STACK_NAMESPACE]
    workload_status_writes = [r for r in between(requests, applied_at, last_ready + 0.001)
                              if r.resource in WORKLOAD_STATUS and r.namespace == STACK_NAMESPACE]
    writes_metric = "h2ogpt_operator_api_writes_total"
    return SizeResult(
        count=count,
        apply_s=apply_done - applied_at,
        children_s=max(r.completed for r in created) - applied_at,
        pods_ready_s=max((r.completed for r in pod_status_writes), default=applied_at) - applied_at,
        workloads_ready_s=max((r.completed for r in workload_status_writes), default=applied_at) - applied_at,
        ready_s=last_ready - applied_at,
        ready_p50_s=median(ready_times),
        children=children,
        converge=converge,
        steady=between(ours, steady_start, steady_end),
        steady_s=steady_end - steady_start,
        steady_reconciles=(metric_sum(metrics_after, "h2ogpt_operator_reconciles_total")
                           - metric_sum(metrics_before, "h2ogpt_operator_reconciles_total")),
        steady_metric_writes=(metric_sum(metrics_after, writes_metric, exclude='kind="Lease"')
                              - metric_sum(metrics_before, writes_metric, exclude='kind="Lease"')),
        converge_cpu_s=cpu_at_steady - cpu_before,
        converge_s=steady_start - applied_at,
        workers=operator_workers(extra_args),
        converge_reconciles=metric_sum(metrics_before, "h2ogpt_operator_reconciles_total"),
        converge_reconcile_s=metric_sum(metrics_before, "h2ogpt_operator_reconcile_duration_seconds_sum"),
        steady_cpu_s=cpu_after - cpu_at_steady,
        rss_mib=rss,
        peak_rss_mib=peak,
        user_agents=Counter(r.user_agent.split(" ", 1)[0] for r in ours),
        busiest=busiest_clients([r for r in between(requests, applied_at, last_ready)
                                 if r.user != OPERATOR_USER and r.verb != "watch"]),
        label=build.label,
    )


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _per_cr(value: float) -> str:
    return f"{value:.1f}"


def _verdict(result: SizeResult | None) -> str:
    if result is None:
        return f"not measured in this run ({TARGET_N} CRs was not among its sizes)"
    if result.ready_s <= TARGET_READY_S:
        return (f"**met**: {result.count} CRs Ready in {secs(result.ready_s)} s "
                f"(target {TARGET_READY_S:.0f} s)")
    return (f"**missed** by {secs(result.ready_s - TARGET_READY_S)} s: {result.count} CRs Ready in "
            f"{secs(result.ready_s)} s (target {TARGET_READY_S:.0f} s)")


def report(results: Sequence[SizeResult], quick: bool) -> str:
    versions = package_versions(["kopf", "kubernetes"])
    timing_rows = [[
        r.row, secs(r.apply_s), secs(r.children_s), secs(r.pods_ready_s), secs(r.workloads_ready_s),
        secs(r.ready_p50_s),
        secs(r.ready_s), f"{r.count / r.ready_s:.1f}", f"{r.converge_cpu_s:.1f}",
    ] for r in results]
    request_rows = []
    for r in results:
        reads = [q for q in r.converge if not q.is_write]
        writes = [q for q in r.converge if q.is_write]
        families = Counter(q.family for q in writes)
        request_rows.append([
            r.row, *(_per_cr(r.per_cr(r.converge, verb)) for verb in VERB_COLUMNS),
            _per_cr(len(reads) / r.count), _per_cr(families["child"] / r.count),
            _per_cr(families["status"] / r.count), _per_cr(families["event"] / r.count),
            _per_cr(len(writes) / r.count),
        ])
    time_rows = []
    for r in results:
        latencies = [q.completed - q.received for q in r.converge if q.verb != "watch"]
        time_rows.append([
            r.row, f"{r.converge_reconciles / r.count:.1f}",
            f"{1000 * r.converge_reconcile_s / r.converge_reconciles:.0f}",
            f"{len(latencies) / r.converge_reconciles:.0f}",
            f"{1000 * median(latencies):.1f}", f"{1000 * _p90(latencies):.1f}",
            f"{100 * r.converge_reconcile_s / (r.workers * r.converge_s):.0f}%",
            f"{100 * r.converge_cpu_s / r.converge_s:.0f}%",
        ])
    client_rows = [[r.row, load.client, load.requests, load.writes, f"{load.requests / r.ready_s:.1f}",
                    load.peak_per_s] for r in results for load in r.busiest]
    steady_rows = []
    for r in results:
        writes = [q for q in r.steady if q.is_write]
        steady_reads = len(r.steady_reads)
        not_lease = [q for q in writes if q.family != "lease"]
        kinds = Counter(f"{q.verb} {q.resource}" for q in not_lease)
        steady_rows.append([
            r.row, f"{r.steady_s:.0f}", f"{r.steady_reconciles:.0f}",
            f"{r.steady_reconciles / r.count / (r.steady_s / RESYNC_S):.2f}",
            steady_reads, f"{steady_reads / r.steady_s:.1f}",
            f"{steady_reads / r.steady_reconciles:.2f}" if r.steady_reconciles else "-",
            len(not_lease), f"{r.steady_metric_writes:.0f}",
            ", ".join(f"{k}: {v}" for k, v in kinds.most_common(4)) or "-",
            len(writes) - len(not_lease),
            f"{100 * r.steady_cpu_s / r.steady_s:.0f}%",
        ])
    memory_rows = [[r.row, f"{r.rss_mib:.0f}", f"{r.peak_rss_mib:.0f}"] for r in results]
    memory_notes = []
    for label in dict.fromkeys(r.label for r in results):
        built = [r for r in results if r.label == label]
        if len(built) > 1:
            first, last = built[0], built[-1]
            slope = (last.rss_mib - first.rss_mib) / (last.count - first.count)
            memory_notes.append(f"RSS grows by about {slope * 1024:.0f} KiB per stack between {first.count} "
                                f"and {last.count} CRs" + (f" ({label})" if first.side_by_side else "") + ".")
    memory_note = " ".join(memory_notes)
    current = [r for r in results if r.label == THIS_TREE.label]
    target = next((r for r in current if r.count == TARGET_N), None)
    kcm_args = " ".join(controller_manager_args())
    kcm_limits = (f"**this run set `{kcm_args}`** ({KCM_ARGS_ENV})" if kcm_args
                  else "`hack/localcluster.py` keeps the defaults")
    steady_writes = {r.row: sum(1 for q in r.steady if q.is_write and q.family != "lease") for r in results}
    zero = all(v == 0 for v in steady_writes.values())
    agents = Counter[str]()
    for r in results:
        agents.update(r.user_agents)
    sizes = ", ".join(dict.fromkeys(str(r.count) for r in results))
    children_per_cr = results[0].children // results[0].count
    baseline_note = ""
    if any(r.side_by_side for r in results):
        baseline = next(r.label for r in results if r.label != THIS_TREE.label)
        baseline_note = (f"\n**Side by side**: each size ran twice on fresh control planes, first the "
                         f"operator of {baseline.removeprefix('baseline ')} (`{BASELINE_ENV}`), then "
                         "this tree's.\n")
    mode_note = (f"\n**Quick mode**: {sizes} CRs and a {QUICK_STEADY_S:g} s window only: a smoke run, "
                 "not numbers to quote.\n" if quick else "")
    return f"""## {TITLE}
{mode_note}{baseline_note}
`.venv/bin/python -m bench.operator_scale` (`--quick`: 10 CRs only). kopf {versions['kopf']},
kubernetes client {versions['kubernetes']}; the control plane is `hack/localcluster.py`
(etcd, kube-apiserver, controller-manager and scheduler of the version listed above, kwok fake
nodes), a fresh one for each size, with the apiserver's audit log on (Metadata level).

**What runs.** N copies ({sizes}) of `crds/samples/external-openai.yaml` (engine `external`, no
GPU; Weaviate with a 10Gi PVC, Gradio and OpenAI Deployments; {children_per_cr} children per CR: ConfigMap,
Secret, Services, Deployments, StatefulSet), applied in one `kubectl apply -f -` into one
namespace. kwok marks scheduled pods Running and Ready at once, so the times below are the
control plane's and the operator's, not image pulls or model loads. The bench adds one fake node
with room for {EXTRA_NODE_PODS} pods (the three standard ones hold 330; each stack runs three pods) and
one hostPath PersistentVolume per stack (no provisioner), nothing else.

**The operator** is the `h2ogpt-operator` console script with the Helm chart's arguments
(`--identity`, `--log-level=info`, `POD_NAMESPACE`; all namespaces, 4 workers, the default retry
backoff),
authenticated as the chart's ServiceAccount with the chart's RBAC (`helm template`), so the
audit log names it: every request counted below is the operator's own, by user name, not
inferred. `--resync-seconds` is {RESYNC_S:g} (default 60) so the steady-state window holds
several full resyncs. Requests by client: {", ".join(f"`{k}` {v}" for k, v in agents.most_common())}.

### From `kubectl apply` to Ready

Seconds from the start of `kubectl apply` of all N CRs. *children created*: the operator's last
create of a child (audit log); *pods Ready*: kwok's last pod status write (the control plane's
share: ReplicaSets, StatefulSets, PVC binding, scheduling); *workloads' status*: the deployment and
statefulset controllers' last status write (what the CR's readiness is computed from); *Ready*:
the CR's Ready condition for its generation, seen by a watch.

{markdown_table(["CRs", "kubectl apply", "children created", "pods Ready", "workloads' status",
                 "Ready, median CR", "all Ready",
                 "CRs Ready/s", "operator CPU s"], timing_rows)}

Target: 100 CRs Ready within {TARGET_READY_S:.0f} s: {_verdict(target)}.

{_pace(results)}

{_watch_targets(results)}

### API requests per CR while converging

The operator's requests from `kubectl apply` until the steady-state window opens, divided by N,
by verb; writes split into children (server-side apply / create), status patches and Events.
A reconcile reads the CR, its children, pods and Secrets from the operator's watches (kopf
indexes), not from the apiserver (the baseline, where shown, read the CR, the generated Secret,
the referenced Secrets, listed five child kinds and the pods: about 9 requests); a stack is
reconciled again on every event of its children (coalesced), after a retry delay that doubles
from 1 s while it is not Ready, and at every resync (each {RESYNC_S:g} s here).

{markdown_table(["CRs", *VERB_COLUMNS, "reads", "child writes", "status writes", "event writes", "writes"],
                request_rows)}

### Where the operator's time goes while converging

A reconcile is the writes that are needed and nothing else (the baseline read about 9 times
first), and `--workers` of them run at a time. *apiserver ms*: the apiserver's own time per
request (audit log, received to completed); *workers busy*: reconcile time summed over the
convergence, as a share of {results[0].workers} workers x its wall time (100% means the work queue, not the
apiserver's capacity, sets the pace); *operator CPU*: of one core.

{markdown_table(["CRs", "reconciles per CR", "ms per reconcile", "requests per reconcile", "apiserver ms p50",
                 "apiserver ms p90", "workers busy", "operator CPU"], time_rows)}

The rest of the control plane in the same span (from `kubectl apply` to the last CR Ready), its
busiest clients by requests (audit log, by user agent; watches left out). kube-controller-manager
limits its API clients to 20 requests/s with bursts of 30 by default (`--kube-api-qps`,
`--kube-api-burst`; {kcm_limits}): a controller whose mean rate sits near its limit over the whole
span is what the pods, and the workloads' status, wait for.

{markdown_table(["CRs", "client", "requests", "writes", "mean/s", "peak/s"], client_rows, left=2)}

### A steady-state window after everything is Ready

Every request the operator made in the window (opened {SETTLE_S:g} s after the last CR went Ready).
*reconciles per CR per resync*: the operator's `h2ogpt_operator_reconciles_total` over the
window, per CR and per {RESYNC_S:g} s resync (about 1 means each resync looked at every stack once).
*reads*: GET and LIST from the audit log, the Lease's excluded (the watches stay open and are
not counted); *writes*: from the audit log, the Lease excluded; *by its counter*: the operator's own
`h2ogpt_operator_api_writes_total` (Lease excluded) over the same window, which must agree.
The Lease renewals are the leader election's, one per {LEASE_S / 3:g} s whatever N.

{markdown_table(["CRs", "window s", "reconciles", "reconciles per CR per resync", "reads", "reads/s",
                 "reads per reconcile", "writes", "by its counter", "what was written", "Lease renewals",
                 "operator CPU"],
                steady_rows)}

Target: zero writes in a steady-state minute: **{"met" if zero else "missed"}**
({", ".join(f"{n} CRs: {w}" for n, w in steady_writes.items())} writes besides the Lease).

### Operator memory at rest

{markdown_table(["CRs", "RSS at rest MiB", "peak RSS MiB"], memory_rows)}

{memory_note}
"""


def _pace(results: Sequence[SizeResult]) -> str:
    """Who set the pace, read from the measured times."""
    lines = [
        f"- {r.row} CRs: every child created at {secs(r.children_s)} s, the last pod Ready at "
        f"{secs(r.pods_ready_s)} s, the workloads' last status write at {secs(r.workloads_ready_s)} s, "
        f"the last CR Ready at {secs(r.ready_s)} s: reported {secs(r.ready_s - r.pods_ready_s)} s after "
        f"the last pod went Ready, {secs(r.ready_s - max(r.pods_ready_s, r.workloads_ready_s))} s after "
        "the last of both."
        for r in results
    ]
    return (
        "Who sets the pace (the tables below say why):\n\n" + "\n".join(lines) + "\n\n"
        "The pods' share moves only with kube-controller-manager's client rate limits. A CR's Ready "
        "follows its Deployments' and StatefulSet's status (ready, updated and current replicas, as "
        "`kubectl rollout status` reads them), which the deployment and statefulset controllers write "
        "after the pods change, through the same rate-limited client: *the workloads' last status "
        "write* is the last of those before the last CR went Ready, and what comes after it is the "
        "operator's own time."
    )


def _watch_targets(results: Sequence[SizeResult]) -> str:
    """Issue 16's targets for the operator served from its watches, for this tree's largest size."""
    current = [r for r in results if r.label == THIS_TREE.label]
    if not current:
        return ""
    largest = current[-1]
    lag = largest.ready_s - largest.pods_ready_s
    own_lag = largest.ready_s - max(largest.pods_ready_s, largest.workloads_ready_s)
    reads = len(largest.steady_reads)
    per_reconcile = reads / largest.steady_reconciles if largest.steady_reconciles else float("nan")

    def verdict(met: bool) -> str:
        return "**met**" if met else "**missed**"

    return (
        f"Targets for an operator served from its watches, at {largest.count} CRs:\n\n"
        f"- The last CR Ready at most {TARGET_READY_LAG_S:g} s after its last pod: "
        f"{verdict(lag <= TARGET_READY_LAG_S)}: {secs(lag)} s; "
        f"{secs(own_lag)} s after the workloads' last status write, the last thing it waited for.\n"
        f"- At most {TARGET_STEADY_READS_PER_RECONCILE:g} apiserver read per reconcile in the steady state: "
        f"{verdict(per_reconcile <= TARGET_STEADY_READS_PER_RECONCILE)}: {reads} reads over "
        f"{largest.steady_reconciles:.0f} reconciles ({per_reconcile:.2f} per reconcile; "
        f"{reads / largest.steady_s:.2f} reads/s at rest besides the Lease)."
    )


def _p90(values: Sequence[float]) -> float:
    return percentile(values, 90)


def run(quick: bool = False) -> str:
    chosen = os.environ.get(SIZES_ENV, "")
    sizes = tuple(int(size) for size in chosen.split(",")) if chosen else QUICK_SIZES if quick else SIZES
    ref = os.environ.get(BASELINE_ENV, "")
    results = []
    with contextlib.ExitStack() as stack:
        builds = [stack.enter_context(baseline_build(ref)), THIS_TREE] if ref else [THIS_TREE]
        for count in sizes:
            for build in builds:
                started = time.monotonic()
                print(f"operator_scale: {count} CRs, {build.label} ...", file=sys.stderr, flush=True)
                steady_s = QUICK_STEADY_S if quick else STEADY_S.get(count, STEADY_S[TARGET_N])
                result = measure(count, steady_s, build=build)
                result.side_by_side = len(builds) > 1
                results.append(result)
                print(f"operator_scale: {count} CRs, {build.label}, done in "
                      f"{time.monotonic() - started:.0f} s (all Ready after {result.ready_s:.1f} s)",
                      file=sys.stderr, flush=True)
                # What is measured so far, in case a later size does not finish.
                print(report(results, quick), file=sys.stderr, flush=True)
    return report(results, quick)


if __name__ == "__main__":
    bench_main(run)
