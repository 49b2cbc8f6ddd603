"""One `Backend` over several inference replicas: each request goes to the replica `routing.Router`
chooses, through that replica's own backend (TGI, vLLM or OpenAI-compatible, all one kind).

Failures: a replica that cannot be reached or fails (connect error, 429/503, 5xx, a dropped
connection) is taken out for a backoff (routing.py) and the request, if it has not yet had a
token, goes to another replica (`MAX_ATTEMPTS` replicas in all, so a request that makes every
server fail cannot take the whole pool out). A request already streaming from a replica that
fails ends with that failure, which the API answers as an OpenAI-shaped error: a token stream
cannot be resumed elsewhere without repeating what the client has seen. A refusal (4xx) is the
request's fault, not the replica's: it is passed on and the replica stays in.

Replicas are named `host:port` in metrics and logs (never a URL, which may carry credentials).

`on_start(in_flight, ready)` is told of every generation that starts on a replica: the generations
in flight (it included; with `--workers`, the pod's, summed over its processes by an `in_flight`
count they share) and the replicas it routes to (demand.ScaleUpWake).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Protocol
from urllib.parse import urlsplit

from h2ogpt_api import metrics
from h2ogpt_api.backends.base import Backend, BackendError, BackendEvent, BackendRequest, OutputOptions
from h2ogpt_api.routing import Router, prefix_key

log = logging.getLogger("h2ogpt_api.backends.routed")

# Replicas one request may try before its failure is the answer.
MAX_ATTEMPTS = 3
# Failures that say the replica, not the request, is at fault; a timeout is one too, but the
# request has already waited its whole budget there, so it is not tried again elsewhere.
_REPLICA_FAULTS = frozenset({"unavailable", "bad_response"})


def replica_name(server: str) -> str:
    """`host:port` of an `--inference_server` entry (http(s)://…, vllm:host:port, openai:<url>)."""
    rest = server.removeprefix("openai:")
    if rest.startswith("vllm:"):
        rest = rest.removeprefix("vllm:")
        if not rest.startswith(("http://", "https://")):
            return rest
    parts = urlsplit(rest)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


class InFlight(Protocol):
    """A count of generations in flight: `add` as one starts (+1) or ends (-1), `total` to read it."""

    def add(self, delta: int) -> None: ...

    def total(self) -> int: ...


class InFlightCount:
    """This process's count (workers.SharedInFlightCount sums a pod's worker processes instead)."""

    def __init__(self) -> None:
        self._count = 0

    def add(self, delta: int) -> None:
        self._count += delta

    def total(self) -> int:
        return self._count


class RoutedBackend:
    """Replicas of one kind of server behind a `Router`. `set_servers` follows membership changes
    (EndpointSlices); a replica that leaves is closed once its last request has ended."""

    def __init__(
        self,
        servers: Iterable[str],
        make_backend: Callable[[str], Backend],
        *,
        router: Router,
        prefix_chars: int,
        on_start: Callable[[int, int], None] | None = None,
        in_flight: InFlight | None = None,
    ) -> None:
        self.router = router
        self._on_start = on_start
        self._in_flight = in_flight if in_flight is not None else InFlightCount()
        self._make_backend = make_backend
        self._prefix_chars = prefix_chars
        self._backends: dict[str, Backend] = {}
        self._retired: dict[str, Backend] = {}
        self._template: Backend | None = None
        self._streams: dict[str, int] = {}  # requests streaming per backend, retired ones included
        self._closing: set[asyncio.Future[None]] = set()
        self.set_servers(servers)

    # -- membership -----------------------------------------------------------------------------

    def set_servers(self, servers: Iterable[str]) -> None:
        wanted = {replica_name(server): server for server in servers}
        for name in set(self._backends) - set(wanted):
            self._retired[name] = self._backends.pop(name)
        for name, server in wanted.items():
            if name not in self._backends:
                returning = self._retired.pop(name) if name in self._retired else None
                self._backends[name] = returning or self._make_backend(server)
        if self._template is None and self._backends:
            self._template = next(iter(self._backends.values()))
        self.router.set_replicas(wanted)
        for name in list(self._retired):
            self._retire_if_idle(name)
        log.info("inference replicas: %s", ", ".join(sorted(wanted)) or "none")

    def _retire_if_idle(self, name: str) -> None:
        """Close a replica that has left once no request streams from it (and drop its gauge)."""
        if name not in self._retired or self._streams.get(name, 0) > 0:
            return
        backend = self._retired.pop(name)
        if backend is not self._template:
            self._closing.add(asyncio.ensure_future(backend.aclose()))
            for task in [task for task in self._closing if task.done()]:
                self._closing.discard(task)
        with contextlib.suppress(KeyError):
            metrics.REPLICA_IN_FLIGHT.remove(name)

    # -- what the core asks of any backend -------------------------------------------------------

    def _any(self) -> Backend:
        if self._template is None:
            raise BackendError("unavailable", "no inference replica is known yet")
        return self._template

    @property
    def kind(self) -> str:
        return self._any().kind

    @property
    def model_name(self) -> str:
        return self._any().model_name

    @property
    def supports_chat(self) -> bool:
        return self._any().supports_chat

    @property
    def supports_min_new_tokens(self) -> bool:
        return self._any().supports_min_new_tokens

    @property
    def default_system_prompt(self) -> str:
        return self._any().default_system_prompt

    async def concurrency_limit(self) -> int | None:
        # No limit of ours in front of several replicas: their number changes (EndpointSlices,
        # autoscaling) while a limit is read once, and a fixed one would throttle the pool below
        # what it takes. Each replica admits its own share (TGI: 429 past its
        # max_concurrent_requests), and a refused request goes to another replica.
        return None

    def unsupported_option(self, options: OutputOptions, *, chat: bool) -> str | None:
        return self._any().unsupported_option(options, chat=chat)

    async def aclose(self) -> None:
        everyone = [*self._backends.values(), *self._retired.values()]
        if self._template is not None:
            everyone.append(self._template)
        for backend in {id(backend): backend for backend in everyone}.values():
            await backend.aclose()
        for task in self._closing:
            await task

    # -- routing ---------------------------------------------------------------------------------

    async def stream(self, request: BackendRequest) -> AsyncGenerator[BackendEvent, None]:
        key = request.affinity_key or prefix_key(request.messages, self._prefix_chars)
        tried: set[str] = set()
        failure: BackendError | None = None
        for _ in range(MAX_ATTEMPTS):
            decision = self.router.choose(key, frozenset(tried))
            if decision is None:
                break
            name = decision.replica
            metrics.ROUTING_DECISIONS.labels(policy=self.router.policy, replica=name).inc()
            if decision.prefix_hit is not None:
                metrics.ROUTING_PREFIX.labels(result="hit" if decision.prefix_hit else "miss").inc()
            backend = self._backends[name]
            self.router.started(name)
            self._streams[name] = self._streams.get(name, 0) + 1
            self._in_flight.add(1)
            metrics.REPLICA_IN_FLIGHT.labels(replica=name).inc()
            streaming = False
            try:
                if self._on_start is not None:
                    self._on_start(self._in_flight.total(), len(self.router.replicas))
                async with contextlib.aclosing(backend.stream(request)) as events:
                    async for event in events:
                        streaming = True
                        yield event
                self.router.succeeded(name)
                return
            except BackendError as exc:
                if exc.kind in _REPLICA_FAULTS or exc.kind == "timeout":
                    backoff = self.router.failed(name)
                    metrics.REPLICA_FAILURES.labels(replica=name, kind=exc.kind).inc()
                    log.warning(
                        "replica %s failed (%s: %s); out for %.0f s", name, exc.kind, exc.message, backoff
                    )
                if streaming or exc.kind not in _REPLICA_FAULTS:
                    raise
                tried.add(name)
                failure = exc
            finally:
                self.router.finished(name)
                self._streams[name] -= 1
                self._in_flight.add(-1)
                metrics.REPLICA_IN_FLIGHT.labels(replica=name).dec()
                self._retire_if_idle(name)
        if failure is not None:
            raise BackendError(
                failure.kind, f"{failure.message} (tried {len(tried)} inference replicas)"
            )
        known = len(self.router.replicas)
        raise BackendError(
            "unavailable",
            f"no inference replica is available ({known} known, all failing and waiting out their backoff)"
            if known
            else "no inference replica is available (none is ready)",
        )
