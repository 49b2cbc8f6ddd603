"""h2ogpt-api's own work per streamed chat request, in process, without the sockets' noise.

bench/openai_proxy.py measures the OpenAI side end to end, where a change of 20% in h2ogpt-api's
own work per request is smaller than the spread between rounds (added TTFT moves by +-0.5 ms round
to round at 1 stream). Here each server runs as an ASGI app in a child process of its own, in front
of the TGI fake, and the child calls the app directly: no HTTP server and no client socket in front
of it; the upstream half (aiohttp to the fake) is real. The children run one after another,
interleaved over rounds:

- `floor-relay`: bench/floor_relay.py's app, the floor of a Python hop (a REFERENCE, not a product);
- `h2ogpt-openai`: this checkout's OpenAI app (the TGI backend, the core, the routes);
- `before-openai`: the same app of the code issue 16 was filed on (d16a700), unpacked from git.

Per target, two phases with a fake each:

- **first byte**: one request at a time, the fake answering at once (0 ms per token): the time from
  the call to the first body byte back to back, and after 10 ms of idle before each request, as a
  server sees at 1 stream (tokens 10 ms apart). After an idle gap the machine runs the same Python
  code several times slower (caches, clocks); that, more than the CPU time back to back, is what
  h2ogpt-api adds to the first token at 1 stream.
- **CPU per answer**: STREAMS concurrent streams, the fake at 10 ms per token as in the end-to-end
  bench (so tokens arrive one by one): the child's process time per answer of 64 tokens (the fake's
  CPU is not in it).

    python -m bench.openai_inprocess            # the section on stdout
    BENCH_INPROCESS_COMMITS=9988b5a python -m bench.openai_inprocess   # and that commit beside them
    python -m bench.openai_inprocess --child api --backend URL --paced-backend URL   # one child (JSON)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, bench_main, machine_info, markdown_table, median, tgi_fake_server
from bench.openai_proxy import FILED_COMMIT, MAX_TOKENS, MODEL, TOKEN_DELAY_S, archived_api, chat_body

IDLE_S = 0.010  # the gap between a 1-stream server's wake-ups (the end-to-end bench's 10 ms per token)
STREAMS = 32
WARM_REQUESTS = 200  # sent first, not measured: imports, pools, caches
REQUESTS = 400  # each of: back to back, and CPU phase answers
IDLE_REQUESTS = 200
ROUNDS = 3
QUICK = {"requests": 96, "idle_requests": 50, "rounds": 1}
FLOOR = "floor-relay"
THIS = "h2ogpt-openai"
BEFORE = "before-openai"
# More commits to measure side by side, comma-separated (each as target "at-<commit>"): a change's own
# effect, e.g. BENCH_INPROCESS_COMMITS=HEAD~1 before committing it.
COMMITS_ENV = "BENCH_INPROCESS_COMMITS"

Message = dict[str, Any]
ASGIApp = Callable[
    [Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


# ---------------------------------------------------------------------------------------------
# The child: one app, driven in process
# ---------------------------------------------------------------------------------------------


def http_scope(body: bytes) -> Message:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "root_path": "", "query_string": b"", "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 5000),
        "headers": [(b"host", b"127.0.0.1:5000"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip


class Driver:
    """Sends streamed chat requests into `app`, checks each answer and times its first byte."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.body = chat_body().encode()  # the end-to-end bench's request
        self.writes = 0  # body messages sent, over all requests

    async def request(self) -> float:
        """One whole request; the seconds from the call to the first body byte."""
        started = time.perf_counter()
        first_byte: float | None = None
        status = 0
        body_bytes = 0
        sent = False
        never = asyncio.Event()

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": self.body, "more_body": False}
            await never.wait()  # the client never leaves
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            nonlocal first_byte, status, body_bytes
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message.get("body"):
                self.writes += 1
                body_bytes += len(message["body"])
                if first_byte is None:
                    first_byte = time.perf_counter()

        await self.app(http_scope(self.body), receive, send)
        if status != 200 or first_byte is None or body_bytes < MAX_TOKENS:
            raise RuntimeError(f"the app answered {status} with {body_bytes} body bytes")
        return first_byte - started


async def lifespan_started(app: ASGIApp) -> Callable[[], Awaitable[None]]:
    """Run the app's ASGI lifespan startup; returns what shuts it down."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"lifespan startup failed: {started}")

    async def shut_down() -> None:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task

    return shut_down


def floor_relay_app(backend: str) -> ASGIApp:
    from bench.floor_relay import FloorRelay  # noqa: PLC0415

    return FloorRelay(backend)


def h2ogpt_app(backend: str) -> ASGIApp:
    """The OpenAI app over a TGI backend, as `h2ogpt-api --inference_server URL` builds it; imported
    from whichever h2ogpt_api is first on the path (this checkout's, or the baseline's)."""
    from h2ogpt_api.backends import create_backend  # noqa: PLC0415
    from h2ogpt_api.core import Core  # noqa: PLC0415
    from h2ogpt_api.openai_api.app import create_app  # noqa: PLC0415
    from h2ogpt_api.settings import Settings  # noqa: PLC0415

    settings = Settings(
        inference_server=backend, base_model=MODEL, langchain_modes=["LLM"], langchain_mode="LLM"
    )
    core = Core(settings, create_backend(settings), None)
    app: ASGIApp = create_app(core, settings)
    return app


async def first_byte(driver: Driver, requests: int, idle_requests: int) -> dict[str, float]:
    """Before the fake that answers at once: one request at a time, back to back, then after idle."""
    for _ in range(WARM_REQUESTS):
        await driver.request()
    back_to_back = [await driver.request() for _ in range(requests)]
    after_idle = []
    for _ in range(idle_requests):
        await asyncio.sleep(IDLE_S)
        after_idle.append(await driver.request())
    return {
        "first_byte_ms": median(back_to_back) * 1000,
        "first_byte_after_idle_ms": median(after_idle) * 1000,
    }


async def cpu(driver: Driver, answers: int) -> dict[str, float]:
    """Before the paced fake: STREAMS streams of requests one after another, the process's CPU."""
    per_stream = max(1, answers // STREAMS)

    async def stream() -> None:
        for _ in range(per_stream):
            await driver.request()

    await asyncio.gather(*(driver.request() for _ in range(STREAMS)))  # warm
    writes_before = driver.writes
    cpu_started = time.process_time()
    await asyncio.gather(*(stream() for _ in range(STREAMS)))
    cpu_s = time.process_time() - cpu_started
    writes = driver.writes - writes_before
    # When the fake falls behind, tokens arrive (and leave) together: fewer, cheaper answers.
    # Per write (one upstream read passed on) is the unit that does not move with that.
    return {
        "cpu_per_answer_ms": cpu_s / (per_stream * STREAMS) * 1000,
        "cpu_per_write_us": cpu_s / writes * 1e6,
        "writes_per_answer": writes / (per_stream * STREAMS),
    }


async def measure_child(
    kind: str, backend: str, paced_backend: str, requests: int, idle_requests: int
) -> dict[str, float]:
    results: dict[str, float] = {}
    for url, phase in ((backend, "first byte"), (paced_backend, "cpu")):
        app = floor_relay_app(url) if kind == "relay" else h2ogpt_app(url)
        shut_down = await lifespan_started(app) if kind == "relay" else None
        driver = Driver(app)
        if phase == "first byte":
            results |= await first_byte(driver, requests, idle_requests)
        else:
            results |= await cpu(driver, requests)
        if shut_down is not None:
            await shut_down()
    return results


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="one app, driven in process; prints JSON")
    parser.add_argument("--child", choices=("relay", "api"), required=True)
    parser.add_argument("--backend", required=True, help="the fake answering at once")
    parser.add_argument(
        "--paced-backend", required=True, help=f"the fake at {TOKEN_DELAY_S * 1000:.0f} ms per token"
    )
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--idle-requests", type=int, default=IDLE_REQUESTS)
    args = parser.parse_args(argv)
    import logging  # noqa: PLC0415

    import uvloop  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING)  # as the end-to-end bench runs the server
    result = uvloop.run(  # the event loop h2ogpt-api serves on (uvicorn's loop="uvloop")
        measure_child(args.child, args.backend, args.paced_backend, args.requests, args.idle_requests)
    )
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# The parent: targets side by side, rounds interleaved
# ---------------------------------------------------------------------------------------------


def run_child(
    kind: str, backends: tuple[str, str], api_path: Path | None, requests: int, idle_requests: int
) -> dict[str, float]:
    python_path = [str(api_path)] if api_path else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*python_path, str(REPO_ROOT)])}
    env = {k: v for k, v in env.items() if not k.startswith("H2OGPT_")}
    finished = subprocess.run(
        [sys.executable, "-m", "bench.openai_inprocess", "--child", kind, "--backend", backends[0],
         "--paced-backend", backends[1],
         "--requests", str(requests), "--idle-requests", str(idle_requests)],
        capture_output=True, text=True, timeout=600, check=False, cwd=REPO_ROOT, env=env,
    )  # fmt: skip
    if finished.returncode != 0:
        raise RuntimeError(f"the {kind} child failed: {finished.stderr[-2000:]}")
    result: dict[str, float] = json.loads(finished.stdout.strip().splitlines()[-1])
    return result


def run(quick: bool = False) -> str:
    requests = QUICK["requests"] if quick else REQUESTS
    idle_requests = QUICK["idle_requests"] if quick else IDLE_REQUESTS
    rounds = QUICK["rounds"] if quick else ROUNDS
    results: dict[str, list[dict[str, float]]] = {}
    notes = []
    with contextlib.ExitStack() as stack:
        backends = (
            stack.enter_context(tgi_fake_server(0.0)),
            stack.enter_context(tgi_fake_server(TOKEN_DELAY_S)),
        )
        targets: dict[str, tuple[str, Path | None]] = {FLOOR: ("relay", None), THIS: ("api", None)}
        also = [commit for commit in os.environ.get(COMMITS_ENV, "").split(",") if commit.strip()]
        for name, commit in [(BEFORE, FILED_COMMIT), *((f"at-{c.strip()}", c.strip()) for c in also)]:
            try:
                targets[name] = ("api", stack.enter_context(archived_api(commit)))
            except subprocess.CalledProcessError as exc:  # a shallow clone has no d16a700
                notes.append(f"{name} not measured: git archive {commit} failed ({exc.returncode})")
        for _ in range(rounds):
            for name, (kind, api_path) in targets.items():
                results.setdefault(name, []).append(
                    run_child(kind, backends, api_path, requests, idle_requests)
                )
    return report(results, requests, idle_requests, rounds, notes)


COLUMNS = {  # result key -> (column, format)
    "first_byte_ms": ("first byte ms", "{:.3f}"),
    "first_byte_after_idle_ms": (f"first byte after {IDLE_S * 1000:.0f} ms idle ms", "{:.3f}"),
    "cpu_per_answer_ms": ("CPU per answer ms", "{:.2f}"),
    "cpu_per_write_us": ("CPU per write us", "{:.1f}"),
    "writes_per_answer": ("writes per answer", "{:.1f}"),
}


def report(
    results: dict[str, list[dict[str, float]]],
    requests: int,
    idle_requests: int,
    rounds: int,
    notes: list[str],
) -> str:
    def cell(name: str, key: str) -> float:
        return median([result[key] for result in results[name]])

    def of(name: str, key: str) -> str:
        """THIS's figure as a share of `name`'s."""
        return f"{cell(THIS, key) / cell(name, key):.2f}"

    rows = [
        [
            name,
            *(form.format(cell(name, key)) for key, (_, form) in COLUMNS.items()),
            f"{cell(name, 'first_byte_after_idle_ms') / cell(name, 'first_byte_ms'):.1f}x",
        ]
        for name in results
    ]
    info = machine_info()
    lines = [
        "## OpenAI side in process: h2ogpt-api's own work per streamed request (bench/openai_inprocess.py)",
        "",
        f"Each app in a child process, called directly (no HTTP server or client socket in front), in front "
        f"of the TGI fake; {MAX_TOKENS} tokens per streamed chat answer. First byte: the fake answering at "
        f"once, {requests} requests back to back and {idle_requests} after {IDLE_S * 1000:.0f} ms of idle "
        f"each. CPU: the fake at {TOKEN_DELAY_S * 1000:.0f} ms per token, {STREAMS} streams, {requests} "
        f"answers; the child's process time (the fake's is not in it), per answer and per body write (one "
        f"upstream read passed on). Each cell is the median of {rounds} interleaved rounds. Machine: "
        f"{info.cpus} CPUs, load average at start {info.load_average[0]:.1f}.",
        "",
        markdown_table(
            ["target", *(column for column, _ in COLUMNS.values()), "first byte: idle / back to back"], rows
        ),
        "",
    ]
    if THIS in results and FLOOR in results:
        lines.append(
            f"- h2ogpt-api's own work above the bare relay: "
            f"{cell(THIS, 'cpu_per_answer_ms') - cell(FLOOR, 'cpu_per_answer_ms'):.3f} ms CPU per answer; "
            f"{cell(THIS, 'first_byte_after_idle_ms') - cell(FLOOR, 'first_byte_after_idle_ms'):.3f} ms more "
            f"to the first byte after an idle gap "
            f"({cell(THIS, 'first_byte_ms') - cell(FLOOR, 'first_byte_ms'):.3f} ms back to back)."
        )
    for name in results:
        if THIS in results and name not in (THIS, FLOOR):
            code = (
                f"{FILED_COMMIT}, the code issue 16 was filed on"
                if name == BEFORE
                else name.removeprefix("at-")
            )
            lines.append(
                f"- Against {code}: CPU per answer {of(name, 'cpu_per_answer_ms')} of it, first byte "
                f"after idle {of(name, 'first_byte_after_idle_ms')} of it, back to back "
                f"{of(name, 'first_byte_ms')} of it."
            )
    lines += [f"- {note}" for note in notes]
    lines += ["", "Command: `.venv/bin/python -m bench.openai_inprocess`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if "--child" in sys.argv:
        child_main(sys.argv[1:])
    else:
        bench_main(run)
