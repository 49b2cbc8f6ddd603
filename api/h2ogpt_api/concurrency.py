"""How many generations this server lets run at once: what the backend admits, unless
`--max_concurrency` says otherwise.

A proxy that admits fewer than its backend becomes the queue (a TGI that admits 1024 behind a
proxy that admits 64 keeps a quarter of its throughput at 256 streams); one that admits more
only moves the queue to the backend, whose own 429s then reach clients. So by default the
limit is the backend's: TGI's `max_concurrent_requests` from `/info`; none of our own for vLLM
and OpenAI-compatible servers (they queue and schedule themselves); one at a time for the
embedded model. With `--workers N` each process takes its share (rounded up).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

from h2ogpt_api.backends.base import Backend, BackendError
from h2ogpt_api.core import AdmissionGate

log = logging.getLogger("h2ogpt_api")

# What TGI admits when its --max-concurrent-requests is not set: the limit used while a TGI
# backend cannot be asked yet (still loading its model).
TGI_DEFAULT_MAX_CONCURRENT_REQUESTS = 128
# How often a backend that could not tell its limit at start is asked again.
ASK_AGAIN_SECONDS = 5.0


@dataclass(frozen=True)
class ConcurrencyChoice:
    limit: int | None  # generations at once in this process; None: no limit of ours
    reason: str  # for the start-up log line

    def describe(self) -> str:
        shown = "no limit of our own" if self.limit is None else str(self.limit)
        return f"max_concurrency {shown} ({self.reason})"


def choose(
    explicit: int | None, reported: int | None, backend_kind: str, workers: int = 1
) -> ConcurrencyChoice:
    """The limit of one process: `--max_concurrency` when given, else what the backend reports;
    either is the whole server's, shared by `workers` processes."""
    share = f", shared by {workers} workers" if workers > 1 else ""
    if explicit is not None:
        return ConcurrencyChoice(_per_worker(explicit, workers), f"--max_concurrency {explicit}{share}")
    if reported is None:
        return ConcurrencyChoice(None, f"the {backend_kind} backend reports no limit")
    source = "/info max_concurrent_requests" if backend_kind == "tgi" else "its own limit"
    return ConcurrencyChoice(
        _per_worker(reported, workers), f"what the {backend_kind} backend admits: {source} {reported}{share}"
    )


def _per_worker(total: int, workers: int) -> int:
    # Rounded up: never below the backend's limit in all; connections are not spread exactly
    # evenly, so a share rounded down would leave slots unused.
    return math.ceil(total / workers)


async def settle(
    gate: AdmissionGate, backend: Backend, explicit: int | None, workers: int = 1
) -> asyncio.Task[None] | None:
    """Set `gate`'s limit now and log it. When the backend cannot tell yet (TGI still loading),
    use TGI's default and return a task that asks again until it can."""
    if explicit is not None:
        _apply(gate, choose(explicit, None, backend.kind, workers))
        return None
    try:
        reported = await backend.concurrency_limit()
    except BackendError as exc:
        fallback = ConcurrencyChoice(
            _per_worker(TGI_DEFAULT_MAX_CONCURRENT_REQUESTS, workers),
            f"TGI's default until the {backend.kind} backend answers: {exc}",
        )
        _apply(gate, fallback)
        return asyncio.create_task(_ask_until_told(gate, backend, workers), name="backend-concurrency")
    _apply(gate, choose(None, reported, backend.kind, workers))
    return None


async def _ask_until_told(gate: AdmissionGate, backend: Backend, workers: int) -> None:
    while True:
        await asyncio.sleep(ASK_AGAIN_SECONDS)
        try:
            reported = await backend.concurrency_limit()
        except BackendError:
            continue
        _apply(gate, choose(None, reported, backend.kind, workers))
        return


def _apply(gate: AdmissionGate, choice: ConcurrencyChoice) -> None:
    gate.set_limit(choice.limit)
    log.info("%s", choice.describe())
