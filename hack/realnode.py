"""One real Kubernetes node beside the kwok fakes: containerd + runc + kubelet, a bridge pod network,
kube-proxy, cluster DNS (CoreDNS) and a dynamic volume provisioner (local-path-provisioner).

Pods that land here really run: images come from the node's containerd (loaded without a
registry, `load_images`), Services route through kube-proxy's iptables rules from the host and
between pods, `<svc>.<ns>.svc` resolves through CoreDNS, PVCs bind through the default
StorageClass, and `kubectl logs/exec/port-forward` reach the kubelet over TLS that the apiserver
verifies (a CA made per cluster signs the kubelet's serving certificate and the apiserver's
client certificate).

Everything lives in the host's network namespace on one bridge of our own (`h2o0`, the node's
address is its gateway address), so there is exactly one real node per machine: a second one is
refused with a message naming the first. `down()` leaves nothing behind: processes, mounts under
the node folder, the pods' network namespaces and veths, the bridge, the iptables chains of
kube-proxy, of the CNI plugins and our own, the `k8s.io` cgroups, and the sysctl it changed.

Where the node keeps pods off it: it carries the taint `h2ogpt.dev/real-node=true:NoSchedule` and
the label `h2ogpt.dev/node=real`; a namespace made with `e2e_namespace_annotations()` puts every pod
of that namespace on it (PodNodeSelector and PodTolerationRestriction admission).

Standard library only, like localcluster.py.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".bin"

NODE_NAME = "real-node-0"
NODE_LABEL = ("h2ogpt.dev/node", "real")
NODE_TAINT_KEY = "h2ogpt.dev/real-node"
BRIDGE = "h2o0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"  # the bridge's address: the pods' gateway, the kubelet's and the DNS server's
# kwok hands its fake pods addresses from the upper half of the cluster CIDR: no overlap with real pods.
KWOK_POD_CIDR = "10.244.128.0/17"
SERVICE_CIDR = "10.96.0.0/16"  # the apiserver's --service-cluster-ip-range (hack/localcluster.py)
CLUSTER_DOMAIN = "cluster.local"
KUBELET_PORT = 10250
PAUSE_IMAGE = "localhost/h2ogpt-platform/pause:1"
# The image local-path-provisioner's helper pods run (mkdir/rm of a volume's folder on the node).
HELPER_IMAGE = "localhost/h2ogpt-platform/busybox:1"
LOCAL_PATH_NAMESPACE = "local-path-storage"
STORAGE_CLASS = "local-path"
EGRESS_CHAIN = "H2OGPT-NODE-EGRESS"
# iptables chains of the node: kube-proxy's, the CNI plugins', ours.
OUR_CHAINS = r"(KUBE-|CNI-|H2OGPT-)"
# Folders outside the node's own that containerd and the CNI plugins write to (the shims' sockets are
# always under /run/containerd/s): what they add there is removed at `down`, and so are the folders
# themselves when the node made them.
MACHINE_PATHS = (Path("/run/containerd/s"), Path("/run/containerd"), Path("/var/run/netns"))
# Which cluster folder owns the machine's one real node (so a second `up` can name it).
OWNER_FILE = Path("/run/h2ogpt-platform/real-node-owner")
# Processes of the node in start order (stopped newest first by LocalCluster.down()).
PROCESSES = ("containerd", "kubelet", "kube-proxy", "kube-router", "coredns", "local-path-provisioner")
NODE_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "kubelet", "kube-proxy",
                 "kube-router", "coredns", "local-path-provisioner")
# ipsets kube-router makes for the NetworkPolicies it enforces (removed at `down`).
OUR_IPSETS = r"(KUBE-|kube-router)"
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")


class NodeError(RuntimeError):
    """The real node could not be started or stopped; the message says which part and why."""


def e2e_namespace_annotations() -> dict[str, str]:
    """Annotations that put every pod of a namespace on the real node (tolerating its taint)."""
    toleration = {"key": NODE_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
    return {
        "scheduler.alpha.kubernetes.io/node-selector": f"{NODE_LABEL[0]}={NODE_LABEL[1]}",
        "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps([toleration]),
    }


def project_version() -> str:
    found = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    if not found:
        raise NodeError("no version in pyproject.toml")
    return found.group(1)


def built_images(engine: str = "podman") -> list[str]:
    """The project's images `make images` tagged with the project version, those the builder has."""
    refs = [f"ghcr.io/h2ogpt-platform/h2ogpt-{name}:{project_version()}"
            for name in ("operator", "api", "weaviate", "llamacpp")]
    if shutil.which(engine) is None:
        return []
    def present(ref: str) -> bool:
        found = subprocess.run([engine, "image", "exists", ref], capture_output=True, check=False)
        return found.returncode == 0

    return [ref for ref in refs if present(ref)]


def find_binary(name: str) -> str:
    local = BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if found is None:
        raise NodeError(f"'{name}' not found in {BIN} or on PATH: "
                        "run 'make tools' (and 'make system-packages')")
    return found


def missing_requirements() -> list[str]:
    """What this machine lacks to run the real node (empty when it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (containers, the bridge and iptables need it)")
    for name in NODE_BINARIES:
        if not (BIN / name).exists():
            missing.append(f"{name} (make tools)")
    for plugin in CNI_PLUGINS:
        if not (BIN / "cni" / plugin).exists():
            missing.append(f"CNI plugin {plugin} (make tools)")
    for tool in ("iptables", "ip", "openssl", "ipset"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            missing.append(f"{tool} (make system-packages)")
    return missing


def _run(*argv: str, check: bool = True, input: bytes | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(argv, input=input, capture_output=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed ({result.returncode}): "
                        f"{result.stderr.decode(errors='replace').strip()[-800:]}")
    return result


# ---- images made without a builder: pause and busybox ------------------------------------------------

PAUSE_C = r"""
/* The pod sandbox's first process: holds the pod's namespaces, reaps orphans, exits on a signal. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGINT, stop); signal(SIGTERM, stop); signal(SIGCHLD, reap);
  for (;;) pause();
}
"""


def _oci_image_tar(ref: str, files: dict[str, tuple[bytes, int]], *, entrypoint: list[str] | None = None,
                   cmd: list[str] | None = None, symlinks: dict[str, str] | None = None) -> bytes:
    """An OCI image layout (one layer) as a tar stream that `ctr images import` takes.

    files: path in the image -> (content, mode). Small single-purpose images (the pause process, a
    static busybox) need no base image and no builder, so the node can start before any image build.
    """
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        dirs = sorted({str(Path(p).parent) for p in [*files, *(symlinks or {})]} - {"."})
        for directory in dirs:
            for parent in [*reversed(Path(directory).parents[:-1]), Path(directory)]:
                info = tarfile.TarInfo(str(parent).lstrip("/"))
                if info.name in layer.getnames():
                    continue
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                layer.addfile(info)
        for path, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(content), mode
            layer.addfile(info, io.BytesIO(content))
        for path, target in sorted((symlinks or {}).items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.type, info.linkname = tarfile.SYMTYPE, target
            layer.addfile(info)
    layer_bytes = layer_buffer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    layer_gz = gzip.compress(layer_bytes, mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(layer_gz)}],
    }).encode()
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **blob(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": ref,
                                       "io.containerd.image.name": ref}}],
    }).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        entries = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index}
        entries.update({f"blobs/sha256/{d.split(':', 1)[1]}": data for d, data in blobs.items()})
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def pause_image_tar(workdir: Path) -> bytes:
    source, binary = workdir / "pause.c", workdir / "pause"
    source.write_text(PAUSE_C)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise NodeError("no C compiler for the pause image: apt-get install gcc libc6-dev")
    _run(cc, "-static", "-Os", "-o", str(binary), str(source))
    return _oci_image_tar(PAUSE_IMAGE, {"/pause": (binary.read_bytes(), 0o755)}, entrypoint=["/pause"])


def helper_image_tar() -> bytes:
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise NodeError("/bin/busybox is missing: apt-get install busybox-static (make system-packages)")
    applets = ("sh", "mkdir", "rm", "rmdir", "chmod", "ls", "cat", "sleep", "echo", "wget", "nslookup", "env",
               "httpd", "hostname", "id", "touch", "timeout")
    # Like busybox's own image: no entrypoint, `sh` by default, so a pod's args are a command line.
    return _oci_image_tar(HELPER_IMAGE, {"/bin/busybox": (busybox.read_bytes(), 0o755)}, cmd=["sh"],
                          symlinks={f"/bin/{name}": "busybox" for name in applets})


# ---- the node ---------------------------------------------------------------------------------------


@dataclass
class RealNode:
    """The real node of one LocalCluster; its state lives under `<cluster dir>/node`."""

    cluster_dir: Path

    @property
    def dir(self) -> Path:
        return self.cluster_dir / "node"

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    # -- before the apiserver starts --

    def prepare(self) -> None:
        """Refuse a second node; make the bridge and the certificates the apiserver's flags name."""
        problems = missing_requirements()
        if problems:
            raise NodeError("the real node needs: " + "; ".join(problems))
        if Path(f"/sys/class/net/{BRIDGE}").exists() and _owner_is_gone():
            # A crashed run (a killed test session, a reboot of the control plane) left the node's
            # network and containers behind with nobody to stop them: clear them, then start afresh.
            owner = OWNER_FILE.read_text().strip() if OWNER_FILE.exists() else ""
            print(f"realnode: clearing what a stopped cluster ({owner or 'unknown'}) left behind",
                  file=sys.stderr)
            RealNode(Path(owner) if owner else self.cluster_dir).cleanup(force=True)
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            owner = OWNER_FILE.read_text().strip() if OWNER_FILE.exists() else "unknown"
            raise NodeError(f"a real node already runs on this machine (bridge {BRIDGE}, cluster folder "
                            f"{owner}): stop it first ('python3 hack/localcluster.py down --dir {owner}'; "
                            "'make cluster-down' for the default one)")
        for sub in ("pki", "containerd", "kubelet", "logs", "cni/net.d", "storage"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        OWNER_FILE.parent.mkdir(parents=True, exist_ok=True)
        OWNER_FILE.write_text(str(self.cluster_dir))
        netns = Path("/var/run/netns")
        (self.dir / "netns-before").write_text(" ".join(p.name for p in netns.iterdir()) if netns.exists()
                                               else "")
        (self.dir / "links-before").write_text(" ".join(p.name for p in Path("/sys/class/net").iterdir()))
        (self.dir / "paths-before").write_text(json.dumps(
            {str(path): sorted(p.name for p in path.iterdir()) if path.is_dir() else None
             for path in MACHINE_PATHS}))
        self._write_pki()
        self._make_bridge()

    def apiserver_flags(self) -> list[str]:
        return [
            f"--kubelet-certificate-authority={self.pki / 'ca.crt'}",
            f"--kubelet-client-certificate={self.pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={self.pki / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--enable-admission-plugins=NodeRestriction,PodNodeSelector,PodTolerationRestriction",
        ]

    def tokens(self) -> dict[str, tuple[str, str]]:
        """name -> (user, groups) of the static tokens the node's components authenticate with."""
        return {"kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
                "kube-proxy": ("system:kube-proxy", "system:node-proxier")}

    # -- after the apiserver is ready --

    def start(self, start_process: Callable[[str, list[str], dict[str, str] | None], None],
              kubeconfig_for: Callable[[str], Path], admin_kubeconfig: Path,
              kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
        bins = {name: find_binary(name) for name in NODE_BINARIES}
        # containerd finds its shim, and the shim runc, on PATH.
        tool_dirs = [str(Path(bins[name]).resolve().parent) for name in ("containerd", "runc")]
        path_env = {"PATH": ":".join([*tool_dirs, os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])}
        config = self.dir / "containerd" / "config.toml"
        config.write_text(self._containerd_config(bins["runc"]))
        start_process("containerd", [bins["containerd"], "--config", str(config)], path_env)
        self._wait(lambda: self.containerd_socket.exists()
                   and _run(bins["ctr"], "--address", str(self.containerd_socket), "version",
                            check=False).returncode == 0, 30, "containerd did not answer on its socket")
        self._import(pause_image_tar(self.dir), PAUSE_IMAGE)
        self._import(helper_image_tar(), HELPER_IMAGE)
        (self.dir / "cni" / "net.d" / "10-h2o.conflist").write_text(json.dumps(self._cni_config(), indent=2))

        kubelet_config = self.dir / "kubelet" / "config.yaml"
        kubelet_config.write_text(json.dumps(self._kubelet_config(), indent=2))
        start_process("kubelet", [
            bins["kubelet"], f"--config={kubelet_config}", f"--kubeconfig={kubeconfig_for('kubelet')}",
            f"--root-dir={self.dir / 'kubelet' / 'root'}", f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}", f"--node-labels={NODE_LABEL[0]}={NODE_LABEL[1]}",
            f"--register-with-taints={NODE_TAINT_KEY}=true:NoSchedule", "--v=1",
        ], path_env)

        proxy_config = self.dir / "kube-proxy.yaml"
        proxy_config.write_text(json.dumps(self._kube_proxy_config(kubeconfig_for("kube-proxy")), indent=2))
        start_process("kube-proxy", [bins["kube-proxy"], f"--config={proxy_config}", "--v=1"], path_env)

        # kube-router finds its node by name at start and exits if the kubelet has not registered it yet.
        self._wait(lambda: kubectl("get", "node", NODE_NAME, check=False).returncode == 0, 90,
                   f"the kubelet did not register node {NODE_NAME}")
        # NetworkPolicies are enforced on the node (kube-router's firewall alone: no BGP routing, no
        # Service proxy: kube-proxy routes Services and the bridge plugin connects the pods). It keeps
        # iptables chains and ipsets of the pods each policy selects; traffic from the node itself
        # (kubelet probes, the host's own clients) is always let through.
        start_process("kube-router", [
            bins["kube-router"], f"--kubeconfig={admin_kubeconfig}", f"--hostname-override={NODE_NAME}",
            "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
            "--enable-cni=false", "--enable-pod-egress=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--iptables-sync-period=30s",
            "--health-port=0", "--metrics-port=0", "--v=1",
        ], path_env)

        corefile = self.dir / "Corefile"
        corefile.write_text(self._corefile(admin_kubeconfig))
        start_process("coredns", [bins["coredns"], "-conf", str(corefile)], None)

        self._install_storage(kubectl)
        start_process("local-path-provisioner", [
            bins["local-path-provisioner"], "start", f"--kubeconfig={admin_kubeconfig}",
            f"--namespace={LOCAL_PATH_NAMESPACE}", "--configmap-name=local-path-config",
            "--provisioner-name=h2ogpt.dev/local-path", f"--helper-image={HELPER_IMAGE}",
            "--service-account-name=default",
        ], None)

    def wait_ready(self, kubectl: Callable[..., subprocess.CompletedProcess[str]], timeout: float) -> None:
        result = kubectl("wait", "--for=condition=Ready", f"node/{NODE_NAME}", f"--timeout={int(timeout)}s",
                         check=False, timeout=timeout + 10)
        if result.returncode != 0:
            raise NodeError(f"the real node {NODE_NAME} did not become Ready: {result.stderr.strip()}\n"
                            f"kubelet log tail:\n{_tail(self.dir.parent / 'logs' / 'kubelet.log')}")

    # -- images --

    def load_images(self, refs: list[str], engine: str = "podman") -> None:
        """Copy images from the local builder's store into the node's containerd (no registry)."""
        for ref in refs:
            saved = _run(engine, "save", "--format", "docker-archive", ref, timeout=600)
            self._import(saved.stdout)

    def _import(self, archive: bytes, ref: str | None = None) -> None:
        ctr = [find_binary("ctr"), "--address", str(self.containerd_socket), "-n", "k8s.io", "images"]
        _run(*ctr, "import", "-", input=archive, timeout=600)
        if ref:  # pinned: the kubelet's image garbage collection leaves it alone
            _run(*ctr, "label", ref, "io.cri-containerd.pinned=pinned")

    # -- tear-down --

    def cleanup(self, force: bool = False) -> None:
        """Everything the node left once its processes are stopped (idempotent; safe when half up).

        force: also when the machine's node belongs to another cluster folder (one known to be gone).
        """
        owner = OWNER_FILE.read_text().strip() if OWNER_FILE.exists() else None
        if owner is not None and owner != str(self.cluster_dir) and not force:
            self._unmount_under(self.dir)  # the machine's node is another cluster's: touch only our folder
            return
        self._kill_pod_processes()
        self._delete_pod_netns()
        # A deleted netns takes its veth pairs with it, but the kernel does that later, asynchronously.
        for link in self._new_links():
            _run("ip", "link", "del", link, check=False)
        _run("ip", "link", "del", BRIDGE, check=False)
        self._remove_iptables_chains()
        self._unmount_under(self.dir)
        self._remove_cgroups()
        self._remove_new_machine_paths()
        saved = self.dir / "ip_forward.saved"
        if saved.exists():
            Path("/proc/sys/net/ipv4/ip_forward").write_text(saved.read_text())
        if OWNER_FILE.exists() and (force or OWNER_FILE.read_text().strip() == str(self.cluster_dir)):
            OWNER_FILE.unlink()

    def leftovers(self) -> list[str]:
        """What of the node is still on the machine (empty after a clean `cleanup()`)."""
        found = []
        node_bins = {str((BIN / b).resolve()) for b in NODE_BINARIES if (BIN / b).exists()}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    exe = os.readlink(proc / "exe")
                    if exe in node_bins:
                        found.append(f"process {proc.name} ({Path(exe).name})")
        prefix = str(self.dir.resolve())
        with open("/proc/self/mountinfo") as info:
            found += [f"mount {line.split()[4]}" for line in info
                      if line.split()[4] == prefix or line.split()[4].startswith(prefix + "/")]
        recorded = self.dir / "netns-before"
        before = set(recorded.read_text().split()) if recorded.exists() else set()
        netns = Path("/var/run/netns")
        if netns.exists():
            found += [f"network namespace {ns.name}" for ns in netns.iterdir()
                      if ns.name.startswith("cni-") and ns.name not in before]
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            found.append(f"bridge {BRIDGE}")
        found += [f"link {link}" for link in self._new_links()]
        for binary in _iptables_binaries():
            found += [f"{Path(binary).name} chain {line.split()[0]}"
                      for _, line in _iptables_save(binary, ":") if re.match(OUR_CHAINS, line)]
        found += [f"ipset {name}" for name in _our_ipsets()]
        found += [f"cgroup {top}" for top in Path("/sys/fs/cgroup").glob("*/k8s.io")]
        for path, kept in self._machine_paths_before().items():
            if Path(path).is_dir():
                found += [f"{path}/{entry.name}" for entry in Path(path).iterdir()
                          if kept is None or entry.name not in kept]
                if kept is None:
                    found.append(path)
        return found

    # ---- pieces ----

    def _write_pki(self) -> None:
        pki = self.pki
        if (pki / "kubelet.crt").exists():
            return
        _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
             "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"), "-subj", "/CN=h2ogpt-local-node-ca")
        self._signed("kubelet", f"/CN=system:node:{NODE_NAME}/O=system:nodes",
                     f"subjectAltName=IP:{NODE_IP},DNS:{NODE_NAME}\nextendedKeyUsage=serverAuth")
        self._signed("apiserver-kubelet-client", "/CN=kube-apiserver-kubelet-client/O=system:masters",
                     "extendedKeyUsage=clientAuth")

    def _signed(self, name: str, subject: str, extensions: str) -> None:
        pki = self.pki
        ext = pki / f"{name}.ext"
        ext.write_text(extensions + "\n")
        _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pki / f"{name}.key"),
             "-out", str(pki / f"{name}.csr"), "-subj", subject)
        _run("openssl", "x509", "-req", "-in", str(pki / f"{name}.csr"), "-CA", str(pki / "ca.crt"),
             "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "30", "-extfile", str(ext),
             "-out", str(pki / f"{name}.crt"))

    def _make_bridge(self) -> None:
        forward = Path("/proc/sys/net/ipv4/ip_forward")
        (self.dir / "ip_forward.saved").write_text(forward.read_text())
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        forward.write_text("1")  # pods reach Services and each other through the host
        # Pods talk to the node and to each other, never past this machine (the host has a default route).
        iptables = find_binary("iptables")
        _run(iptables, "-N", EGRESS_CHAIN)
        _run(iptables, "-A", EGRESS_CHAIN, "-s", POD_CIDR, "!", "-d", POD_CIDR, "-j", "REJECT")
        _run(iptables, "-I", "FORWARD", "-i", BRIDGE, "-j", EGRESS_CHAIN)

    def _containerd_config(self, runc: str) -> str:
        root = self.dir / "containerd"
        return f"""version = 3
root = "{root / 'root'}"
state = "{root / 'state'}"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{root / 'containerd.sock.ttrpc'}"
[debug]
  address = "{root / 'debug.sock'}"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"
[plugins."io.containerd.cri.v1.runtime"]
  # These machines refuse a negative oom_score_adj (the kubelet asks -998 for the pause container):
  # keep containers' scores no lower than containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{root / 'runc'}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{(BIN / 'cni').resolve()}"]
    conf_dir = "{self.dir / 'cni' / 'net.d'}"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
# Machine-wide paths of optional parts, off: nothing of the node outside its own folder.
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.internal.v1.opt"]
  path = "{root / 'opt'}"
[plugins."io.containerd.image-verifier.v1.bindir"]
  bin_dir = "{root / 'image-verifier'}"
"""

    def _cni_config(self) -> dict[str, object]:
        return {"cniVersion": "1.0.0", "name": "h2o-pods", "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.dir / "cni" / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}

    def _kubelet_config(self) -> dict[str, object]:
        pki = self.pki
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": NODE_IP, "port": KUBELET_PORT, "readOnlyPort": 0, "healthzPort": 0,
            "tlsCertFile": str(pki / "kubelet.crt"), "tlsPrivateKeyFile": str(pki / "kubelet.key"),
            # The apiserver authenticates with its client certificate; requests are authorized by it.
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "clusterDNS": [NODE_IP], "clusterDomain": CLUSTER_DOMAIN, "resolvConf": "",
            "podCIDR": POD_CIDR, "podLogsDir": str(self.dir / "pod-logs"),
            # Nested in a container with cgroup v1: no QoS cgroup tree, no swap, no allocatable enforcement.
            "cgroupDriver": "cgroupfs", "failSwapOn": False, "failCgroupV1": False, "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [], "protectKernelDefaults": False,
            # Images are loaded by hand, never pulled: keep them however full the disk is.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%"},
            "maxPods": 60, "serializeImagePulls": False, "staticPodPath": "",
            "syncFrequency": "10s", "nodeStatusUpdateFrequency": "5s",
        }

    def _kube_proxy_config(self, kubeconfig: Path) -> dict[str, object]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables", "hostnameOverride": NODE_NAME, "clusterCIDR": POD_CIDR,
            "bindAddress": NODE_IP, "healthzBindAddress": "", "metricsBindAddress": f"{NODE_IP}:10249",
            # NodePorts only on the node's bridge address (never the host's loopback or uplink).
            "nodePortAddresses": [f"{NODE_IP}/32"],
            "conntrack": {"maxPerCore": 0, "min": 0},  # leave the host's conntrack table size alone
            "iptables": {"masqueradeAll": False, "syncPeriod": "10s", "minSyncPeriod": "0s"},
        }

    def _corefile(self, kubeconfig: Path) -> str:
        # No `forward`: names outside the cluster are not answered (this test bed reaches no other host).
        return f""".:53 {{
    bind {NODE_IP}
    errors
    health {NODE_IP}:8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} h2ogpt-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
"""

    def _install_storage(self, kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
        storage = self.dir / "storage"
        helper_pod = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "helper-pod"},
            "spec": {"tolerations": [{"key": NODE_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
                     "containers": [{"name": "helper-pod", "image": HELPER_IMAGE,
                                     "imagePullPolicy": "Never"}]},
        }
        config = {"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [str(storage)]}]}
        setup = "#!/bin/sh\nset -eu\nmkdir -m 0777 -p \"$VOL_DIR\"\n"
        teardown = "#!/bin/sh\nset -eu\nrm -rf \"$VOL_DIR\"\n"
        manifests = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LOCAL_PATH_NAMESPACE}},
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "local-path-config", "namespace": LOCAL_PATH_NAMESPACE},
             "data": {"config.json": json.dumps(config), "setup": setup, "teardown": teardown,
                      "helperPod.yaml": json.dumps(helper_pod)}},
            {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
             "metadata": {"name": STORAGE_CLASS,
                          "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
             "provisioner": "h2ogpt.dev/local-path", "reclaimPolicy": "Delete",
             # The volume's folder is made on the node the pod was scheduled to.
             "volumeBindingMode": "WaitForFirstConsumer"},
        ]
        kubectl("apply", "--server-side", "--field-manager=localcluster", "-f", "-",
                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))

    def _wait(self, ok: Callable[[], bool], timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok():
                return
            time.sleep(0.2)
        raise NodeError(message)

    def _kill_pod_processes(self) -> None:
        """Containers and their shims outlive containerd: kill every process in a k8s.io cgroup."""
        for _ in range(3):
            pids: set[int] = set()
            for procs in Path("/sys/fs/cgroup").glob("*/k8s.io/**/cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
            shim_link = BIN / "containerd-shim-runc-v2"
            shim = str(shim_link.resolve()) if shim_link.exists() else None
            for proc in Path("/proc").iterdir():
                if shim and proc.name.isdigit():
                    with contextlib.suppress(OSError):
                        if os.readlink(proc / "exe") == shim:
                            pids.add(int(proc.name))
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)

    def _delete_pod_netns(self) -> None:
        recorded = self.dir / "netns-before"
        before = set(recorded.read_text().split()) if recorded.exists() else set()
        netns_dir = Path("/var/run/netns")
        if not netns_dir.exists():
            return
        for ns in netns_dir.iterdir():
            if ns.name.startswith("cni-") and ns.name not in before:
                _run("ip", "netns", "del", ns.name, check=False)

    def _remove_iptables_chains(self) -> None:
        for binary in _iptables_binaries():
            # Jumps into our chains first, then the chains themselves.
            for table, rule in _iptables_save(binary, "-A "):
                if re.search(rf"-j {OUR_CHAINS}", rule) and not re.match(OUR_CHAINS, rule):
                    _run(binary, "-t", table, "-D", *shlex.split(rule), check=False)
            chains = [(table, line.split()[0]) for table, line in _iptables_save(binary, ":")
                      if re.match(OUR_CHAINS, line)]
            for flag in ("-F", "-X"):  # empty every chain before deleting any: they jump to each other
                for table, name in chains:
                    _run(binary, "-t", table, flag, name, check=False)
        ipset = shutil.which("ipset") or "/usr/sbin/ipset"
        if Path(ipset).exists():  # once no rule refers to them
            for name in _our_ipsets():
                _run(ipset, "destroy", name, check=False)

    def _unmount_under(self, root: Path) -> None:
        prefix = str(root.resolve())
        for _ in range(3):
            mounts = []
            with contextlib.suppress(OSError), open("/proc/self/mountinfo") as info:
                for line in info:
                    point = line.split()[4].replace("\\040", " ")
                    if point == prefix or point.startswith(prefix + "/"):
                        mounts.append(point)
            if not mounts:
                return
            for point in sorted(mounts, key=len, reverse=True):
                _run("umount", "-l", point, check=False)

    def _new_links(self) -> list[str]:
        """The pods' veths: links made since `prepare()`."""
        links_file = self.dir / "links-before"
        if not links_file.exists():  # no record (a crashed run's folder is gone): those on our bridge
            return [link.parent.name for link in Path("/sys/class/net").glob("veth*/master")
                    if os.path.basename(os.readlink(link)) == BRIDGE]
        before = set(links_file.read_text().split())
        return [link.name for link in Path("/sys/class/net").iterdir()
                if link.name.startswith("veth") and link.name not in before]

    def _machine_paths_before(self) -> dict[str, list[str] | None]:
        recorded = self.dir / "paths-before"
        return dict(json.loads(recorded.read_text())) if recorded.exists() else {}

    def _remove_new_machine_paths(self) -> None:
        before = self._machine_paths_before()
        for path in MACHINE_PATHS:  # children before parents
            if not path.is_dir() or str(path) not in before:
                continue
            kept = before[str(path)]
            for entry in path.iterdir():
                if kept is not None and entry.name in kept:
                    continue
                if entry.is_socket() or entry.is_file():
                    entry.unlink()
            if kept is None:
                with contextlib.suppress(OSError):
                    path.rmdir()  # only when empty: anything else there is not ours

    def _remove_cgroups(self) -> None:
        for top in Path("/sys/fs/cgroup").glob("*/k8s.io"):
            for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()


def _owner_is_gone() -> bool:
    """True when no process of the cluster that made the machine's real node still runs."""
    owner = OWNER_FILE.read_text().strip() if OWNER_FILE.exists() else ""
    state = Path(owner) / "state.json" if owner else None
    if state is None or not state.exists():
        return True
    pids = json.loads(state.read_text()).get("pids", {}).values()
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


def _our_ipsets() -> list[str]:
    ipset = shutil.which("ipset") or "/usr/sbin/ipset"
    if not Path(ipset).exists():
        return []
    names = _run(ipset, "list", "-n", check=False).stdout.decode().split()
    return [name for name in names if re.match(OUR_IPSETS, name)]


def _iptables_binaries() -> list[str]:
    candidates = [shutil.which(tool) or f"/usr/sbin/{tool}" for tool in ("iptables", "ip6tables")]
    return [binary for binary in candidates if Path(binary).exists()]


def _iptables_save(binary: str, prefix: str) -> list[tuple[str, str]]:
    """(table, line without `prefix`) for each line of `<binary>-save` that starts with `prefix`."""
    table, lines = "", []
    for line in _run(f"{binary}-save", check=False).stdout.decode().splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(prefix):
            lines.append((table, line[len(prefix):]))
    return lines


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
