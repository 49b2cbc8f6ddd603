"""The FastAPI app served on `--gradio_port`: the shared ops routes, `/api/<api_name>`, and the
Gradio Blocks at `/` holding the UI and h2oGPT's api_names. Layers: service <- (ui, endpoints) <- app.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from typing import Any

import gradio as gr
from fastapi import FastAPI

from h2ogpt_api.core import Core
from h2ogpt_api.gradio_api.endpoints import H2oGPTEndpoints
from h2ogpt_api.gradio_api.queue_idle import wait_for_work
from h2ogpt_api.gradio_api.service import GradioService
from h2ogpt_api.gradio_api.sessions import gradio_app_of, use_lazy_sessions
from h2ogpt_api.gradio_api.ui import THEME_CSS, build_ui
from h2ogpt_api.ops import ops_router
from h2ogpt_api.settings import Settings

# Gradio's queue runs at most this many events at once, whatever the limit the core settles on:
# above what vLLM schedules at once by default (max_num_seqs 256), and above TGI's default (128),
# which the core uses while a TGI is still loading and cannot say its own.
MIN_JOB_SLOTS = 1024


def job_slots(admission_limit: int | None, max_queue: int) -> int:
    """How many events Gradio's queue runs at once. Its default (`max_threads`: 40 for all events
    together) is a limit of its own below the backend's: at 64 streams 24 waited a whole answer in
    Gradio's queue. The core admits generations and holds those waiting for a slot
    (`h2ogpt_api.concurrency`), so Gradio runs as many as the core may admit plus hold."""
    return max(MIN_JOB_SLOTS, admission_limit or 0) + max_queue


def mark_matplotlib_absent() -> None:
    """Gradio runs every step of every call (each partial output too) inside `import matplotlib`,
    twice, to switch its plotting backend. h2ogpt-api does not install matplotlib, and a failed
    import searches sys.path again each time: about 8% of the Gradio side's CPU in a profile at
    64 streams. A None in `sys.modules` (the import system's documented mark for an absent
    module) makes that import fail at once. Where matplotlib is installed nothing changes."""
    if importlib.util.find_spec("matplotlib") is None:
        sys.modules.setdefault("matplotlib", None)  # type: ignore[arg-type]


def skip_queue_analytics(queue: Any) -> None:
    """Gradio's queue keeps a record of its last 10,000 events for its /monitoring dashboard and,
    after every event, summarizes all of them again in a pandas DataFrame in a worker thread:
    7 ms of CPU per event once the records are full (about 3 minutes at 50 answers/s), whether
    monitoring is on or not. Monitoring is off here (`enable_monitoring=False`: the summary's route
    answers 403), so nothing reads the summary: the queue keeps one record and never summarizes.
    These are the two settings Gradio reads from GRADIO_ANALYTICS_MAX_EVENTS and
    GRADIO_ANALYTICS_CACHE_FREQUENCY when its queue is made."""
    queue.ANALYTICS_MAX_EVENTS = 1
    queue.ANAYLTICS_CACHE_FREQUENCY = sys.maxsize  # sic: Gradio's spelling


def create_app(core: Core, settings: Settings, *, started: Callable[[], bool] | None = None) -> FastAPI:
    """`started`: see `ops_router`."""
    mark_matplotlib_absent()
    service = GradioService(core, settings)
    endpoints = H2oGPTEndpoints(service)
    app = FastAPI(title="h2oGPT Gradio API", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.include_router(ops_router(started))
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
    # What `launch(max_threads=...)` sets, which `mount_gradio_app` does not offer. Only the
    # queue's slots: Gradio's thread limiter for sync handlers keeps its default (40).
    blocks._queue.max_thread_count = job_slots(core.admission.limit, settings.max_queue)
    skip_queue_analytics(blocks._queue)
    wait_for_work(blocks._queue)
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
    use_lazy_sessions(mounted, blocks)
    return mounted


def heartbeat_stopper(mounted: Any) -> Callable[[], None]:
    """What ends the Gradio app's heartbeat streams (`/heartbeat/{session}`: each open browser tab holds
    one for the page's life). A stopping server waits for its open connections, and these end only
    when Gradio's stop event is set, which only Gradio's own `launch()` server would do."""
    return gradio_app_of(mounted).stop_event.set
