"""Stopping without failing a client: after a stop signal the servers keep serving for `--drain_seconds`
(the drain), and every request that starts in it is answered with `Connection: close`.

Why: a Service routes connections, not requests. A keep-alive client keeps its connection to a pod
that is being stopped; when the server then closes that connection while it is idle, a request the
client sends at the same moment crosses the close and fails ("server disconnected without sending a
response"), a race no retry-free client survives. An answer with `Connection: close` retires the
connection cleanly instead: the client's next request opens a new connection, which the Service sends to
a pod that stays (Kubernetes drops a stopping pod from its Service when the pod starts stopping).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("h2ogpt_api")

_CLOSE = (b"connection", b"close")


class Drain:
    """The drain of one process: its state, the stop-signal handler and the ASGI wrapper that reads it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.draining = False
        self.stopping = False

    def on_stop_signal(self, stop: Callable[[], None], force: Callable[[], None]) -> None:
        """The first signal starts the drain, then `stop`: the servers stop listening and the answers
        in flight finish, however long they stream (a pod's grace period bounds that). Without a drain
        configured the first signal stops at once; a second signal `force`s: answers are cut."""
        if self.stopping:
            log.info("second stop signal: stopping now, cutting the answers in flight")
            force()
            return
        self.stopping = True
        if self.seconds <= 0:
            stop()
            return
        self.draining = True
        log.info(
            "stop signal: serving %s s more, each answer closing its connection, then stopping once "
            "the answers in flight finish (a second signal stops now)",
            self.seconds,
        )
        asyncio.get_running_loop().call_later(self.seconds, stop)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        async def closing_while_draining(scope: Scope, receive: Receive, send: Send) -> None:
            # Decided when a request starts, so that serving costs nothing until a drain. A request already
            # running when the drain starts leaves its connection open; the client's next request on it, in
            # the drain, is answered with close.
            if scope["type"] != "http" or not self.draining:
                await app(scope, receive, send)
                return

            async def send_closing(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                    message = {**message, "headers": [*headers, _CLOSE]}
                await send(message)

            await app(scope, receive, send_closing)

        return closing_while_draining
