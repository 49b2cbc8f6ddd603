"""Run every benchmark in bench/ and write docs/benchmarks.md (`make bench`).

Each bench module runs in its own process (`python -m bench.<name> --output <file>`), one
after another so they never compete for the CPUs. A bench that fails, crashes or overruns
its time limit does not stop the others: its section in the report says so, with the tail
of its output, and this command exits non-zero after writing the report.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO_ROOT, machine_info, markdown_table, package_versions, tool_path

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "benchmarks.md"
QUICK_OUTPUT = Path(tempfile.gettempdir()) / "h2ogpt-benchmarks-quick.md"
# Preferred order; any other bench module found in bench/ runs after these, alphabetically.
ORDER = ["openai_proxy", "openai_inprocess", "summarize", "rag", "embeddings", "operator_scale"]
NOT_BENCHES = {"common", "run_all", "floor_relay"}  # floor_relay: a server bench.openai_proxy starts
DEFAULT_TIMEOUT_S = 600
STOP_GRACE_S = 30
FAILURE_LOG_LINES = 40
PACKAGES = ["h2ogpt-platform", "openai", "gradio", "gradio_client", "fastapi", "uvicorn", "httpx",
            "weaviate-client", "numpy", "tokenizers", "kopf", "kubernetes"]
# (LiteLLM lives in its own venv; bench/openai_proxy.py reports its version in its section.)
TOOLS = {"kube-apiserver": ["--version"], "helm": ["version", "--short"], "kubectl": ["version", "--client"]}


def discover() -> list[str]:
    """Bench module names: every bench/<name>.py except the harness itself."""
    found = {path.stem for path in BENCH_DIR.glob("*.py")
             if not path.stem.startswith("_") and path.stem not in NOT_BENCHES}
    return [name for name in ORDER if name in found] + sorted(found - set(ORDER))


@dataclass(frozen=True)
class BenchOutcome:
    name: str
    ok: bool
    seconds: float
    section: str
    problem: str = ""


def _failure_section(module: str, problem: str, log: str) -> str:
    tail = "\n".join(log.rstrip().splitlines()[-FAILURE_LOG_LINES:]) or "(no output)"
    return (f"## {module}: FAILED\n\n`python -m {module}` {problem}. The last lines of its output:\n\n"
            f"```text\n{tail}\n```\n")


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the bench (it stops its servers on the way out), then SIGKILL whatever is left of
    its process group."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def run_bench(module: str, *, quick: bool, timeout_s: float) -> BenchOutcome:
    """Run the bench module `module` (e.g. `bench.rag`) in a process of its own."""
    name = module.rsplit(".", 1)[-1]
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as work:
        section_path = Path(work) / "section.md"
        log_path = Path(work) / "output.log"
        command = [sys.executable, "-m", module, "--output", str(section_path)]
        if quick:
            command.append("--quick")
        print(f"bench: running {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        problem = ""
        with log_path.open("wb") as log_file:
            # Its own process group, so that the servers it started can be found and stopped too.
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=timeout_s)
                if code != 0:
                    problem = f"exited with status {code}"
            except subprocess.TimeoutExpired:
                _stop_group(process)
                problem = f"did not finish within its {timeout_s:.0f} s limit and was stopped"
        elapsed = time.perf_counter() - started
        log = log_path.read_text(errors="replace")
        section = section_path.read_text() if section_path.exists() else ""
        if not problem and not section.strip():
            problem = "finished but wrote no report section"
    status = f"failed: {problem}" if problem else "ok"
    print(f"bench: {name} {status} ({elapsed:.0f} s)", file=sys.stderr, flush=True)
    if problem:
        return BenchOutcome(name, False, elapsed, _failure_section(module, problem, log), problem)
    return BenchOutcome(name, True, elapsed, section.strip() + "\n")


def _commit() -> str:
    """The checked-out commit, read from .git without running git (best effort)."""
    git_dir = REPO_ROOT / ".git"
    with contextlib.suppress(OSError, IndexError):
        if git_dir.is_file():  # a worktree: "gitdir: <path>"
            git_dir = Path(git_dir.read_text().split(":", 1)[1].strip())
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head[:12]
        ref = head.split(":", 1)[1].strip()
        ref_file = git_dir / ref
        if ref_file.is_file():
            return ref_file.read_text().strip()[:12]
        for line in (git_dir / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    return "unknown"


def _tool_version(name: str, args: list[str]) -> str:
    path = tool_path(name)
    if path is None:
        return "not installed"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=20, check=False)
        first = (result.stdout or result.stderr).strip().splitlines()
        if first:
            return first[0].strip()
    return "unknown"


def header(*, quick: bool, names: list[str], started_at: datetime.datetime) -> str:
    machine = machine_info()
    load = ", ".join(f"{x:.2f}" for x in machine.load_average)
    machine_rows: list[list[object]] = [
        ["CPUs (`nproc`)", machine.cpus],
        ["CPU model", machine.cpu_model],
        ["memory", f"{machine.memory_gib:.1f} GiB"],
        ["OS kernel", machine.kernel],
        ["Python", machine.python],
        ["load average when the run started (1, 5, 15 min)", load],
    ]
    version_rows = [[name, version] for name, version in package_versions(PACKAGES).items()]
    version_rows += [[name, _tool_version(name, args)] for name, args in TOOLS.items()]
    version_rows.append(["commit", _commit()])
    mode = "`--quick` (small sizes: a smoke run, not numbers to quote)" if quick else "full"
    return f"""# Benchmarks

Generated by `make bench` (`.venv/bin/python -m bench.run_all`) on
{started_at:%Y-%m-%d %H:%M} UTC, mode: {mode}. Do not edit by hand: rerun it.

Every comparison below is made side by side in one run on one machine, so read the
**ratios**; absolute times depend on the machine (and this one is shared: see the load
average). Backends with a fixed latency are the TGI-protocol fake (`tests/support/tgi_fake.py`),
the one fake this project uses; everything else (h2ogpt-api, Weaviate, the embedding model,
the control plane, the clients) is the real component.

## Machine

{markdown_table(["", "this run"], machine_rows, left=2)}

## Versions

{markdown_table(["component", "version"], version_rows, left=2)}

## Commands

- everything: `make bench` (or `.venv/bin/python -m bench.run_all [--quick] [--only NAME]`)
{chr(10).join(f"- {name}: `.venv/bin/python -m bench.{name}`" for name in names)}
"""


def summary(outcomes: list[BenchOutcome], total_s: float) -> str:
    rows = [[f"`bench.{o.name}`", "ok" if o.ok else f"**FAILED**: {o.problem}", f"{o.seconds:.0f}"]
            for o in outcomes]
    rows.append(["**total**", "", f"{total_s:.0f}"])
    load = ", ".join(f"{x:.2f}" for x in machine_info().load_average)
    return (f"## Runs\n\n{markdown_table(['bench', 'result', 'seconds'], rows)}\n\n"
            f"Load average when the run ended (1, 5, 15 min): {load}.\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmarks and write docs/benchmarks.md.")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this bench (repeatable; comma-separated names also work)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"where to write the report (default {DEFAULT_OUTPUT.relative_to(REPO_ROOT)}; "
                             f"with --quick, {QUICK_OUTPUT}, so smoke numbers never replace published ones)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds one bench may run before it is stopped and reported as failed")
    options = parser.parse_args(argv)
    output: Path = options.output or (QUICK_OUTPUT if options.quick else DEFAULT_OUTPUT)
    available = discover()
    wanted = [name for item in options.only for name in item.split(",") if name]
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        parser.error(f"unknown bench {', '.join(unknown)}; available: {', '.join(available)}")
    names = [name for name in available if name in wanted] if wanted else available
    started_at = datetime.datetime.now(datetime.UTC)
    document_head = header(quick=options.quick, names=names, started_at=started_at)
    started = time.perf_counter()
    outcomes = [run_bench(f"bench.{name}", quick=options.quick, timeout_s=options.timeout) for name in names]
    total_s = time.perf_counter() - started
    body = "\n".join(outcome.section for outcome in outcomes)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(f"{document_head}\n{summary(outcomes, total_s)}\n{body}")
    failed = [o.name for o in outcomes if not o.ok]
    print(f"bench: wrote {output} ({len(outcomes) - len(failed)} ok, {len(failed)} failed, "
          f"{total_s:.0f} s)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
