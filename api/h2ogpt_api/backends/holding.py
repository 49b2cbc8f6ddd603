"""Hold requests while the inference server has no ready replica (scale from zero).

`HoldingBackend` wraps any backend that is reached over the network. When a call fails as
`unavailable` before its first event (connection refused: a Service without endpoints, a pod
not listening yet; or the server's own 429/503 "not ready"), nothing reached a model, so the
call is safe to send again: the request is held and retried until the server answers or
`--hold_seconds` pass. A failure after the first event is never retried (a stream may not be
cut and resent).

While held, the request counts in `h2ogpt_api_held_requests`, the signal the operator's
autoscaler reads to scale a stack from zero to one; `on_hold` is called as each request starts
being held (demand.py renews the stack's demand Lease, so the operator reads that gauge at once).
Every `--keepalive_seconds` it yields a `Held` event, which the OpenAI door turns into an SSE
comment so an idle proxy does not cut the stream. At most `--max_held` requests are held at once;
one more is refused at once. Refusals and time-outs are `NoReplicaError`s: 503 with `Retry-After`.

Retries back off from 0.1 s to 1 s, and the first request that gets through wakes every other
held request at once, so 200 held requests cost ~200 connection attempts a second at worst
and are forwarded within milliseconds of the replica answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, Callable

from h2ogpt_api import metrics
from h2ogpt_api.backends.base import Backend, BackendError, BackendEvent, BackendRequest, Held, OutputOptions

FIRST_RETRY_SECONDS = 0.1
MAX_RETRY_SECONDS = 1.0


class NoReplicaError(BackendError):
    """No inference replica answered within the hold, or too many requests are already held."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__("unavailable", message)
        self.retry_after = retry_after


class HoldingBackend:
    def __init__(
        self,
        inner: Backend,
        *,
        hold_seconds: float,
        max_held: int,
        keepalive_seconds: float,
        on_hold: Callable[[], object] | None = None,
    ) -> None:
        self._inner = inner
        self._on_hold = on_hold
        self._hold_seconds = hold_seconds
        self._max_held = max_held
        self._keepalive_seconds = keepalive_seconds
        self._held = 0
        # Set (and replaced) when a call gets through: held requests retry at once instead of
        # waiting out their backoff.
        self._answered = asyncio.Event()

    @property
    def retry_after(self) -> int:
        """What a refused client is told to wait: a replica that was starting may be up by then."""
        return max(1, math.ceil(min(self._hold_seconds, 60.0)))

    @property
    def kind(self) -> str:
        return self._inner.kind

    @property
    def model_name(self) -> str:
        return self._inner.model_name

    @property
    def supports_chat(self) -> bool:
        return self._inner.supports_chat

    @property
    def supports_min_new_tokens(self) -> bool:
        return self._inner.supports_min_new_tokens

    @property
    def default_system_prompt(self) -> str:
        return self._inner.default_system_prompt

    @property
    def held(self) -> int:
        return self._held

    @property
    def inner(self) -> Backend:
        return self._inner

    def retry_now(self) -> None:
        """Held requests try again at once instead of waiting out their backoff: a replica was just
        announced (the EndpointSlice watch), so the next attempt can get through."""
        if self._held:
            self._answered.set()
            self._answered = asyncio.Event()

    async def concurrency_limit(self) -> int | None:
        return await self._inner.concurrency_limit()

    def unsupported_option(self, options: OutputOptions, *, chat: bool) -> str | None:
        return self._inner.unsupported_option(options, chat=chat)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def _hold(self) -> float:
        if self._held >= self._max_held:
            raise NoReplicaError(
                f"no inference replica is ready and {self._held} requests are already held "
                f"(--max_held {self._max_held}); retry later",
                self.retry_after,
            )
        self._held += 1
        metrics.HELD_REQUESTS.inc()
        if self._on_hold is not None:
            self._on_hold()
        return time.monotonic()

    def _release(self, since: float, outcome: str) -> None:
        self._held -= 1
        metrics.HELD_REQUESTS.dec()
        metrics.HELD_WAIT.labels(outcome=outcome).observe(time.monotonic() - since)

    async def _wait_before_retry(self, seconds: float) -> None:
        answered = self._answered
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered.wait(), timeout=seconds)

    async def stream(self, request: BackendRequest) -> AsyncGenerator[BackendEvent, None]:
        held_since: float | None = None
        outcome = "cancelled"
        backoff = FIRST_RETRY_SECONDS
        try:
            while True:
                events = self._inner.stream(request)
                try:
                    first = await anext(events)
                except StopAsyncIteration:
                    await events.aclose()
                    return
                except BackendError as exc:
                    await events.aclose()
                    if exc.kind != "unavailable":
                        raise
                    if held_since is None:
                        held_since = self._hold()
                        last_keepalive = held_since
                    waited = time.monotonic() - held_since
                    if waited >= self._hold_seconds:
                        outcome = "timed_out"
                        raise NoReplicaError(
                            f"no inference replica became ready within {self._hold_seconds:g} s "
                            f"(--hold_seconds): {exc.message}",
                            self.retry_after,
                        ) from None
                    await self._wait_before_retry(min(backoff, self._hold_seconds - waited))
                    backoff = min(backoff * 2, MAX_RETRY_SECONDS)
                    now = time.monotonic()
                    if now - last_keepalive >= self._keepalive_seconds:
                        last_keepalive = now
                        yield Held(seconds=now - held_since)
                    continue
                if held_since is not None:
                    self._release(held_since, "forwarded")
                    held_since = None
                self.retry_now()  # the first through wakes the rest
                async with contextlib.aclosing(events):
                    yield first
                    async for event in events:
                        yield event
                return
        finally:
            if held_since is not None:
                self._release(held_since, outcome)
