"""How the Gradio app is set up around Gradio itself: sessions that build block configs only when
read (held to Gradio's own results), queue slots that do not cap below the core's admission, and
no import search for an absent matplotlib on every step. The app is built in process, in front of
a TGI backend that is never called."""

from __future__ import annotations

import asyncio
import sys

import gradio as gr
import pytest
from gradio.state_holder import SessionState
from h2ogpt_api.backends.tgi import TgiBackend
from h2ogpt_api.core import Core
from h2ogpt_api.gradio_api.app import MIN_JOB_SLOTS, create_app, job_slots
from h2ogpt_api.gradio_api.sessions import LazySessionState, LazyStateHolder, gradio_app_of
from h2ogpt_api.settings import Settings

MODEL = "fake/tgi-echo"


@pytest.fixture(scope="module")
def blocks() -> gr.Blocks:
    async def build() -> gr.Blocks:  # in a running loop, as h2ogpt-api builds it
        settings = Settings(inference_server="http://127.0.0.1:9", base_model=MODEL, langchain_modes=["LLM"])
        core = Core(settings, TgiBackend("http://127.0.0.1:9", model_name=MODEL, timeout=5), None)
        app = create_app(core, settings)
        blocks: gr.Blocks = gradio_app_of(app).get_blocks()
        return blocks

    return asyncio.run(build())


def test_a_new_session_builds_no_block_config(blocks: gr.Blocks) -> None:
    assert isinstance(blocks.state_holder, LazyStateHolder)
    session = blocks.state_holder["a-rest-call"]
    assert isinstance(session, LazySessionState)
    assert session.config_values == {}
    assert len(blocks.blocks) > 50  # what Gradio's own SessionState would have built at once


def test_read_configs_are_gradios_own(blocks: gr.Blocks) -> None:
    assert list(LazySessionState(blocks).components) == list(SessionState(blocks).components)


def test_a_value_a_session_changed_survives_building_the_rest(blocks: gr.Blocks) -> None:
    lazy, gradios = LazySessionState(blocks), SessionState(blocks)
    textbox = next(i for i, b in blocks.blocks.items() if isinstance(b, gr.Textbox))
    for session in (lazy, gradios):
        session._update_value_in_config(textbox, "changed in this session")
    assert lazy.config_values[textbox]["props"]["value"] == "changed in this session"
    assert list(lazy.components) == list(gradios.components)


def test_gradios_queue_runs_what_the_core_may_admit_and_hold(blocks: gr.Blocks) -> None:
    # Gradio's default would be 40 for all events together, below what TGI admits.
    assert blocks._queue.max_thread_count == MIN_JOB_SLOTS + Settings().max_queue
    assert job_slots(None, 256) == MIN_JOB_SLOTS + 256  # no limit of ours: vLLM, OpenAI servers
    assert job_slots(4096, 256) == 4096 + 256  # a TGI that admits more than the minimum
    assert job_slots(5, 0) == MIN_JOB_SLOTS  # a small --max_concurrency: the core holds the rest


def test_an_absent_matplotlib_fails_to_import_at_once(blocks: gr.Blocks) -> None:
    # Gradio imports it around every step of every call; the app was built above.
    assert "matplotlib" in sys.modules
    if sys.modules["matplotlib"] is None:
        with pytest.raises(ImportError):
            import matplotlib  # noqa: F401, PLC0415

