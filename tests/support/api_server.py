"""Start the real `h2ogpt-api` console script on loopback for tests, and stop it afterwards.

Ports are chosen by the server itself (`--openai_port 0`); we read the URLs it prints when
ready, so there is no race for a free port. On failure the server's log is dumped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[2]
_URL_LINE = re.compile(r"^(OpenAI API|Gradio UI): (http://\S+)$")
# Start-up is ~5-15 s (the Gradio import, Weaviate); the margin is for a machine busy with other work.
START_TIMEOUT_S = 120.0


def api_executable() -> str:
    """The installed console script, next to the running interpreter (the project's .venv)."""
    candidate = Path(sys.executable).parent / "h2ogpt-api"
    if candidate.exists():
        return str(candidate)
    return str(REPO_ROOT / ".venv" / "bin" / "h2ogpt-api")


@dataclass
class ApiServer:
    process: subprocess.Popen[bytes]
    log_path: Path
    openai_url: str | None  # ends in /v1
    gradio_url: str | None

    @property
    def base_url(self) -> str:
        """The OpenAI app's root (for /health, /metrics)."""
        assert self.openai_url is not None
        return self.openai_url.removesuffix("/v1")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of this server's /metrics samples named `name` whose labels include `labels`."""
        return metric_at(self.base_url, name, **labels)


def metric_at(root_url: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` on `<root_url>/metrics` of an
    h2ogpt-api (here or in a pod, through its Service); 0 when none."""
    text = httpx.get(root_url + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _wait_ready(process: subprocess.Popen[bytes], log_path: Path) -> ApiServer:
    deadline = time.monotonic() + START_TIMEOUT_S
    urls: dict[str, str] = {}
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        for line in text.splitlines():
            match = _URL_LINE.match(line.strip())
            if match:
                urls[match.group(1)] = match.group(2)
        if "h2ogpt-api ready" in text:
            server = ApiServer(process, log_path, urls.get("OpenAI API"), urls.get("Gradio UI"))
            if (
                server.openai_url is None
                or httpx.get(server.base_url + "/health", timeout=5).status_code == 200
            ):
                return server
        if process.poll() is not None:
            raise RuntimeError(f"h2ogpt-api exited with {process.returncode} during start-up:\n{text}")
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"h2ogpt-api did not become ready in {START_TIMEOUT_S:.0f}s:\n{log_path.read_text()}")


@contextlib.contextmanager
def run_api_server(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    from_env: Sequence[str] = (),
    own_session: bool = False,
) -> Iterator[ApiServer]:
    """`h2ogpt-api --server_name 127.0.0.1 --openai_port 0 --gradio False <args>` until the block ends.

    `from_env` names default flags (e.g. `gradio_port`) left off so that `env` sets them.
    `own_session`: the server leads its own session and process group, as a command in a terminal
    does, so that a test may signal the group (a terminal's Ctrl-C) without signalling pytest.
    """
    log_file = tempfile.NamedTemporaryFile(prefix="h2ogpt-api-", suffix=".log", delete=False)  # noqa: SIM115
    log_path = Path(log_file.name)
    defaults = {
        "server_name": "127.0.0.1",
        "openai_port": "0",
        "gradio_port": "0",
        "gradio": "False",
        "save_dir": tempfile.mkdtemp(prefix="h2ogpt-save-"),
    }
    command = [api_executable()]
    for name, value in defaults.items():
        if name not in from_env:
            command += [f"--{name}", value]
    command += list(args)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("H2OGPT_")}
    full_env.update(env or {})
    full_env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=REPO_ROOT,
        start_new_session=own_session,
    )  # fmt: skip
    log_file.close()
    failed = True
    try:
        server = _wait_ready(process, log_path)
        yield server
        failed = False
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if failed:
            sys.stderr.write(
                f"\n----- h2ogpt-api log ({log_path}) -----\n{log_path.read_text(errors='replace')}\n"
            )
        log_path.unlink(missing_ok=True)


ApiServerFactory = Callable[..., ApiServer]



def llm_only_args(inference_server: str, base_model: str) -> list[str]:
    """Flags for a server in front of `inference_server` (e.g. the TGI fake) with no document store."""
    return ["--inference_server", inference_server, "--base_model", base_model,
            "--langchain_modes", "['LLM']"]


@pytest.fixture(scope="module")
def api_server_factory() -> Iterator[ApiServerFactory]:
    """Start servers with `factory(args, env)`; all are stopped when the test module ends."""
    with contextlib.ExitStack() as stack:

        def start(
            args: Sequence[str], env: Mapping[str, str] | None = None, *, from_env: Sequence[str] = ()
        ) -> ApiServer:
            return stack.enter_context(run_api_server(args, env, from_env=from_env))

        yield start


async def concurrent_streams(base_url: str, model: str, count: int, max_tokens: int) -> list[int]:
    """`count` streamed chats at once through the official client; the tokens each received.

    The fake's tokens are words; counted in the text, not in chunks, since tokens that reach the
    proxy together go out in one chunk."""
    async with AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=120) as client:

        async def one(index: int) -> int:
            stream = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": f"stream {index} of {count}"}],
                max_tokens=max_tokens,
                stream=True,
            )
            pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
            return len("".join(pieces).split())

        return await asyncio.gather(*(one(index) for index in range(count)))
