"""Helpers for the document Q&A tests of the OpenAI side: add documents to the Weaviate a running
`h2ogpt-api` uses (through the store API, as there is no OpenAI route for ingestion), find that
Weaviate, and read the h2oGPT extras (`usage.sources`) from OpenAI responses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from h2ogpt_api.retrieval.base import AddResult, Embedder, Identity
from h2ogpt_api.retrieval.embeddings import load_embedder
from h2ogpt_api.retrieval.store import open_document_store
from h2ogpt_api.retrieval.weaviate_process import WEAVIATE_BINARY_NAME


def embedded_weaviate_url(save_dir: Path) -> str:
    """The `--weaviate_url` form of the weaviate-server that `h2ogpt-api --save_dir save_dir` started."""
    ports = json.loads((save_dir / "weaviate" / "ports.json").read_text())
    return f"http://127.0.0.1:{ports['http']}?grpc_port={ports['grpc']}"


class DocumentLoader:
    """Adds and lists documents in one Weaviate, with the server's default embedding model."""

    def __init__(self, weaviate_url: str, collections: list[str]) -> None:
        self.weaviate_url = weaviate_url
        self.collections = collections
        self._embedder: Embedder = load_embedder("")

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async with open_document_store(
            weaviate_url=self.weaviate_url, weaviate_api_key="", save_dir=Path("unused"),
            embedding_server="", collections=self.collections, embedder=self._embedder,
        ) as store:
            return await getattr(store, method)(*args, **kwargs)

    def add_text(self, text: str, collection: str, identity: Identity, *, source: str,
                 chunk_size: int = 512) -> AddResult:
        result: AddResult = asyncio.run(self._call(
            "add_text", text, collection=collection, identity=identity, source=source, chunk_size=chunk_size))
        return result

    def list_sources(self, collection: str, identity: Identity) -> list[str]:
        sources: list[str] = asyncio.run(self._call("list_sources", collection=collection, identity=identity))
        return sources


def sources_of(result: Any) -> list[dict[str, Any]]:
    """h2oGPT's `usage.sources` of a non-streamed OpenAI response."""
    extras: dict[str, Any] = result.usage.model_extra or {}
    sources: list[dict[str, Any]] = extras["sources"]
    return sources


def answer_words(text: str) -> str:
    """`text` as the TGI fake echoes it: its words joined by single spaces."""
    return " ".join(text.split())


def child_pids(parent: int) -> list[int]:
    """The direct children of a process, from each process's /proc/<pid>/stat (Linux)."""
    children: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def weaviate_child_pid(api_pid: int) -> int:
    """The weaviate-server that the `h2ogpt-api` process `api_pid` started and supervises."""
    for pid in child_pids(api_pid):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except FileNotFoundError:
            continue
        if WEAVIATE_BINARY_NAME.startswith(name):  # comm is cut to 15 characters
            return pid
    raise LookupError(f"h2ogpt-api (pid {api_pid}) has no {WEAVIATE_BINARY_NAME} child")


def kill_and_wait_gone(pid: int, timeout_s: float = 30.0) -> None:
    """SIGKILL one process we started (a crash), and wait until it is reaped by its parent."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":  # dead, waiting for its parent's wait(): as good as gone for us
            return
        time.sleep(0.05)
    raise TimeoutError(f"process {pid} did not die within {timeout_s:g} s")
