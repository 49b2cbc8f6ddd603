"""The e2e tier reports how long the real stack took to come up: at the end of the run, in the summary."""

from __future__ import annotations

import pytest

_TIMINGS: list[tuple[str, float]] = []


def record_timing(what: str, seconds: float) -> None:
    _TIMINGS.append((what, seconds))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TIMINGS:
        terminalreporter.section("e2e timings (real node)")
        for what, seconds in _TIMINGS:
            terminalreporter.write_line(f"{seconds:7.1f} s  {what}")
