"""A real weaviate-server for the test session, on free loopback ports in a temporary folder.

It is started with the same launcher `h2ogpt-api` uses for its embedded store
(`WeaviateProcess`), so these tests exercise that too. `restart()` stops and starts the process
on the same data, which is how tests prove that documents persist.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from h2ogpt_api.retrieval.weaviate_process import (
    ClusterMembership,
    WeaviatePorts,
    WeaviateProcess,
    find_weaviate_binary,
)


@dataclass
class WeaviateServer:
    process: WeaviateProcess

    @property
    def url(self) -> str:
        """What `--weaviate_url` takes: the REST address with the gRPC port as a query parameter."""
        assert self.process.ports is not None
        return f"{self.process.http_url}?grpc_port={self.process.ports.grpc}"

    @property
    def grpc_port(self) -> int:
        assert self.process.ports is not None
        return self.process.ports.grpc

    def restart(self) -> None:
        self.process.restart()

    def log(self) -> str:
        path = self.process.root_dir / "weaviate.log"
        return path.read_text(errors="replace") if path.exists() else ""


def weaviate_binary_or_fail() -> Path:
    try:
        return find_weaviate_binary()
    except FileNotFoundError as exc:
        pytest.fail(f"{exc} (the document store tests need a real Weaviate)")


@pytest.fixture(scope="session")
def weaviate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeaviateServer]:
    process = WeaviateProcess(tmp_path_factory.mktemp("weaviate"), binary=weaviate_binary_or_fail())
    process.start()
    try:
        yield WeaviateServer(process)
    finally:
        process.stop()


@dataclass
class WeaviateCluster:
    """Several weaviate-server processes on loopback forming one cluster (Raft for the schema,
    memberlist gossip, replicated shards), as the operator's StatefulSet does with several pods."""

    nodes: list[WeaviateProcess]

    def url(self, index: int) -> str:
        return WeaviateServer(self.nodes[index]).url

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_weaviate_cluster(root: Path, size: int, replication_factor: int) -> WeaviateCluster:
    """`size` nodes, every collection replicated `replication_factor` times (Weaviate's
    REPLICATION_MINIMUM_FACTOR, what the operator sets). Raft waits for all `size` voters, so the
    nodes start together."""
    binary = weaviate_binary_or_fail()
    ports = [WeaviatePorts.pick_free_pairs() for _ in range(size)]
    raft_join = ",".join(f"node{i}:{p.raft}" for i, p in enumerate(ports))
    nodes = [
        WeaviateProcess(
            root / f"node{i}", binary=binary, ports=p, startup_timeout_s=120.0,
            membership=ClusterMembership(
                node_name=f"node{i}", join="" if i == 0 else f"127.0.0.1:{ports[0].gossip}",
                raft_join=raft_join, bootstrap_expect=size, minimum_replication_factor=replication_factor))
        for i, p in enumerate(ports)
    ]
    for node in nodes:
        node.root_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=size) as pool:
        started = [pool.submit(node.start) for node in nodes]
    errors = [future.exception() for future in started if future.exception() is not None]
    if errors:
        for node in nodes:
            node.stop()
        logs = "\n".join(f"--- {n.root_dir / 'weaviate.log'}\n{WeaviateServer(n).log()[-2000:]}"
                         for n in nodes)
        pytest.fail(f"the {size}-node Weaviate cluster did not start: {errors[0]}\n{logs}")
    return WeaviateCluster(nodes)
