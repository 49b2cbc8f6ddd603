"""A real weaviate-server for the test session, on free loopback ports in a temporary folder.

It is started with the same launcher `h2ogpt-api` uses for its embedded store
(`WeaviateProcess`), so these tests exercise that too. `restart()` stops and starts the process
on the same data, which is how tests prove that documents persist.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from h2ogpt_api.retrieval.weaviate_process import WeaviateProcess, find_weaviate_binary


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
