"""The FastAPI app served on `--gradio_port`: the shared ops routes, `/api/<api_name>`, and the
Gradio Blocks at `/` holding the UI and h2oGPT's api_names. Layers: service <- (ui, endpoints) <- app.
"""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from h2ogpt_api.core import Core
from h2ogpt_api.gradio_api.endpoints import H2oGPTEndpoints
from h2ogpt_api.gradio_api.service import GradioService
from h2ogpt_api.gradio_api.ui import THEME_CSS, build_ui
from h2ogpt_api.ops import ops_router
from h2ogpt_api.settings import Settings


def create_app(core: Core, settings: Settings) -> FastAPI:
    service = GradioService(core, settings)
    endpoints = H2oGPTEndpoints(service)
    app = FastAPI(title="h2oGPT Gradio API", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.include_router(ops_router())
    endpoints.add_rest_route(app)

    blocks = gr.Blocks(title="h2oGPT", analytics_enabled=False)
    build_ui(service, blocks)
    with blocks:
        endpoints.register()
    blocks.queue(
        # Admission is the core's (h2ogpt_api.concurrency): Gradio's own limit is only the one
        # --max_concurrency sets, else none, so that the backend's limit is not cut here.
        default_concurrency_limit=settings.max_concurrency,
        max_size=settings.max_queue or None,
        api_open=False,
    )
    mounted: FastAPI = gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        auth=service.check_login if service.login_required else None,
        auth_message="Log in to h2oGPT." if service.login_required else None,
        footer_links=["api"],
        run_history=False,
        show_error=True,
        ssr_mode=False,
        enable_monitoring=False,
        mcp_server=False,
        theme=gr.themes.Soft(),
        css=THEME_CSS,
    )
    return mounted
