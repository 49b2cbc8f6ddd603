"""A local weaviate-server process: the embedded default store when no `--weaviate_url` is given.

Weaviate runs as a single node on loopback with anonymous access and no vectorizer module (we
send our own vectors). Its data lives under `<save_dir>/weaviate/data`, so documents survive a
restart of the process and of `h2ogpt-api`. Every port it opens (REST, gRPC, gossip, data,
Raft, Raft RPC, profiling) is chosen free at first start and remembered next to the data, so
several servers can run on one machine and a restarted one comes back at the same addresses.

A `ClusterMembership` makes the process one node of a multi-node cluster on loopback instead
(the replication tests run three); `h2ogpt-api` itself only ever starts the single node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import httpx

from h2ogpt_api.retrieval.base import DocumentStoreUnavailableError

log = logging.getLogger(__name__)

WEAVIATE_BINARY_NAME = "weaviate-server"
WEAVIATE_BIN_ENV = "H2OGPT_WEAVIATE_BIN"
NODE_NAME = "node1"
LOOPBACK = "127.0.0.1"
READY_PATH = "/v1/.well-known/ready"


def repo_root() -> Path:
    # api/h2ogpt_api/retrieval/weaviate_process.py -> the checkout's root (holds .bin/ after `make tools`).
    return Path(__file__).resolve().parents[3]


def find_weaviate_binary() -> Path:
    """`<repo>/.bin/weaviate-server`, else `$H2OGPT_WEAVIATE_BIN`, else `weaviate-server` on PATH."""
    candidates: list[Path] = [repo_root() / ".bin" / WEAVIATE_BINARY_NAME]
    if os.environ.get(WEAVIATE_BIN_ENV):
        candidates.append(Path(os.environ[WEAVIATE_BIN_ENV]))
    on_path = shutil.which(WEAVIATE_BINARY_NAME)
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        f"no {WEAVIATE_BINARY_NAME} binary: run `make tools` (it builds one into .bin/), set "
        f"{WEAVIATE_BIN_ENV}, put it on PATH, or point --weaviate_url at an external Weaviate"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    # Weaviate's gRPC and gossip listeners bind every interface, so check the wildcard address.
    # SO_REUSEADDR as Go's listeners set it: connections of a just-killed server in TIME_WAIT do
    # not keep it from binding again, so they must not make us pick new ports either.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return False
        return True


def _free_pair() -> int:
    """A free port whose successor is free too."""
    while True:
        port = free_port()
        if port < 65535 and port_is_free(port + 1):
            return port


@dataclass(frozen=True)
class WeaviatePorts:
    http: int
    grpc: int
    gossip: int
    data: int
    raft: int
    raft_rpc: int
    profiling: int

    @classmethod
    def pick_free(cls) -> WeaviatePorts:
        chosen: set[int] = set()
        values: list[int] = []
        for _ in range(7):
            port = free_port()
            while port in chosen:
                port = free_port()
            chosen.add(port)
            values.append(port)
        return cls(*values)

    @classmethod
    def pick_free_pairs(cls) -> WeaviatePorts:
        """Free ports where data = gossip + 1 and Raft RPC = Raft + 1 (a cluster node's ports)."""
        gossip, raft = _free_pair(), _free_pair()
        while raft in (gossip, gossip + 1) or raft + 1 == gossip:
            raft = _free_pair()
        taken = {gossip, gossip + 1, raft, raft + 1}
        others: list[int] = []
        while len(others) < 3:
            port = free_port()
            if port not in taken:
                taken.add(port)
                others.append(port)
        http, grpc, profiling = others
        return cls(http, grpc, gossip, gossip + 1, raft, raft + 1, profiling)

    def all_free(self) -> bool:
        return all(port_is_free(port) for port in asdict(self).values())


@dataclass(frozen=True)
class ClusterMembership:
    """One node's place in a multi-node Weaviate on loopback. Weaviate finds a peer's data port
    at its gossip port + 1 and its Raft RPC port at its Raft port + 1, so each node's ports must
    come in those pairs (`WeaviatePorts.pick_free_pairs`)."""

    node_name: str
    join: str  # a peer's gossip address (host:port); "" for the first node
    raft_join: str  # every voter, "name:raft_port,..."
    bootstrap_expect: int
    minimum_replication_factor: int


def weaviate_environment(data_dir: Path, ports: WeaviatePorts,
                         membership: ClusterMembership | None = None) -> dict[str, str]:
    """The environment of a loopback, anonymous, vectorizer-less weaviate-server: a single node,
    or one node of `membership`'s cluster."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "TMPDIR", "LANG") if key in os.environ}
    env.update({
        "PERSISTENCE_DATA_PATH": str(data_dir),
        "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
        "DEFAULT_VECTORIZER_MODULE": "none",
        "ENABLE_MODULES": "",
        "DISABLE_TELEMETRY": "true",
        "PROMETHEUS_MONITORING_ENABLED": "false",
        "GO_PROFILING_DISABLE": "true",
        "GO_PROFILING_PORT": str(ports.profiling),
        "GRPC_PORT": str(ports.grpc),
        "CLUSTER_HOSTNAME": NODE_NAME,
        "CLUSTER_ADVERTISE_ADDR": LOOPBACK,
        "CLUSTER_BIND_ADDR": LOOPBACK,
        "CLUSTER_GOSSIP_BIND_PORT": str(ports.gossip),
        "CLUSTER_DATA_BIND_PORT": str(ports.data),
        "RAFT_PORT": str(ports.raft),
        "RAFT_INTERNAL_RPC_PORT": str(ports.raft_rpc),
        "RAFT_BOOTSTRAP_EXPECT": "1",
        "LOG_LEVEL": "warning",
        "QUERY_DEFAULTS_LIMIT": "100",
    })
    if membership is not None:
        env.update({
            "CLUSTER_HOSTNAME": membership.node_name,
            "CLUSTER_IN_LOCALHOST": "true",
            "RAFT_JOIN": membership.raft_join,
            "RAFT_BOOTSTRAP_EXPECT": str(membership.bootstrap_expect),
            "REPLICATION_MINIMUM_FACTOR": str(membership.minimum_replication_factor),
        })
        if membership.join:
            env["CLUSTER_JOIN"] = membership.join
    return env


class WeaviateProcess:
    """Start, watch, restart and stop one local weaviate-server."""

    def __init__(self, root_dir: Path, *, binary: Path | None = None,
                 startup_timeout_s: float = 90.0, membership: ClusterMembership | None = None,
                 ports: WeaviatePorts | None = None) -> None:
        self.root_dir = root_dir
        self.membership = membership
        self._fixed_ports = ports  # a cluster node's ports, known to its peers before it starts
        self.data_dir = root_dir / "data"
        self.binary = binary
        self.startup_timeout_s = startup_timeout_s
        self.ports: WeaviatePorts | None = None
        self.restarts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._wanted = False  # started and not stopped: the supervisor keeps it running
        # The running process has answered ready. Not before: a weaviate-server that listens but is
        # still loading its schema answers "no such collection" (404) for collections it holds.
        self._serving = False
        self._log_file: IO[bytes] | None = None

    @property
    def http_url(self) -> str:
        if self.ports is None:
            raise RuntimeError("weaviate-server has not been started")
        return f"http://{LOOPBACK}:{self.ports.http}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def is_serving(self) -> bool:
        """Running and ready since its last start: what the store may send requests to."""
        return self._serving and self.is_running()

    def _ports_file(self) -> Path:
        return self.root_dir / "ports.json"

    def _choose_ports(self) -> WeaviatePorts:
        """The previous run's ports when all are still free (Raft remembers its address), else new ones."""
        if self._fixed_ports is not None:
            return self._fixed_ports
        try:
            remembered = WeaviatePorts(**json.loads(self._ports_file().read_text()))
        except (OSError, ValueError, TypeError):
            remembered = None
        if remembered is not None and remembered.all_free():
            return remembered
        ports = WeaviatePorts.pick_free()
        self._ports_file().write_text(json.dumps(asdict(ports)))
        return ports

    def start(self) -> None:
        """Start the server and wait until it answers ready. Idempotent while it runs."""
        if self.is_running():
            return
        self._wanted = True
        self._serving = False
        binary = self.binary or find_weaviate_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = self._choose_ports()
        self._close_log()
        self._log_file = (self.root_dir / "weaviate.log").open("ab")
        log.info("starting %s on %s (gRPC %d), data in %s", binary, self.http_url, self.ports.grpc,
                 self.data_dir)
        self._process = subprocess.Popen(
            [str(binary), "--host", LOOPBACK, "--port", str(self.ports.http), "--scheme", "http"],
            env=weaviate_environment(self.data_dir, self.ports, self.membership),
            stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in our terminal reaches us, and we stop it cleanly
        )
        self._wait_ready()
        self._serving = True

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.is_running():
                    raise RuntimeError(f"weaviate-server exited during startup with code "
                                       f"{self._process.returncode if self._process else None}; "
                                       f"see {self.root_dir / 'weaviate.log'}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.http_url + READY_PATH).status_code == 200:
                        return
                time.sleep(0.2)
        self._terminate()
        raise RuntimeError(f"weaviate-server was not ready within {self.startup_timeout_s:g} s; "
                           f"see {self.root_dir / 'weaviate.log'}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop it for good (the supervisor leaves it stopped)."""
        self._wanted = False
        self._terminate(timeout_s)

    def _terminate(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (Weaviate flushes its memtables), then SIGKILL if it does not exit in time."""
        self._serving = False
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("weaviate-server did not stop within %g s; killing it", timeout_s)
                process.kill()
                process.wait()
        self._process = None
        self._close_log()

    def kill(self) -> None:
        """Kill the process abruptly (what a crash looks like); the supervisor restarts it."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def supervise(self, interval_s: float = 2.0) -> None:
        """Restart the server whenever it has died, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            if self._wanted and not self.is_running():
                code = self._process.returncode if self._process else None
                log.warning("weaviate-server exited with code %s; restarting it", code)
                try:
                    await asyncio.to_thread(self.start)
                    self.restarts += 1
                except (RuntimeError, OSError):
                    log.exception("restarting weaviate-server failed; retrying")


def refuse_while_restarting(local: WeaviateProcess | None) -> None:
    """A weaviate-server this process supervises is asked nothing until it is ready again: one that
    listens while it still loads its schema says a collection it holds does not exist, which would
    read as "no documents" (an answer without its sources, a login unknown) instead of "retry"."""
    if local is not None and not local.is_serving():
        raise DocumentStoreUnavailableError(
            "the document store (Weaviate) is restarting and not ready yet; retry shortly"
        )
