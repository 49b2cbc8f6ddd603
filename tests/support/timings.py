"""Timings that tests report in the run's summary (the e2e tier: how long the real stack took).

A test may run in a pytest-xdist worker while the summary is written by the controlling process,
so a timing goes through a file: the first process (the controller, or a run without workers)
names it in an environment variable that the workers inherit; each timing is one JSON line.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

ENV = "H2OGPT_TEST_TIMINGS_FILE"


def record_timing(what: str, seconds: float) -> None:
    with open(os.environ[ENV], "a", encoding="utf-8") as timings:
        timings.write(json.dumps([what, seconds]) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # a worker: the controller has named the file
        return
    handle, name = tempfile.mkstemp(prefix="h2ogpt-test-timings-", suffix=".jsonl")
    os.close(handle)
    os.environ[ENV] = name


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if hasattr(terminalreporter.config, "workerinput"):  # a worker's summary is not shown
        return
    path = Path(os.environ.get(ENV, ""))
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    path.unlink()
    if lines:
        terminalreporter.section("e2e timings (real node)")
        for what, seconds in map(json.loads, lines):
            terminalreporter.write_line(f"{seconds:7.1f} s  {what}")
