"""`--workers N`: N processes serve the OpenAI port, so a node with more cores is used.

Each worker is a whole `h2ogpt-api` process (one event loop, its own core and backend
connections) listening on the same port with SO_REUSEPORT: the kernel spreads new connections
over the workers. This process only starts them, waits until all are serving, and stops them
together: a stop signal is passed on once, and every worker finishes its answers; when one dies,
the others are stopped and the exit status says so (a supervisor such as Kubernetes restarts the
whole pod).

What one process used to hold alone, and how it stays correct with N:
- metrics: each worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's
  multiprocess mode); `/metrics` on any worker sums every worker (gauges: the live ones).
- the load wake's count of generations in flight (`--scale_up_in_flight`): one integer per worker in
  a file they all map (`SharedInFlightCount`), so each compares the pod's load, not its share, with
  the target.
- admission: each worker admits its share of the limit, rounded up (h2ogpt_api.concurrency).
- /v1/responses' stored conversations and open-access registrations (without a document
  store): a SQLite file every worker opens (`open_state_db`), so a continuation or a login may reach
  any worker. The supervisor puts it in WAL mode before the workers start: two connections switching
  a new file to WAL at once can get "database is locked" without waiting (seen: a worker failing
  its start about one time in three when two started together).
- Gradio: its sessions live in one process, so the Gradio app runs in the first worker only.
- the anonymous-MyData sweeper runs in the first worker only.
Refused, with the reason, where N processes cannot be right: the embedded model (each worker
would load it and they would share the cores), the local weaviate-server (one process owns its
data folder), --user_path (ingested once at start, before serving), per-key limits (counted in
each process, so N workers would admit N times each limit).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from h2ogpt_api.settings import Settings

log = logging.getLogger("h2ogpt_api")

# In a worker's environment: "<index>/<count>", the shared folder, the fd to report readiness on.
WORKER_ENV = "H2OGPT_API_WORKER"
STATE_DIR_ENV = "H2OGPT_API_WORKERS_DIR"
READY_FD_ENV = "H2OGPT_API_WORKER_READY_FD"
METRICS_SUBDIR = "metrics"
STATE_FILE = "state.sqlite3"
IN_FLIGHT_FILE = "in-flight"
# Written by the supervisor once every worker serves: until then a worker's /health says "starting",
# since one worker failing its start-up stops them all (the pod must not look ready before that).
ALL_STARTED_FILE = "all-started"
START_TIMEOUT_S = 600.0  # a worker loads the embedding model and connects to Weaviate first
LISTEN_BACKLOG = 2048


@dataclass(frozen=True)
class WorkerRole:
    """Which worker this process is, and the folder the workers share."""

    index: int
    count: int
    state_dir: Path
    ready_fd: int | None

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    def all_started(self) -> bool:
        """Whether the supervisor has seen every worker start."""
        return (self.state_dir / ALL_STARTED_FILE).exists()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerRole | None:
        value = environ.get(WORKER_ENV)
        if not value:
            return None
        index, _, count = value.partition("/")
        ready = environ.get(READY_FD_ENV)
        return cls(int(index), int(count), Path(environ[STATE_DIR_ENV]), int(ready) if ready else None)

    def report_ready(self) -> None:
        if self.ready_fd is not None:
            os.write(self.ready_fd, b"r")
            os.close(self.ready_fd)


def open_state_db(path: Path) -> sqlite3.Connection:
    """The workers' shared SQLite file: autocommit, a 5 s busy wait, usable from any thread, in WAL
    mode (readers go on while one worker writes). The mode is stored in the file, so once the
    supervisor has set it (`supervise`) a worker only reads it: no worker takes the exclusive lock a
    switch needs, which SQLite may refuse at once, without the busy wait, to two switching together."""
    db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        db.execute("PRAGMA journal_mode=WAL")
    return db


class SharedInFlightCount:
    """Generations in flight over all of a pod's workers: one int64 slot per worker in a file every
    worker maps. Each worker writes only its own slot (an aligned 8-byte store, never torn), so no
    lock is needed; `total` sums the slots, a read of a few bytes, cheap enough for every request.
    The file is new with each pod start (the workers' folder is), and when a worker dies the
    supervisor stops them all, so no slot outlives its writer."""

    def __init__(self, role: WorkerRole) -> None:
        path = role.state_dir / IN_FLIGHT_FILE
        size = 8 * role.count
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(descriptor, size)  # every worker asks for the same size: nothing written is lost
            self._map = mmap.mmap(descriptor, size)
        finally:
            os.close(descriptor)
        self._slots = memoryview(self._map).cast("q")
        self._index = role.index

    def add(self, delta: int) -> None:
        self._slots[self._index] += delta

    def total(self) -> int:
        return sum(self._slots)


def refusals(settings: Settings) -> list[str]:
    """Why these settings cannot be served by several processes (none: they can)."""
    n = settings.workers
    reasons = []
    if not settings.openai_server:
        reasons.append(
            f"--workers {n} serves the OpenAI port from every worker: with --openai_server False use 1"
        )
    if not settings.inference_server:
        reasons.append(
            f"--workers {n} needs an --inference_server: the embedded model runs in one process "
            "(each worker would load it, and they would share the cores)"
        )
    if settings.document_modes and not settings.weaviate_url:
        reasons.append(
            f"--workers {n} needs --weaviate_url: the local weaviate-server is one process that owns "
            "its data folder (or use --langchain_modes \"['LLM']\")"
        )
    if settings.user_path is not None:
        reasons.append(
            f"--user_path is ingested once at start, before serving: start once with --workers 1 "
            f"(files already stored are skipped later), then with --workers {n} and no --user_path"
        )
    if settings.requests_per_minute or settings.tokens_per_minute:
        reasons.append(
            f"per-key limits (--requests_per_minute, --tokens_per_minute) are counted in each process: "
            f"--workers {n} would admit {n} times each limit; use --workers 1"
        )
    return reasons


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port that the other workers' sockets share (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bound, not listening: holds the port (and picks one for port 0) while connections go only
    to the workers' listening sockets."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"h2ogpt-api: cannot listen on {host}:{port} ({exc.strerror}): stop what uses it, "
            "or pass another --openai_port"
        ) from None
    return sock


def supervise(settings: Settings, argv: Sequence[str]) -> int:
    """Start `settings.workers` worker processes, wait until all serve, stop them together."""
    reasons = refusals(settings)
    if reasons:
        raise SystemExit("h2ogpt-api: " + "; ".join(reasons))
    count = settings.workers
    with contextlib.ExitStack() as stack:
        state_dir = Path(tempfile.mkdtemp(prefix="h2ogpt-api-workers-"))
        stack.callback(shutil.rmtree, state_dir, ignore_errors=True)
        (state_dir / METRICS_SUBDIR).mkdir()
        open_state_db(state_dir / STATE_FILE).close()  # WAL set once, before any worker opens it
        reserved = stack.enter_context(_reserve_port(settings.server_name, settings.openai_port))
        port = int(reserved.getsockname()[1])
        read_end, write_end = os.pipe()
        stack.callback(os.close, read_end)
        env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(state_dir / METRICS_SUBDIR),
            STATE_DIR_ENV: str(state_dir),
            READY_FD_ENV: str(write_end),
        }
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "h2ogpt_api", *argv, "--openai_port", str(port),
                 *([] if index == 0 else ["--gradio", "False"])],
                env={**env, WORKER_ENV: f"{index}/{count}"},
                pass_fds=(write_end,),
                # A process group of their own: a terminal's Ctrl-C reaches this process alone, which
                # passes it on once (had it reached the workers too, the copy passed on would be their
                # second signal, which stops at once, cutting answers).
                process_group=0,
            )
            for index in range(count)
        ]
        os.close(write_end)
        stack.callback(_stop, processes)
        with _forwarding_signals(processes) as stopping:
            if not _wait_ready(read_end, processes):
                return 1
            (state_dir / ALL_STARTED_FILE).touch()
            print(
                f"h2ogpt-api ready ({count} workers on port {port}, Gradio in the first; "
                f"model {settings.base_model})",
                flush=True,
            )
            return _watch(processes, stopping)


def _wait_ready(read_end: int, processes: list[subprocess.Popen[bytes]]) -> bool:
    ready = 0
    deadline = time.monotonic() + START_TIMEOUT_S
    while ready < len(processes):
        if time.monotonic() > deadline:
            log.error("the workers did not all start within %.0f s", START_TIMEOUT_S)
            return False
        for index, process in enumerate(processes):
            if process.poll() is not None:
                log.error("worker %d exited with %s during start-up", index, process.returncode)
                return False
        readable, _, _ = select.select([read_end], [], [], 0.2)
        if readable:
            ready += len(os.read(read_end, 64))
    return True


@dataclass
class _Stopping:
    """Whether a stop signal has been passed on to the workers."""

    signalled: bool = False


def _watch(processes: list[subprocess.Popen[bytes]], stopping: _Stopping) -> int:
    """Until the workers end: after a stop signal every one of them, each finishing its drain and its
    streams in its own time (the pod's grace period bounds them all); else the first to die, whose
    exit status is returned (the others are then stopped)."""
    while True:
        codes = [process.poll() for process in processes]
        if stopping.signalled:
            if all(code is not None for code in codes):
                return next((code for code in codes if code), 0)
        else:
            for index, code in enumerate(codes):
                if code is not None:
                    if code != 0:
                        log.error("worker %d exited with %s: stopping the others", index, code)
                    return code
        time.sleep(0.2)


@contextlib.contextmanager
def _forwarding_signals(processes: list[subprocess.Popen[bytes]]) -> Iterator[_Stopping]:
    stopping = _Stopping()

    def forward(signum: int, _: FrameType | None) -> None:
        stopping.signalled = True
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopping
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
