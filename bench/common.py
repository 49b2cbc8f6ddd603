"""Shared pieces of the benchmarks: machine facts, timing, percentiles, markdown, servers.

Every bench module exposes `run(quick: bool = False) -> str` (its markdown section) and ends
with `if __name__ == "__main__": bench_main(run)`, so it runs alone as
`.venv/bin/python -m bench.<name> [--quick] [--output FILE]` and under `bench.run_all`.
Servers are started as separate processes (never in the load generator's process), on free
loopback ports, and always stopped when the `with` block ends.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
SERVER_START_TIMEOUT_S = 90.0
SERVER_STOP_TIMEOUT_S = 15.0
LOG_TAIL_CHARS = 3000

# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MachineInfo:
    cpus: int
    cpu_model: str
    memory_gib: float
    kernel: str
    python: str
    load_average: tuple[float, float, float]


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)
    return float("nan")


def machine_info() -> MachineInfo:
    return MachineInfo(
        cpus=os.cpu_count() or 1,
        cpu_model=_cpu_model(),
        memory_gib=_memory_gib(),
        kernel=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        load_average=os.getloadavg(),
    )


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of Python distributions; 'not installed' for the missing ones."""
    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def tool_path(name: str) -> Path | None:
    """An external binary the way the project finds them: `<repo>/.bin/<name>`, else PATH."""
    local = REPO_ROOT / ".bin" / name
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    return Path(found) if found else None


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """The `pct`-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class LatencySummary:
    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> LatencySummary:
        return cls(
            count=len(values),
            mean=sum(values) / len(values),
            p50=percentile(values, 50),
            p95=percentile(values, 95),
            p99=percentile(values, 99),
            max=max(values),
        )


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


class Stopwatch:
    """Accumulates the time spent inside `with stopwatch:` blocks (and counts them)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.calls = 0
        self.samples: list[float] = []

    def __enter__(self) -> Stopwatch:
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self._started
        self.total += elapsed
        self.calls += 1
        self.samples.append(elapsed)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def secs(seconds: float) -> str:
    return f"{seconds:.2f}"


def ratio(value: float) -> str:
    return f"{value:.2f}x"


def share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "n/a"


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, left: int = 1) -> str:
    """A GitHub markdown table: the first `left` columns left-aligned (labels), the rest
    right-aligned (numbers)."""
    if any(len(row) != len(headers) for row in rows):
        raise ValueError("every row needs one cell per header")

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|" + "|".join([":---" if i < left else "---:" for i in range(len(headers))]) + "|",
    ]
    lines.extend("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Processes and servers
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class ServerError(RuntimeError):
    """A server the benchmark needs did not start or died; the message carries its log's tail."""


@dataclass
class BackgroundProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self) -> str:
        return self.log()[-LOG_TAIL_CHARS:]

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ServerError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")


@contextlib.contextmanager
def background_process(
    name: str, command: Sequence[str], env: Mapping[str, str] | None = None
) -> Iterator[BackgroundProcess]:
    """Run `command` with its output in a log file; SIGTERM (then SIGKILL) it when the block ends."""
    log_file = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)  # noqa: SIM115
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        list(command), stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=REPO_ROOT
    )
    log_file.close()
    running = BackgroundProcess(name, process, Path(log_file.name))
    try:
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        running.log_path.unlink(missing_ok=True)


def wait_http_ok(url: str, running: BackgroundProcess, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
    """Poll `url` until it answers 200, failing early (with the log) when the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    raise ServerError(f"{running.name} did not answer {url} within {timeout_s:.0f}s:\n{running.log_tail()}")


@contextlib.contextmanager
def tgi_fake_server(
    token_delay: float, *, repeat: bool = True, max_concurrent_requests: int = 1024
) -> Iterator[str]:
    """The TGI-protocol fake (tests/support/tgi_fake.py) in its own process; yields its base URL.

    `repeat` makes every answer run to the request's `max_new_tokens`, so a call's latency is
    exactly `max_new_tokens * token_delay` plus overheads. `max_concurrent_requests` is what it
    admits at once and reports in `/info` (as TGI run with --max-concurrent-requests 1024).
    """
    port = free_port()
    command = [sys.executable, "-m", "tests.support.tgi_fake", "--host", LOOPBACK, "--port", str(port),
               "--token-delay", str(token_delay), "--max-concurrent-requests", str(max_concurrent_requests)]
    if repeat:
        command.append("--repeat")
    with background_process("tgi-fake", command) as running:
        url = f"http://{LOOPBACK}:{port}"
        wait_http_ok(url + "/health", running)
        yield url


@dataclass(frozen=True)
class ApiEndpoints:
    openai_url: str | None  # ends in /v1
    gradio_url: str | None
    process: BackgroundProcess

    @property
    def openai_root(self) -> str:
        if self.openai_url is None:
            raise ServerError("this h2ogpt-api serves no OpenAI app (--openai_server False)")
        return self.openai_url.removesuffix("/v1")


_URL_LINE = re.compile(r"^(OpenAI API|Gradio UI): (http://\S+)$", re.MULTILINE)


def h2ogpt_api_executable() -> str:
    candidate = Path(sys.executable).parent / "h2ogpt-api"
    return str(candidate if candidate.exists() else REPO_ROOT / ".venv" / "bin" / "h2ogpt-api")


@contextlib.contextmanager
def h2ogpt_api_server(args: Sequence[str], env: Mapping[str, str] | None = None) -> Iterator[ApiEndpoints]:
    """The real `h2ogpt-api` console script on loopback ports it picks itself; `args` come last and
    override the defaults here (no Gradio, warning-level logs, a fresh --save_dir)."""
    with tempfile.TemporaryDirectory(prefix="bench-h2ogpt-save-") as save_dir:
        command = [
            h2ogpt_api_executable(),
            "--server_name", LOOPBACK, "--openai_port", "0", "--gradio_port", "0", "--gradio", "False",
            "--log_level", "warning", "--save_dir", save_dir, *args,
        ]
        # The bench's own H2OGPT_* variables must not leak into the server it measures.
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("H2OGPT_")}
        with background_process("h2ogpt-api", command, env={**clean_env, **(env or {})}) as running:
            yield _wait_api_ready(running)


def _wait_api_ready(running: BackgroundProcess) -> ApiEndpoints:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        running.check_alive()
        text = running.log()
        if "h2ogpt-api ready" in text:
            urls = {m.group(1): m.group(2) for m in _URL_LINE.finditer(text)}
            endpoints = ApiEndpoints(urls.get("OpenAI API"), urls.get("Gradio UI"), running)
            if endpoints.openai_url is not None:
                wait_http_ok(endpoints.openai_root + "/health", running)
            return endpoints
        time.sleep(0.05)
    raise ServerError(f"h2ogpt-api was not ready within {SERVER_START_TIMEOUT_S:.0f}s:\n{running.log_tail()}")


# ---------------------------------------------------------------------------------------------
# Running a bench module alone
# ---------------------------------------------------------------------------------------------


def _exit_on_sigterm(signum: int, frame: object) -> None:
    print("bench: stopped by SIGTERM; stopping the servers it started", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def bench_main(run: Callable[[bool], str], argv: Sequence[str] | None = None) -> None:
    """Command line of every bench module: print (or write) its markdown section."""
    parser = argparse.ArgumentParser(description=(sys.modules["__main__"].__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run in seconds")
    parser.add_argument("--output", type=Path, help="write the markdown section here instead of stdout")
    options = parser.parse_args(argv)
    # SIGTERM (run_all's time limit, or a user's kill) unwinds like Ctrl-C, so every `with`
    # block stops the servers it started instead of leaving them running.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    section = run(options.quick)
    if options.output is None:
        print(section)
    else:
        options.output.write_text(section)
