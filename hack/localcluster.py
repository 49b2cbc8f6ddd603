#!/usr/bin/env python3
"""A real local Kubernetes cluster on this machine, for tests and demos.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes that
mark scheduled pods Running and Ready) run as plain processes, beside one real node
(containerd, kubelet, kube-proxy, CoreDNS, a volume provisioner: hack/realnode.py) where
pods really run. No Docker.

    python3 hack/localcluster.py up   [--dir .cluster] [--no-real-node]  # idempotent; prints the kubeconfig
    python3 hack/localcluster.py down [--dir .cluster]   # stops exactly what `up` started, leaves nothing
    python3 hack/localcluster.py status [--dir .cluster]
    python3 hack/localcluster.py load-images REF... [--dir .cluster]  # podman's images into the node
    python3 hack/localcluster.py load-images --built    # the images `make images` built, when present

The same `LocalCluster` class backs the pytest session fixture (tests/support/cluster.py),
which always makes a cluster of its own in a temporary folder.

Standard library only: it runs before the project's virtualenv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: hack/ is not a package then
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import realnode
else:
    from hack import realnode

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".bin"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl")

# Fake nodes: two plain ones and one that advertises GPUs, so that GPU scheduling is real.
NODES: dict[str, dict[str, str]] = {
    "kwok-cpu-0": {},
    "kwok-cpu-1": {},
    "kwok-gpu-0": {"nvidia.com/gpu": "8"},
}
SERVICE_CIDR = realnode.SERVICE_CIDR
# Every request at Metadata level (who, verb, resource, response code; no bodies), one line per
# request once it completes (a watch also logs when its response starts).
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
"""


class ClusterError(RuntimeError):
    """The control plane could not be started; the message says which part and why."""


def find_binary(name: str) -> str:
    """The binary from the clone's .bin/ (made by `make tools`), else from PATH."""
    local = BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ClusterError(f"'{name}' not found in {BIN} or on PATH: run 'make tools' first")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalCluster:
    """One control plane whose state (data, logs, pids, kubeconfig) lives in `directory`."""

    directory: Path
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    token: str = ""
    # Start the real node beside the kwok ones (needs root and `make tools`' node parts; one per
    # machine). `make cluster-up` and the tests' session cluster turn it on; extra clusters leave it off.
    real_node: bool = False
    # Write the apiserver's audit log (JSON lines) to `audit_log_path`: exact attribution of
    # requests to the client that made them (the operator benchmark counts its requests so).
    audit_log: bool = False
    # More kube-controller-manager flags (the operator benchmark raises its client limits with
    # `--kube-api-qps`/`--kube-api-burst` to show what they bound).
    controller_manager_args: tuple[str, ...] = ()
    # The Popen objects of processes started by this Python process, so they are reaped
    # (a cluster started by an earlier `up` is stopped by pid alone).
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    # The node components' own tokens (kubelet, kube-proxy), made with tokens.csv.
    _component_tokens: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    @property
    def audit_log_path(self) -> Path:
        return self.directory / "logs" / "audit.log"

    @property
    def api_host(self) -> str:
        # With a real node the apiserver listens on the node's bridge address: pods reach it there
        # (through the `kubernetes` Service), and so does the host.
        return realnode.NODE_IP if self.real_node else "127.0.0.1"

    @property
    def api_url(self) -> str:
        return f"https://{self.api_host}:{self.ports['apiserver']}"

    @property
    def node(self) -> realnode.RealNode:
        return realnode.RealNode(self.directory)

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    def load(cls, directory: Path) -> LocalCluster:
        cluster = cls(directory=directory)
        if cluster.state_file.exists():
            state = json.loads(cluster.state_file.read_text())
            cluster.ports, cluster.pids, cluster.token = state["ports"], state["pids"], state["token"]
            cluster.real_node = state.get("real_node", False)
        return cluster

    def running(self) -> bool:
        return bool(self.pids) and all(_alive(pid) for pid in self.pids.values()) and self._ready()

    def up(self, timeout: float = 90.0) -> None:
        """Start every component unless this cluster is already up; return once the API is ready."""
        if self.running():
            return
        if self.pids:  # a half-dead earlier run: clear it out before starting again
            self.down()
        binaries = {name: find_binary(name) for name in BINARIES}
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "logs").mkdir(exist_ok=True)
        self.ports = {name: free_port() for name in ("etcd", "etcd_peer", "apiserver", "kwok")}
        self.token = secrets.token_hex(16)
        try:
            if self.real_node:
                self.node.prepare()
            self._write_credentials()
            self._start("etcd", [
                binaries["etcd"], "--name", "local", "--data-dir", str(self.directory / "etcd"),
                "--listen-client-urls", f"http://127.0.0.1:{self.ports['etcd']}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.ports['etcd']}",
                "--listen-peer-urls", f"http://127.0.0.1:{self.ports['etcd_peer']}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.ports['etcd_peer']}",
                "--initial-cluster", f"local=http://127.0.0.1:{self.ports['etcd_peer']}",
                # A throwaway test cluster: durability is not worth an fsync per write.
                "--unsafe-no-fsync", "--log-level", "warn",
            ])
            self._start("apiserver", [
                binaries["kube-apiserver"], *self._audit_flags(),
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                f"--secure-port={self.ports['apiserver']}", f"--bind-address={self.api_host}",
                # Needed in a sandbox without a default route, where it cannot pick an address.
                f"--advertise-address={self.api_host}",
                *(self.node.apiserver_flags() if self.real_node else []),
                f"--cert-dir={self.directory / 'certs'}",
                f"--token-auth-file={self.directory / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={self.directory / 'sa.pub'}",
                f"--service-account-signing-key-file={self.directory / 'sa.key'}",
                "--allow-privileged=true", "--enable-priority-and-fairness=false",
                # As on OpenShift: setting an ownerReference's blockOwnerDeletion needs `update` on the
                # owner's finalizers, so the chart's RBAC is tested against the stricter apiserver.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
            ])
            self._wait_ready(timeout)
            for component in ("controller-manager", "scheduler"):
                self._write_component_kubeconfig(component)
            self._start("controller-manager", [
                binaries["kube-controller-manager"],
                f"--kubeconfig={self.directory / 'controller-manager.kubeconfig'}",
                f"--service-account-private-key-file={self.directory / 'sa.key'}",
                f"--root-ca-file={self.directory / 'certs' / 'apiserver.crt'}",
                "--leader-elect=false", "--secure-port=0", "--use-service-account-credentials=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # No cloud, no real nodes: these controllers would only fight kwok.
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route",
                *self.controller_manager_args,
            ])
            self._start("scheduler", [
                binaries["kube-scheduler"],
                f"--kubeconfig={self.directory / 'scheduler.kubeconfig'}",
                "--leader-elect=false", "--secure-port=0",
            ])
            self._start("kwok", [
                binaries["kwok"], f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--config={REPO / 'hack' / 'kwok-stages.yaml'}",
                # A test may set this annotation on a pod and write its status itself, to show
                # the operator a crash loop or an image pull failure.
                "--disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom",
                f"--cidr={realnode.KWOK_POD_CIDR}", "--node-ip=10.244.128.1",
                f"--server-address=127.0.0.1:{self.ports['kwok']}",
            ])
            self._save()
            self._create_nodes()
            self._wait_nodes_ready(timeout)
            if self.real_node:
                self.node.start(self._start, self._write_component_kubeconfig, self.kubeconfig, self.kubectl)
                self.node.wait_ready(self.kubectl, timeout)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop the processes this cluster started (newest first) and remove its state."""
        for name, pid in reversed(list(self.pids.items())):
            _stop(pid, name)
            if name in self._processes:
                self._processes.pop(name).wait(timeout=10)
        self.pids = {}
        left: list[str] = []
        if (self.directory / "node").exists():
            self.node.cleanup()
            left = self.node.leftovers()
        if self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)
        if left:
            raise ClusterError("the real node left behind: " + "; ".join(left))

    # ---- helpers ---------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [find_binary("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, check=check, timeout=timeout,
        )

    def _audit_flags(self) -> list[str]:
        if not self.audit_log:
            return []
        policy = self.directory / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log_path}",
                "--audit-log-format=json", "--audit-log-maxsize=0"]

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with (self.directory / "logs" / f"{name}.log").open("ab") as log:
            # A session of its own: stopping the cluster never signals the caller's process group.
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env={**os.environ, **(env or {})})
        self._processes[name] = proc
        self.pids[name] = proc.pid
        self._save()
        time.sleep(0.2)
        if proc.poll() is not None:
            raise ClusterError(f"{name} exited at start (code {proc.returncode}); "
                               f"see {self.directory / 'logs' / f'{name}.log'}:\n{self._log_tail(name)}")

    def _log_tail(self, name: str, lines: int = 15) -> str:
        path = self.directory / "logs" / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _save(self) -> None:
        self.state_file.write_text(json.dumps({"ports": self.ports, "pids": self.pids, "token": self.token,
                                               "real_node": self.real_node}))

    def _write_credentials(self) -> None:
        # Static tokens (the admin, and the node's kubelet and kube-proxy) avoid client-certificate plumbing.
        lines = [f'{self.token},admin,admin,"system:masters"']
        self._component_tokens.clear()
        if self.real_node:
            for component, (user, group) in self.node.tokens().items():
                token = self._component_tokens[component] = secrets.token_hex(16)
                lines.append(f'{token},{user},{user},"{group}"')
        (self.directory / "tokens.csv").write_text("\n".join(lines) + "\n")
        (self.directory / "tokens.csv").chmod(0o600)
        key, pub = self.directory / "sa.key", self.directory / "sa.pub"
        if not key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
            subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
                           check=True, capture_output=True)
        self.kubeconfig.write_text(self._kubeconfig_text("admin"))
        self.kubeconfig.chmod(0o600)

    def _kubeconfig_text(self, user: str, token: str | None = None) -> str:
        return json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "h2ogpt-local",
            "clusters": [{"name": "h2ogpt-local", "cluster": {
                "server": self.api_url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": user, "user": {"token": token or self.token}}],
            "contexts": [{"name": "h2ogpt-local", "context": {"cluster": "h2ogpt-local", "user": user}}],
        }, indent=2)

    def _write_component_kubeconfig(self, component: str) -> Path:
        """The kubeconfig of one component: the node's own credentials where it has them, else admin."""
        path = self.directory / f"{component}.kubeconfig"
        token = self._component_tokens.get(component)
        path.write_text(self._kubeconfig_text(component if token else "admin", token))
        path.chmod(0o600)
        return path

    def _ready(self) -> bool:
        if "apiserver" not in self.ports:
            return False
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(f"{self.api_url}/readyz",  # noqa: S310 (an https URL we built)
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, pid in self.pids.items():
                if not _alive(pid):
                    raise ClusterError(f"{name} died while starting; log tail:\n{self._log_tail(name)}")
            if self._ready():
                return
            time.sleep(0.25)
        raise ClusterError(f"kube-apiserver not ready after {timeout:.0f}s; log tail:\n"
                           f"{self._log_tail('apiserver')}")

    def _create_nodes(self) -> None:
        items = []
        for name, extra in NODES.items():
            capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", **extra}
            labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                      "kubernetes.io/arch": "amd64", "type": "kwok"}
            if "nvidia.com/gpu" in extra:
                labels["nvidia.com/gpu.present"] = "true"
            items.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels,
                             "annotations": {"kwok.x-k8s.io/node": "fake",
                                             "node.alpha.kubernetes.io/ttl": "0"}},
                "spec": {},
                "status": {"capacity": capacity, "allocatable": capacity},
            })
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        self.kubectl("apply", "--server-side", "--field-manager=localcluster", "-f", "-", input=manifest)

    def _wait_nodes_ready(self, timeout: float) -> None:
        result = self.kubectl("wait", "--for=condition=Ready", "node", "--all", f"--timeout={int(timeout)}s",
                              check=False, timeout=timeout + 10)
        if result.returncode != 0:
            raise ClusterError(f"fake nodes did not become Ready: {result.stderr.strip()}\n"
                               f"kwok log tail:\n{self._log_tail('kwok')}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); it has exited all the same.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _stop(pid: int, name: str, grace: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        print(f"localcluster: {name} (pid {pid}) ignored SIGTERM; killing it", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "load-images"])
    parser.add_argument("refs", nargs="*", help="load-images: image references in podman's store")
    parser.add_argument("--dir", type=Path, default=REPO / ".cluster",
                        help="state folder (default: .cluster)")
    parser.add_argument("--built", action="store_true",
                        help="load-images: every image `make images` tagged with the project version")
    parser.add_argument("--no-real-node", action="store_true",
                        help="up: only the control plane and the kwok nodes (no root needed)")
    args = parser.parse_args(argv)
    cluster = LocalCluster.load(args.dir.resolve())
    try:
        if args.command == "load-images":
            if not (cluster.running() and cluster.real_node):
                print("localcluster: no real node is running here; nothing loaded")
                return 0
            refs = list(args.refs) + (realnode.built_images() if args.built else [])
            if not refs:
                print("localcluster: no built images to load ('make images' builds them)")
                return 0
            started = time.monotonic()
            cluster.node.load_images(refs)
            print(f"loaded into the real node in {time.monotonic() - started:.0f}s: {' '.join(refs)}")
        elif args.command == "up":
            already = cluster.running()
            if not already:
                cluster.real_node = not args.no_real_node
            cluster.up()
            print(f"{'already running' if already else 'control plane ready'}: "
                  f"KUBECONFIG={cluster.kubeconfig} ({cluster.api_url})")
        elif args.command == "down":
            was = bool(cluster.pids)
            cluster.down()
            print("control plane stopped" if was else "no control plane was running")
        else:
            print("running" if cluster.running() else "not running")
            return 0 if cluster.running() else 1
    except (ClusterError, realnode.NodeError) as error:
        print(f"localcluster: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
