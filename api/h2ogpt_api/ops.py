"""Operational routes both front doors serve: `/health`, `/version`, `/metrics`.

Defined once and included in the OpenAI app and in the Gradio app, so probes and scrapes see the
same answers on either port (the metrics live in one process-wide registry).
"""

from __future__ import annotations

import importlib.metadata

from fastapi import APIRouter
from starlette.responses import Response

from h2ogpt_api import metrics


def package_version() -> str:
    try:
        return importlib.metadata.version("h2ogpt-platform")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def ops_router() -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/version")
    async def version() -> dict[str, str]:
        return {"version": package_version()}

    @router.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return router
