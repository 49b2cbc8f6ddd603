"""What h2ogpt-api's OpenAI and Gradio sides add on top of the backend, side by side with LiteLLM.

The TGI fake streams at a fixed token rate. The same streaming chat request is sent at 1, 16,
64 and 256 concurrent streams (a) straight to the fake's OpenAI-compatible chat route,
(b) through h2ogpt-api's OpenAI side, (c) through its Gradio side (`/submit_nochat_api`, over
Gradio's queued REST API), (d) through LiteLLM's proxy pointed at the same fake. The load comes
from a small Go program (bench/loadgen, built once into the cache) so the load generator does
not eat the CPU the servers need; its own CPU is reported too.

Reported per target and concurrency: added time-to-first-token over direct (median, p99),
token throughput as a share of direct, CPU seconds per request of the serving process (from
/proc, children included), and errors. Targets are interleaved within each round and the
whole set is repeated for `ROUNDS`; each cell is the median over rounds, so a burst of load
from other processes on the machine moves one round, not the result. While one target is
measured, the others' servers are stopped (SIGSTOP; the fake, which they all use, runs on).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import (
    LOOPBACK,
    REPO_ROOT,
    BackgroundProcess,
    ServerError,
    background_process,
    bench_main,
    free_port,
    h2ogpt_api_server,
    machine_info,
    markdown_table,
    median,
    package_versions,
    percentile,
    tgi_fake_server,
    wait_http_ok,
)

TOKEN_DELAY_S = 0.01  # the fake's pace: 100 tokens/s per stream
MAX_TOKENS = 64
CONCURRENCY = (1, 16, 64, 256)
QUICK_CONCURRENCY = (1, 16)
ROUNDS = 2
# Each measured phase sends at least this many requests and lasts at least about this long.
MIN_REQUESTS = 10
MIN_PHASE_S = 1.2
TARGET_SHARE_AT = 64  # the concurrency the Gradio side's targets are judged at
OPENAI_SHARE_AT = 256  # the concurrency the OpenAI side's throughput target is judged at
# Issue 16's "server CPU per request halved" is judged against the code it was filed on (main before
# its work), measured in the same run: the machine's speed moves between runs by more than a change
# does (docs/benchmarks.md held 6.9 ms per answer at 64 streams when it was filed, from a run days
# before; that code spent 5.4 ms here on 2026-12-01, beside 5.3 ms for the code of that day).
FILED_COMMIT = "d16a700"
WORKERS = 2  # the --workers target
FLOOR = "floor-relay"  # bench/floor_relay.py: a reference, not a product
VLLM = "h2ogpt-openai-vllm"  # the OpenAI side before the fake's OpenAI route, as before vLLM
# The `api/` folder of another checkout (e.g. `git archive <commit> api | tar -x -C /tmp/before`):
# its h2ogpt-api, with the same flags, is measured in the same run as "before-openai" and
# "before-gradio", so a change is compared side by side on the same machine at the same time.
# Unset: FILED_COMMIT's, unpacked from this checkout's git history.
BASELINE_ENV = "BENCH_BASELINE_API"
BEFORE_OPENAI = "before-openai"
PROMPT = "Tell me about the platform in a few words please"
MODEL = "fake/tgi-echo"
LITELLM_KEY = "sk-bench-litellm"

LOADGEN_SOURCE = REPO_ROOT / "bench" / "loadgen"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "h2ogpt-platform"
LITELLM_VENV = CACHE_DIR / "litellm-venv"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------------------------------------
# The load generator
# ---------------------------------------------------------------------------------------------


def loadgen_binary() -> Path:
    """The Go load generator, built into the cache when its source is newer than the binary."""
    binary = CACHE_DIR / "loadgen" / "loadgen"
    sources = [LOADGEN_SOURCE / "main.go", LOADGEN_SOURCE / "go.mod"]
    newest = max(path.stat().st_mtime for path in sources)
    if binary.exists() and binary.stat().st_mtime >= newest:
        return binary
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise ServerError("the load generator needs Go (https://go.dev) on PATH to build bench/loadgen")
    binary.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=LOADGEN_SOURCE,
        check=True,
        env={**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"},
    )
    return binary


@dataclass(frozen=True)
class Request:
    """One kind of request the load generator repeats: where, which protocol, what body."""

    url: str
    protocol: str  # openai | gradio
    body: str
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    ttfts: list[float]
    ok: int
    errors: list[str]
    wall_s: float
    loadgen_cpu_s: float
    server_cpu_s: float

    @property
    def requests(self) -> int:
        return self.ok + len(self.errors)

    @property
    def tokens_per_s(self) -> float:
        # The fake (--repeat) answers every request with exactly MAX_TOKENS tokens.
        return self.ok * MAX_TOKENS / self.wall_s


def answer_bytes(direct: Request) -> int:
    """The size of the whole answer to `direct` (a request straight to the fake, which answers
    every request the same): what each proxied answer must add up to, however it is chunked."""
    size = 0
    with httpx.stream("POST", direct.url, content=direct.body, timeout=60,
                      headers={"Content-Type": "application/json"}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[len("data: "):]).get("choices") or ():
                    size += len(((choice.get("delta") or {}).get("content") or "").encode())
    if not size:
        raise ServerError(f"the fake at {direct.url} answered no text")
    return size


def drive(
    binary: Path,
    request: Request,
    concurrency: int,
    per_stream: int,
    server_pids: Sequence[int],
    *,
    whole_answer_bytes: int,
) -> Outcome:
    command = [
        str(binary),
        "-url", request.url,
        "-protocol", request.protocol,
        "-body", request.body,
        "-concurrency", str(concurrency),
        "-requests-per-stream", str(per_stream),
        # Streams start evenly over one answer's duration: steady arrivals, not one burst.
        "-spread", f"{MAX_TOKENS * TOKEN_DELAY_S}s",
    ]
    for header in request.headers:
        command += ["-header", header]
    cpu_before = sum(process_tree_cpu(pid) for pid in server_pids)
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    cpu_after = sum(process_tree_cpu(pid) for pid in server_pids)
    if finished.returncode != 0:
        raise ServerError(f"loadgen failed ({finished.returncode}): {finished.stderr[-2000:]}")
    report = json.loads(finished.stdout)
    ttfts, errors, ok = [], [], 0
    for result in report["results"]:
        error = result.get("error")
        # A whole answer, however it was cut into chunks: a proxy that falls behind sends the
        # tokens that reached it together in one chunk, so chunks are not tokens.
        if not error and request.protocol == "openai" and result["text_bytes"] != whole_answer_bytes:
            error = f"{result['text_bytes']} bytes of answer instead of {whole_answer_bytes}"
        if error:
            errors.append(error)
            continue
        ok += 1
        ttfts.append(result["ttft_s"])
    return Outcome(ttfts, ok, errors, report["wall_s"], report["cpu_s"], cpu_after - cpu_before)


def per_stream_requests(concurrency: int) -> int:
    """Enough sequential requests per stream for MIN_REQUESTS requests and MIN_PHASE_S seconds."""
    request_s = MAX_TOKENS * TOKEN_DELAY_S
    return max(math.ceil(MIN_REQUESTS / concurrency), math.ceil(MIN_PHASE_S / request_s))


# ---------------------------------------------------------------------------------------------
# CPU of a process and its children, from /proc
# ---------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                kids += [int(child) for child in (task / "children").read_text().split()]
    return kids


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def process_state(pid: int) -> str | None:
    """A process's state letter (T: stopped); None when it is gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of one live process (0 when it is gone)."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a --workers supervisor's workers, their children)."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending += _children(current)
    return tree


def process_tree_cpu(pid: int) -> float:
    return sum(process_cpu(member) for member in process_tree(pid))


@contextlib.contextmanager
def paused(pids: Sequence[int]) -> Iterator[None]:
    """The process trees of `pids` stopped (SIGSTOP) for the block, continued after it.

    An idle server still works: Gradio's queue polls for new events every 1 ms (about 6% of a
    core). With ten servers up at once, that work would land in whichever target is measured."""
    stopped: list[int] = []
    try:
        for pid in pids:
            for member in process_tree(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member, signal.SIGSTOP)
                    stopped.append(member)
        # A signal takes effect when its process is next scheduled: wait until each has stopped.
        deadline = time.monotonic() + 5
        while any(process_state(member) not in ("T", None) for member in stopped):
            if time.monotonic() > deadline:
                raise ServerError(f"processes {stopped} did not stop within 5 s of SIGSTOP")
            time.sleep(0.001)
        yield
    finally:
        for member in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGCONT)


# ---------------------------------------------------------------------------------------------
# The servers
# ---------------------------------------------------------------------------------------------


def chat_body(extra: dict[str, object] | None = None) -> str:
    return json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS,
            "stream": True,
            **(extra or {}),
        }
    )


def gradio_body() -> str:
    # h2oGPT's client sends str() of a dict of parameters as the one input.
    params = {
        "instruction": PROMPT, "max_new_tokens": MAX_TOKENS, "stream_output": True, "langchain_mode": "LLM",
    }
    return json.dumps({"data": [str(params)]})


API_ARGS = ("--base_model", MODEL,  # the defaults: the admission limit follows the fake's /info (1024)
            "--langchain_modes", "['LLM']", "--langchain_mode", "LLM")


@contextlib.contextmanager
def floor_relay_server(backend_url: str) -> Iterator[tuple[str, BackgroundProcess]]:
    port = free_port()
    command = [sys.executable, "-m", "bench.floor_relay", "--backend", backend_url, "--host", LOOPBACK,
               "--port", str(port)]
    with background_process(FLOOR, command, env={"PYTHONPATH": str(REPO_ROOT)}) as running:
        url = f"http://{LOOPBACK}:{port}"
        wait_http_ok(url + "/health", running)
        yield url, running


@contextlib.contextmanager
def litellm_server(backend_url: str) -> Iterator[tuple[str, BackgroundProcess]]:
    """LiteLLM's proxy (its own venv) for the fake's OpenAI-compatible route; yields its /v1 URL."""
    executable = LITELLM_VENV / "bin" / "litellm"
    if not executable.exists():
        raise ServerError(
            f"LiteLLM is not installed at {LITELLM_VENV} "
            "(python -m venv it, then pip install 'litellm[proxy]')"
        )
    port = free_port()
    with tempfile.NamedTemporaryFile("w", prefix="bench-litellm-", suffix=".yaml", delete=False) as config:
        config.write(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{MODEL}\n"
            f"      api_base: {backend_url}/v1\n"
            "      api_key: unused\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
        )
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_MASTER_KEY": LITELLM_KEY,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
    }
    command = [str(executable), "--config", config.name, "--host", LOOPBACK, "--port", str(port),
               "--num_workers", "1"]
    try:
        with background_process("litellm", command, env=env) as running:
            wait_http_ok(f"http://{LOOPBACK}:{port}/health/liveliness", running, timeout_s=180)
            yield f"http://{LOOPBACK}:{port}/v1", running
    finally:
        Path(config.name).unlink(missing_ok=True)


@dataclass
class Target:
    name: str
    request: Request
    pids: list[int]  # whose CPU counts as this target's cost
    shared: bool = False  # the backend every target uses: never paused


@dataclass
class Cell:
    """One target at one concurrency, over the rounds."""

    outcomes: list[Outcome]

    def median_of(self, value: Callable[[Outcome], float]) -> float:
        return median([value(outcome) for outcome in self.outcomes])

    @property
    def ttft_p50(self) -> float:
        return self.median_of(lambda o: median(o.ttfts) if o.ttfts else math.nan)

    @property
    def ttft_p99(self) -> float:
        return self.median_of(lambda o: percentile(o.ttfts, 99) if o.ttfts else math.nan)

    @property
    def tokens_per_s(self) -> float:
        return self.median_of(lambda o: o.tokens_per_s)

    @property
    def server_cpu_per_request(self) -> float:
        return self.median_of(lambda o: o.server_cpu_s / max(1, o.requests))

    @property
    def loadgen_cpu_per_request(self) -> float:
        return self.median_of(lambda o: o.loadgen_cpu_s / max(1, o.requests))

    @property
    def errors(self) -> list[str]:
        return [error for outcome in self.outcomes for error in outcome.errors]

    @property
    def requests(self) -> int:
        return sum(outcome.requests for outcome in self.outcomes)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def measure(
    targets: Sequence[Target], levels: Sequence[int], rounds: int, whole_answer_bytes: int
) -> dict[tuple[str, int], Cell]:
    binary = loadgen_binary()
    for target in targets:  # warm connections, imports and caches
        drive(binary, target.request, 4, 2, target.pids, whole_answer_bytes=whole_answer_bytes)
    cells: dict[tuple[str, int], Cell] = {}
    for _ in range(rounds):
        for level in levels:
            for target in targets:
                others = [pid for other in targets if other is not target and not other.shared
                          for pid in other.pids]
                with paused(others):
                    outcome = drive(binary, target.request, level, per_stream_requests(level), target.pids,
                                    whole_answer_bytes=whole_answer_bytes)
                cells.setdefault((target.name, level), Cell([])).outcomes.append(outcome)
    return cells


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


def _added(value: float, direct: float) -> str:
    return "n/a" if math.isnan(value) or math.isnan(direct) else f"{(value - direct) * 1000:+.2f}"


def report(
    cells: dict[tuple[str, int], Cell], targets: Sequence[Target], levels: Sequence[int], *, notes: list[str],
    started: float, rounds: int, baseline: str | None = None,
) -> str:
    headers = ["target", "streams", "TTFT p50 ms", "added p50 ms", "TTFT p99 ms", "added p99 ms",
               "tokens/s", "share of direct", "server CPU ms/req", "loadgen CPU ms/req", "errors"]
    rows: list[list[object]] = []
    for level in levels:
        direct = cells[("direct", level)]
        for target in targets:
            cell = cells[(target.name, level)]
            errors = cell.errors
            rows.append([
                target.name,
                level,
                _ms(cell.ttft_p50),
                "" if target.name == "direct" else _added(cell.ttft_p50, direct.ttft_p50),
                _ms(cell.ttft_p99),
                "" if target.name == "direct" else _added(cell.ttft_p99, direct.ttft_p99),
                f"{cell.tokens_per_s:.0f}",
                f"{100 * cell.tokens_per_s / direct.tokens_per_s:.1f}%",
                f"{cell.server_cpu_per_request * 1000:.1f}",
                f"{cell.loadgen_cpu_per_request * 1000:.2f}",
                f"{len(errors)}/{cell.requests}" + (f" ({errors[0][:80]})" if errors else ""),
            ])
    verdicts = targets_verdict(cells, [t.name for t in targets], baseline)
    info = machine_info()
    versions = package_versions(["uvicorn", "uvloop", "httptools", "fastapi", "starlette", "httpx", "gradio"])
    litellm_version = _litellm_version()
    lines = [
        "## OpenAI proxy overhead: direct vs h2ogpt-api (OpenAI, Gradio) vs LiteLLM",
        "",
        f"Backend: the TGI fake at {TOKEN_DELAY_S * 1000:.0f} ms/token, {MAX_TOKENS} tokens per streamed "
        f"chat answer. Each cell is the median of {rounds} rounds (targets interleaved); a round sends "
        f"max({MIN_REQUESTS}, streams x {per_stream_requests(64)}) requests or more "
        "from the Go load generator (bench/loadgen). 'added' is the difference to direct at the same "
        "number of streams; throughput counts completed answers x tokens over the phase's wall time. "
        "Server CPU is the serving process (and its children) only: the fake's own CPU is in the "
        "'direct' rows. While one target is measured, the other targets' servers are stopped (SIGSTOP), "
        "so that their idle work (the baseline's Gradio queue polls every 1 ms) does not count against it.",
        "",
        f"Machine: {info.cpus} CPUs ({info.cpu_model}), {info.memory_gib:.0f} GiB, {info.kernel}, Python "
        f"{info.python}; load average at start {info.load_average[0]:.1f} (the machine is shared). "
        f"Versions: {', '.join(f'{k} {v}' for k, v in versions.items())}, LiteLLM {litellm_version}.",
        "",
        markdown_table(headers, rows),
        "",
        *verdicts,
        *(f"- {note}" for note in notes),
        "",
        f"Command: `.venv/bin/python -m bench.openai_proxy` ({time.monotonic() - started:.0f} s).",
    ]
    return "\n".join(lines) + "\n"


def targets_verdict(
    cells: dict[tuple[str, int], Cell], names: Sequence[str], baseline: str | None = None
) -> list[str]:
    """Issue 16's targets, each met or missed: the OpenAI side's added TTFT at 1, 16 and 64 streams
    and its throughput at 256; the Gradio side's at 64 (or the largest level measured); its CPU per
    answer against the `baseline` rows (what they run: FILED_COMMIT or a folder)."""
    levels = sorted({level for (_, level) in cells})

    def at(level: int) -> int:
        return level if level in levels else levels[-1]

    def added(name: str, level: int) -> float:
        return cells[(name, level)].ttft_p50 - cells[("direct", level)].ttft_p50

    def share_of(name: str, level: int) -> float:
        return cells[(name, level)].tokens_per_s / cells[("direct", level)].tokens_per_s

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    lines = ["Targets (issue 16):", ""]
    if "h2ogpt-openai" in names:
        for level in [level for level in (1, 16, 64) if level in levels]:
            value = added("h2ogpt-openai", level) * 1000
            floor = ""
            if FLOOR in names:
                hop = added(FLOOR, level) * 1000
                floor = (f" A bare relay on the same server stack ({FLOOR}) adds {hop:.2f} ms here: the "
                         f"hop's floor; h2ogpt-api's own work is the other {value - hop:.2f} ms.")
            lines.append(
                f"- OpenAI side at {level} streams adds {value:.2f} ms median TTFT "
                f"(target <= 1.5 ms): {verdict(value <= 1.5)}.{floor}"
            )
        level = at(OPENAI_SHARE_AT)
        share = share_of("h2ogpt-openai", level)
        ceiling = (
            f" A bare relay on the same server stack ({FLOOR}) keeps {100 * share_of(FLOOR, level):.1f}%"
            " here: the hop's ceiling on this machine."
            if FLOOR in names
            else ""
        )
        lines.append(
            f"- OpenAI side at {level} streams, default settings, keeps {100 * share:.1f}% of direct "
            f"throughput (target >= 90%): {verdict(share >= 0.9)}.{ceiling}"
        )
        if 64 in levels:
            cpu = cells[("h2ogpt-openai", 64)].server_cpu_per_request * 1000
            relay = (
                f" A bare relay on the same server stack ({FLOOR}) spends "
                f"{cells[(FLOOR, 64)].server_cpu_per_request * 1000:.1f} ms: what the hop alone costs here."
                if FLOOR in names
                else ""
            )
            if BEFORE_OPENAI in names:  # the baseline, in this run: a ratio on the same machine
                before = cells[(BEFORE_OPENAI, 64)].server_cpu_per_request * 1000
                judged = (
                    f"target: halved, <= 0.50: {verdict(cpu <= before / 2)}"
                    if baseline == FILED_COMMIT
                    else f"not judged: the target is against {FILED_COMMIT}, the code the issue was filed on"
                )
                lines.append(
                    f"- OpenAI side server CPU per answer at 64 streams: {cpu:.1f} ms, against "
                    f"{before:.1f} ms for the baseline ({baseline}) in this run: {cpu / before:.2f} of it "
                    f"({judged}).{relay}"
                )
            else:
                lines.append(
                    f"- OpenAI side server CPU per answer at 64 streams: {cpu:.1f} ms (target: halved "
                    f"against {FILED_COMMIT}, the code the issue was filed on: not judged, that code was "
                    f"not measured in this run).{relay}"
                )
        workers = f"h2ogpt-openai-{WORKERS}w"
        if workers in names:
            one, many = cells[("h2ogpt-openai", level)], cells[(workers, level)]
            lines.append(
                f"- --workers {WORKERS} at {level} streams: {100 * share_of(workers, level):.1f}% of direct "
                f"({many.tokens_per_s / one.tokens_per_s:.2f}x one process's tokens/s), added median TTFT "
                f"{added(workers, level) * 1000:.2f} ms vs {added('h2ogpt-openai', level) * 1000:.2f} ms, "
                f"server CPU {many.server_cpu_per_request * 1000:.1f} vs "
                f"{one.server_cpu_per_request * 1000:.1f} ms/request."
            )
        if VLLM in names:
            share_level = at(OPENAI_SHARE_AT)
            each = ", ".join(f"{added(VLLM, n) * 1000:.2f} ms at {n}" for n in (1, 16, 64) if n in levels)
            lines.append(
                "- Before a vLLM (`vllm:` form; the fake's OpenAI route stands in) the OpenAI side adds "
                f"{each} streams to the median TTFT (the targets above are for the default TGI backend) "
                f"and keeps {100 * share_of(VLLM, share_level):.1f}% of direct at {share_level} streams."
            )
        if "litellm" in names:
            level = at(TARGET_SHARE_AT)
            lite = added("litellm", level)
            ratio = added("h2ogpt-openai", level) / lite if lite > 0 else math.nan
            lines.append(
                f"- LiteLLM at {level} streams adds {lite * 1000:.2f} ms median TTFT and keeps "
                f"{100 * share_of('litellm', level):.1f}%; "
                f"h2ogpt-api's added TTFT is {ratio:.2f} of LiteLLM's."
            )
        if "h2ogpt-gradio" in names:
            level = at(TARGET_SHARE_AT)
            openai_added = added("h2ogpt-openai", level)
            gradio_added = added("h2ogpt-gradio", level)
            ratio = gradio_added / openai_added if openai_added > 0 else math.inf
            share = share_of("h2ogpt-gradio", level)
            lines.append(
                f"- Gradio side at {level} streams adds {gradio_added * 1000:.2f} ms median TTFT, "
                f"{ratio:.1f}x the OpenAI side's (target <= 3x): {verdict(ratio <= 3)}; keeps "
                f"{100 * share:.1f}% of direct throughput (target >= 90%): {verdict(share >= 0.9)}."
            )
    return lines


def _litellm_version() -> str:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return "not installed"
    finished = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True, check=False,
    )
    return finished.stdout.strip() or "unknown"


def gradio_works(gradio_url: str) -> None:
    """One real call through the official gradio_client, so the REST numbers are for a working endpoint."""
    from gradio_client import Client  # noqa: PLC0415

    client = Client(gradio_url, verbose=False)
    answer = client.predict(json.loads(gradio_body())["data"][0], api_name="/submit_nochat_api")
    if "'response': ''" in str(answer) or "'error': '" in str(answer):
        raise ServerError(f"/submit_nochat_api answered without a response: {str(answer)[:300]}")


def why_not(exc: BaseException) -> str:
    """A target's failure for the report: its first line and, for a server that exited, the last
    lines of its log (where the reason is), on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    tail = " | ".join(line[:200] for line in lines[1:][-6:])
    return lines[0][:300] + (f" (log: {tail})" if tail else "")


def run(quick: bool = False) -> str:
    started = time.monotonic()
    levels = QUICK_CONCURRENCY if quick else CONCURRENCY
    rounds = 1 if quick else ROUNDS
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        fake_url = stack.enter_context(tgi_fake_server(TOKEN_DELAY_S))
        fake_pid = _listener_pid(fake_url)
        direct = Request(f"{fake_url}/v1/chat/completions", "openai", chat_body())
        targets = [Target("direct", direct, [fake_pid], shared=True)]
        try:  # the floor of a Python hop (bench/floor_relay.py): what h2ogpt-api's own work is judged above
            relay_url, relay = stack.enter_context(floor_relay_server(fake_url))
            targets.append(Target(FLOOR, Request(f"{relay_url}/v1/chat/completions", "openai", chat_body()),
                                  [relay.process.pid]))
        except ServerError as exc:
            notes.append(f"{FLOOR} not measured: {why_not(exc)}")

        api = stack.enter_context(h2ogpt_api_server(["--inference_server", fake_url, *API_ARGS]))
        targets.append(
            Target("h2ogpt-openai", Request(f"{api.openai_url}/chat/completions", "openai", chat_body()),
                   [api.process.process.pid])
        )
        # The same front door before vLLM or any OpenAI-compatible server: the fake's OpenAI route
        # stands in for vLLM's (the `vllm:host:port` form, no admission limit of ours).
        vllm = stack.enter_context(h2ogpt_api_server(["--inference_server", vllm_form(fake_url), *API_ARGS]))
        targets.append(
            Target(VLLM, Request(f"{vllm.openai_url}/chat/completions", "openai", chat_body()),
                   [vllm.process.process.pid])
        )
        try:  # the same with two processes on the port: how it scales (CPU counts both workers)
            two = stack.enter_context(
                h2ogpt_api_server(["--inference_server", fake_url, *API_ARGS, "--workers", str(WORKERS)])
            )
            targets.append(
                Target(f"h2ogpt-openai-{WORKERS}w",
                       Request(f"{two.openai_url}/chat/completions", "openai", chat_body()),
                       [two.process.process.pid])
            )
        except ServerError as exc:
            notes.append(f"--workers {WORKERS} not measured: {why_not(exc)}")
        try:
            gradio = stack.enter_context(
                h2ogpt_api_server(["--inference_server", fake_url, *API_ARGS, "--openai_server", "False",
                                   "--gradio", "True"])
            )
            if gradio.gradio_url is None:
                raise ServerError("h2ogpt-api printed no Gradio URL")
            gradio_works(gradio.gradio_url)
            targets.append(
                Target("h2ogpt-gradio",
                       Request(gradio.gradio_url.rstrip("/") + "/gradio_api/call/submit_nochat_api", "gradio",
                               gradio_body()),
                       [gradio.process.process.pid])
            )
        except Exception as exc:  # the other targets are still worth measuring
            notes.append(f"Gradio side not measured: {why_not(exc)}")
        # A quick run (a smoke test) measures the baseline only when asked to.
        baseline = os.environ.get(BASELINE_ENV) or (None if quick else FILED_COMMIT)
        try:
            if baseline == FILED_COMMIT:
                targets += baseline_targets(stack, fake_url, stack.enter_context(archived_api(baseline)))
            elif baseline:
                targets += baseline_targets(stack, fake_url, Path(baseline))
        except (ServerError, subprocess.CalledProcessError) as exc:
            notes.append(f"Baseline ({baseline}) not measured: {why_not(exc)}")
            baseline = None
        try:
            litellm_url, litellm = stack.enter_context(litellm_server(fake_url))
            targets.append(
                Target("litellm",
                       Request(f"{litellm_url}/chat/completions", "openai", chat_body(),
                               (f"Authorization: Bearer {LITELLM_KEY}",)),
                       [litellm.process.pid])
            )
        except ServerError as exc:
            notes.append(f"LiteLLM not measured: {why_not(exc)}")
        cells = measure(targets, levels, rounds, answer_bytes(direct))
    return report(cells, targets, levels, notes=notes, started=started, rounds=rounds, baseline=baseline)


@contextlib.contextmanager
def archived_api(commit: str) -> Iterator[Path]:
    """`commit`'s api/ folder, unpacked from this checkout's git history into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="h2ogpt-bench-baseline-") as folder:
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", commit, "api"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, capture_output=True, check=True)
        yield Path(folder) / "api"


def baseline_targets(stack: contextlib.ExitStack, fake_url: str, api_dir: Path) -> list[Target]:
    """The baseline checkout's OpenAI and Gradio sides (its package first on PYTHONPATH)."""
    env = {"PYTHONPATH": str(api_dir.resolve())}
    openai_side = stack.enter_context(h2ogpt_api_server(["--inference_server", fake_url, *API_ARGS], env))
    gradio_side = stack.enter_context(
        h2ogpt_api_server(
            ["--inference_server", fake_url, *API_ARGS, "--openai_server", "False", "--gradio", "True"], env
        )
    )
    vllm_side = stack.enter_context(
        h2ogpt_api_server(["--inference_server", vllm_form(fake_url), *API_ARGS], env)
    )
    if gradio_side.gradio_url is None:
        raise ServerError("the baseline h2ogpt-api printed no Gradio URL")
    return [
        Target(BEFORE_OPENAI, Request(f"{openai_side.openai_url}/chat/completions", "openai", chat_body()),
               [openai_side.process.process.pid]),
        Target("before-vllm", Request(f"{vllm_side.openai_url}/chat/completions", "openai", chat_body()),
               [vllm_side.process.process.pid]),
        Target("before-gradio",
               Request(gradio_side.gradio_url.rstrip("/") + "/gradio_api/call/submit_nochat_api", "gradio",
                       gradio_body()),
               [gradio_side.process.process.pid]),
    ]


def vllm_form(fake_url: str) -> str:
    """`--inference_server` for the fake's OpenAI route as h2oGPT names a vLLM server."""
    return "vllm:" + fake_url.removeprefix("http://")


def _listener_pid(url: str) -> int:
    """The pid of the process listening on `url`'s port (the fake runs as `python -m ...`)."""
    port = int(url.rsplit(":", 1)[1])
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                    inodes.add(fields[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        return int(proc.name)
    raise ServerError(f"no process listens on {url}")


if __name__ == "__main__":
    bench_main(run)
