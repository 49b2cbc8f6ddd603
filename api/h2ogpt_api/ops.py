"""Operational routes both front doors serve: `/health`, `/version`, `/metrics`.

Defined once and included in the OpenAI app and in the Gradio app, so probes and scrapes see the
same answers on either port (the metrics live in one process-wide registry).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from h2ogpt_api import metrics


def package_version() -> str:
    try:
        return importlib.metadata.version("h2ogpt-platform")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def ops_router(started: Callable[[], bool] | None = None) -> APIRouter:
    """`started`: whether the whole server has started (one of --workers N serves before the others
    do); None: serving means started."""
    router = APIRouter()

    @router.get("/health")
    async def health() -> Response:
        if started is not None and not started():
            return JSONResponse({"status": "starting", "detail": "the other --workers processes are still "
                                 "starting"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @router.get("/version")
    async def version() -> dict[str, str]:
        return {"version": package_version()}

    @router.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return router
