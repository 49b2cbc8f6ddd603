"""The `h2ogpt-api` console script: bad flags fail with one clear line; --help lists the flags."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from tests.support.api_server import api_executable


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([api_executable(), *args], capture_output=True, text=True, timeout=60, check=False)


def test_unknown_flag_fails_with_one_line() -> None:
    result = run_cli("--inference_sever", "http://x:1")
    assert result.returncode == 2
    assert result.stderr.strip() == "h2ogpt-api: unknown flag --inference_sever (see h2ogpt-api --help)"


def test_bad_auth_file_fails_with_one_line() -> None:
    result = run_cli("--auth", "/no/such/users.json", "--gradio", "False", "--langchain_modes", "['LLM']")
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("h2ogpt-api: --auth: cannot read /no/such/users.json")


def test_help_lists_every_flag() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--inference_server", "--h2ogpt_api_keys", "--auth_access", "--num_async", "--max_queue"):
        assert flag in result.stdout


def test_port_in_use_fails_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--server_name", "127.0.0.1", "--openai_port", str(port), "--gradio", "False",
                         "--langchain_modes", "['LLM']")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"h2ogpt-api: cannot listen on 127.0.0.1:{port} (Address already in use): "
        "stop what uses it, or pass another --openai_port"
    )


def test_an_unreachable_weaviate_fails_with_one_line_after_its_wait() -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = run_cli("--server_name", "127.0.0.1", "--openai_port", "0", "--gradio", "False",
                     "--inference_server", "http://127.0.0.1:9", "--weaviate_url", f"http://127.0.0.1:{port}",
                     "--weaviate_wait_seconds", "1")
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"h2ogpt-api: Weaviate at 127.0.0.1:{port} is not reachable ("), last_line
    assert last_line.endswith(" after 1 s of trying; check --weaviate_url and that the server is up")
    assert "Traceback" not in result.stderr
    assert "trying again for" in result.stderr  # each wait is logged


def test_flags_that_need_the_apiserver_fail_with_one_line_without_credentials(tmp_path: Path) -> None:
    base = ["--server_name", "127.0.0.1", "--openai_port", "0", "--gradio", "False",
            "--langchain_modes", "['LLM']", "--inference_server", "http://127.0.0.1:9"]  # fmt: skip
    missing = tmp_path / "no-such-kubeconfig"
    watch, lease = ["--inference_endpointslices", "ns/svc"], ["--hold_seconds", "5", "--demand_lease", "ns/x"]
    for flags in (watch, lease):
        result = subprocess.run(
            [api_executable(), *base, *flags], capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "KUBECONFIG": str(missing)},
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            f"h2ogpt-api: {flags[-2]} needs Kubernetes credentials (a pod's ServiceAccount token, or "
            f"KUBECONFIG): Configuration file {missing} not found"
        )
        assert "Traceback" not in result.stderr
