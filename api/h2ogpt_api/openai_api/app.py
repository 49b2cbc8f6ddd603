"""The OpenAI-compatible FastAPI app: `/v1/*` routes, the shared ops routes, OpenAI-shaped errors
for every failure, and request metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from h2ogpt_api import metrics, routing
from h2ogpt_api.auth import AuthError
from h2ogpt_api.backends.base import BackendError
from h2ogpt_api.core import Core, EmbeddingsUnavailableError, InvalidRequestError, QueueFullError
from h2ogpt_api.errors import ApiError, as_api_error
from h2ogpt_api.openai_api.conversations import Conversations
from h2ogpt_api.openai_api.routes import OpenAIRoutes, client_gone_response
from h2ogpt_api.openai_api.streaming import ASGIApp, ClientGoneError, Receive, Scope, Send
from h2ogpt_api.ops import ops_router, package_version
from h2ogpt_api.ratelimit import RateLimitedError
from h2ogpt_api.retrieval.base import DocumentError, DocumentStoreUnavailableError
from h2ogpt_api.settings import Settings

log = logging.getLogger("h2ogpt_api.openai")


def create_app(core: Core, settings: Settings, conversations: Conversations | None = None, *,
               started: Callable[[], bool] | None = None) -> FastAPI:
    """The OpenAI-compatible FastAPI app over `core`; /v1/responses' stored conversations in
    `conversations` (default: this process's memory); `started`: see `ops_router`."""
    routes = OpenAIRoutes(core, settings, conversations)
    app = FastAPI(
        title="h2oGPT OpenAI-compatible API",
        version=package_version(),
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.routes = routes

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return ApiError(
            400, f"invalid parameter {param}: {first['msg']}", param=param, code="invalid_parameter"
        ).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), type_=type_).response()

    @app.exception_handler(ClientGoneError)
    async def _client_gone(_: Request, __: ClientGoneError) -> Response:
        return client_gone_response()

    async def _mapped_error(_: Request, exc: Exception) -> Response:
        return as_api_error(exc).response()

    for expected in (
        AuthError,
        BackendError,
        DocumentError,
        DocumentStoreUnavailableError,
        EmbeddingsUnavailableError,
        InvalidRequestError,
        QueueFullError,
        RateLimitedError,
        ValidationError,
    ):
        app.add_exception_handler(expected, _mapped_error)

    @app.exception_handler(Exception)
    async def _any_error(_: Request, exc: Exception) -> Response:
        log.error("unhandled error: %r", exc)
        return as_api_error(exc).response()

    routes.add_to(app)
    # Route by route, not with include_router: FastAPI (0.165) keeps an included router as one nested
    # route without a path, and MetricsMiddleware labels requests by their route's path (else every
    # probe and scrape would count as route "unmatched", which the dashboard showed).
    app.router.routes.extend(ops_router(started).routes)
    app.add_middleware(MetricsMiddleware, routes=app.router.routes)
    app.add_middleware(SessionAffinityMiddleware)
    if settings.cors_origins:
        # As h2oGPT's OpenAI server: any method and header, credentials allowed (with "*" the
        # request's own origin is echoed, which browsers require when credentials are sent).
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    return app


class SessionAffinityMiddleware:
    """The request's `X-Session-ID` header, for the core's replica routing (routing.SESSION_ID)."""

    HEADER = routing.SESSION_HEADER.lower().encode()

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = None
        if scope["type"] == "http":
            session = next((value for name, value in scope["headers"] if name == self.HEADER), None)
        if not session:
            await self.app(scope, receive, send)
            return
        token = routing.SESSION_ID.set(session.decode("latin-1")[: routing.SESSION_ID_MAX_CHARS])
        try:
            await self.app(scope, receive, send)
        finally:
            routing.SESSION_ID.reset(token)


class MetricsMiddleware:
    """Requests by route template and status, their duration (streams to the end) and in-flight count.

    Each request used to scan the routes for its template and look up three metric children by
    label, about 10 us of the ~180 us a streamed request spends here before its first token. A
    request to a route without path parameters now finds its template and children in two dicts
    after the first; both stay as small as the app's routes (times methods and statuses), since
    other paths (parameters, unknown ones) are scanned each time and not kept."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes = routes
        self._fixed_routes: dict[tuple[str, str], str] = {}  # (method, path) -> template
        self._per_route: dict[str, tuple[Any, Any]] = {}  # template -> (in-flight gauge, duration)
        self._per_status: dict[tuple[str, int], Any] = {}  # (template, status) -> request counter

    def route_of(self, scope: Scope) -> str:
        key = (scope["method"], scope["path"])
        if (known := self._fixed_routes.get(key)) is not None:
            return known
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                template = str(getattr(route, "path", "unmatched"))
                if not getattr(route, "param_convertors", True):
                    self._fixed_routes[key] = template
                return template
        return "unmatched"

    def _metrics_of(self, route: str) -> tuple[Any, Any]:
        if (known := self._per_route.get(route)) is None:
            known = self._per_route[route] = (
                metrics.IN_FLIGHT.labels(route=route),
                metrics.REQUEST_DURATION.labels(route=route),
            )
        return known

    def _requests_of(self, route: str, status: int) -> Any:
        if (known := self._per_status.get((route, status))) is None:
            known = metrics.REQUESTS.labels(route=route, status=str(status))
            self._per_status[(route, status)] = known
        return known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.route_of(scope)
        status = 500
        started = time.perf_counter()

        async def send_with_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_flight, duration = self._metrics_of(route)
        in_flight.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            in_flight.dec()
            self._requests_of(route, status).inc()
            duration.observe(time.perf_counter() - started)
