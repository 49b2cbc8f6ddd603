"""The floor of a Python proxy hop, for bench/openai_proxy.py: a REFERENCE, not a product.

A raw ASGI app on the same server stack as h2ogpt-api (uvicorn with uvloop and httptools, aiohttp to
the backend over one pooled session) that forwards each POST body to the backend's
`/v1/chat/completions` unread and streams the answer's bytes back unparsed: no routing, validation,
authentication, prompt, metrics or SSE framing of its own. What it adds to the time to first token is
what any proxy written this way pays on this machine for the extra hop; what h2ogpt-api adds above it
is its own work per request.

    python -m bench.floor_relay --backend http://127.0.0.1:8080 --port 9000
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class FloorRelay:
    def __init__(self, backend: str) -> None:
        self.chat_url = backend.rstrip("/") + "/v1/chat/completions"
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["method"] == "GET":  # /health, for the bench to wait on
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        assert self.session is not None
        headers = {"Content-Type": "application/json"}
        async with self.session.post(self.chat_url, data=body, headers=headers) as answer:
            content_type = answer.headers.get("Content-Type", "text/event-stream").encode()
            headers_out = [(b"content-type", content_type)]
            await send({"type": "http.response.start", "status": answer.status, "headers": headers_out})
            async for chunk in answer.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True, help="the backend's base URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        FloorRelay(args.backend), host=args.host, port=args.port, loop="uvloop", http="httptools",
        log_level="warning", access_log=False,
    )  # fmt: skip


if __name__ == "__main__":
    main()
